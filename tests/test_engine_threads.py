"""The service's default engine threads follow one measured rule on the cores a worker may use (core.cpus)."""
from __future__ import annotations

from gan_service.core import cpus
from gan_service.serving import settings as settings_module
from gan_service.serving.settings import ServeSettings


def test_default_rule_gives_the_engine_every_core_of_its_worker():
    assert [cpus.default_engine_threads(c) for c in (0, 1, 2, 8, 64)] == [1, 1, 2, 8, 64]


def test_settings_apply_the_rule_per_worker_unless_told(monkeypatch):
    monkeypatch.setattr(settings_module, "available_cores", lambda: 8)
    assert ServeSettings().engine_threads_resolved() == 8
    assert ServeSettings(workers=2).engine_threads_resolved() == 4           # 4 cores each
    assert ServeSettings(workers=16).engine_threads_resolved() == 1
    assert ServeSettings(engine_threads=2).engine_threads_resolved() == 2    # GAN_ENGINE_THREADS wins
    assert ServeSettings(engine_threads=0).engine_threads_resolved() == 0    # onnxruntime's own choice
