"""Test-only engine slow-down for a real server subprocess: put this folder on PYTHONPATH and name a file in
GAN_TEST_ENGINE_DELAY_FILE; every Engine.generate call then first sleeps the seconds that file holds (read on each
call, so a test turns the slow-down on and off while the server runs). Overload, the latency budget and timeouts
are provoked this way instead of by racing the machine's speed."""
import os

_DELAY_FILE = os.environ.get("GAN_TEST_ENGINE_DELAY_FILE")
if _DELAY_FILE:
    import time

    from gan_service.serving import engine as _engine

    _generate = _engine.Engine.generate

    def _slow_generate(self, *args, **kwargs):
        try:
            with open(_DELAY_FILE) as fh:
                delay = float(fh.read().strip() or 0)
        except (OSError, ValueError):
            delay = 0.0
        if delay > 0:
            time.sleep(delay)
        return _generate(self, *args, **kwargs)

    _engine.Engine.generate = _slow_generate
