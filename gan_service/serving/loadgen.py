"""Bounded loopback load with Debian's ``wrk`` (a C load generator): one run -> one JSON-able report.

Each request posts ``{"n": N, "seed": <counter>, "format": F}``; a Lua script counts responses by
status and prints one JSON line with requests/s, latency percentiles and socket errors. Used by the
load test (tests/test_load.py) and by ``gan bench http``. Only 127.0.0.1 / localhost URLs are accepted.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

LUA = r"""
local threads = {}
function setup(thread) thread:set("tid", #threads); table.insert(threads, thread) end
function init(args) counter = tid * 1000000000; statuses = {} end
function request()
  counter = counter + 1
  return wrk.format("POST", PATH, {["Content-Type"] = "application/json"},
                    string.format(BODY, counter))
end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local merged = {}
  for _, t in ipairs(threads) do
    for code, count in pairs(t:get("statuses")) do merged[code] = (merged[code] or 0) + count end
  end
  local parts = {}
  for code, count in pairs(merged) do table.insert(parts, string.format('"%d": %d', code, count)) end
  local e = summary.errors
  io.write(string.format('WRKJSON {"duration_us": %d, "requests": %d, "statuses": {%s}, ' ..
    '"p50_ms": %.3f, "p95_ms": %.3f, "p99_ms": %.3f, "errors": {"connect": %d, "read": %d, "write": %d, ' ..
    '"timeout": %d}}\n', summary.duration, summary.requests, table.concat(parts, ", "),
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    e.connect, e.read, e.write, e.timeout))
end
"""


class LoadError(RuntimeError):
    """wrk is missing, the URL is not loopback, or wrk's report could not be read."""


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    requests: int
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0

    @property
    def ok_per_s(self) -> float:
        """Successful (2xx) responses per second."""
        return sum(v for k, v in self.statuses.items() if 200 <= k < 300) / self.seconds

    def non_2xx(self) -> dict[int, int]:
        return {k: v for k, v in sorted(self.statuses.items()) if not 200 <= k < 300}

    def as_dict(self) -> dict:
        return {**asdict(self), "ok_per_s": round(self.ok_per_s, 1)}


def body_template(n: int, fmt: str) -> str:
    """The JSON body as a Lua format string; %d is replaced by a per-request seed counter."""
    return json.dumps({"n": n, "seed": 0, "format": fmt}).replace('"seed": 0', '"seed": %d')


def run_wrk(url: str, path: str, n: int, fmt: str, concurrency: int, seconds: float,
            timeout_s: float = 30.0) -> LoadResult:
    """One wrk run (one thread, ``concurrency`` connections, ``seconds`` long) against a loopback URL."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise LoadError("wrk not found: apt-get install wrk")
    host = urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise LoadError(f"load runs are loopback-only, not {host!r}")
    script = LUA.replace("PATH", json.dumps(path)).replace("BODY", json.dumps(body_template(n, fmt)))
    with tempfile.TemporaryDirectory() as tmp:
        lua = Path(tmp) / "load.lua"
        lua.write_text(script)
        cmd = [wrk, "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", f"--timeout={timeout_s:g}s",
               "-s", str(lua), url]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + timeout_s + 30)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise LoadError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout[-500:]}")
    data = json.loads(line[len("WRKJSON "):])
    return LoadResult(concurrency=concurrency, seconds=data["duration_us"] / 1e6, requests=data["requests"],
                      statuses={int(k): v for k, v in data["statuses"].items()}, errors=data["errors"],
                      p50_ms=data["p50_ms"], p95_ms=data["p95_ms"], p99_ms=data["p99_ms"])
