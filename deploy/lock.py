"""The images' Python packages, pinned: deploy/requirements-cpu.txt and deploy/requirements-gpu.txt.

    .venv/bin/python deploy/lock.py            # rewrite both files
    .venv/bin/python deploy/lock.py --check    # exit 1 (and say what differs) when either is out of date

requirements-cpu.txt is read from the environment this runs in (the one the suite passed on): every package the
serving code needs (the project's dependencies and its `serve` extra, pyproject.toml) and everything they need in
turn, at the version installed here, for Linux x86_64 and Python 3.11 (the images' platform).
requirements-gpu.txt is the same set with onnxruntime replaced by the `gpu` extra's onnxruntime-gpu[cuda,cudnn]
(CUDA and cuDNN from PyPI): pip resolves only the packages that are new, every other one keeps its CPU pin.
`make test` installs .venv with requirements-cpu.txt as constraints, so the suite runs on the versions the
image ships.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
CPU_LOCK, GPU_LOCK = REPO / "deploy" / "requirements-cpu.txt", REPO / "deploy" / "requirements-gpu.txt"
# The images run Linux x86_64 with Python 3.11 (bentofile.yaml); markers are evaluated for that platform.
TARGET = {**default_environment(), "python_version": "3.11", "python_full_version": "3.11.2",
          "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix"}
HEADER = ("# Written by `python deploy/lock.py`: {what}.\n"
          "# Do not edit: change pyproject.toml and run it again (tests/test_deploy.py checks it is up to date).\n")


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def roots(extra: str) -> list[Requirement]:
    """The project's dependencies plus those of one extra (serve or gpu)."""
    project = _pyproject()
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"][extra]]


def _applies(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**TARGET, "extra": e}) for e in (extras or {""}))


def closure(reqs: list[Requirement]) -> dict[str, str]:
    """{canonical name: installed version} for reqs and everything they need, read from this environment."""
    pins: dict[str, str] = {}
    seen: set[tuple[str, frozenset]] = set()
    todo = [(r, set()) for r in reqs]
    while todo:
        req, parent_extras = todo.pop()
        if not _applies(req, parent_extras):
            continue
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            raise SystemExit(f"{req} is needed but not installed in {sys.prefix}") from None
        if not req.specifier.contains(dist.version, prereleases=True):
            raise SystemExit(f"{req} is needed but {name} {dist.version} is installed in {sys.prefix}")
        pins[name] = dist.version
        for sub in dist.requires or []:
            todo.append((Requirement(sub), set(req.extras)))
    return pins


def render(pins: dict[str, str], what: str) -> str:
    return HEADER.format(what=what) + "".join(f"{n}=={v}\n" for n, v in sorted(pins.items()))


def parse(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(re.sub(r"\[.*\]", "", name))] = version.strip()
    return pins


def gpu_pins(cpu: dict[str, str]) -> dict[str, str]:
    """CPU pins less onnxruntime, plus the gpu extra's onnxruntime-gpu[cuda,cudnn] and what it needs: pip resolves
    them (a dry run: only metadata is fetched) for this machine, Linux x86_64 with Python 3.11 like the images."""
    if (sys.version_info[:2], sys.platform) != ((3, 11), "linux"):
        raise SystemExit("run deploy/lock.py with Python 3.11 on Linux (the images' platform)")
    gpu_only = [r for r in roots("gpu") if canonicalize_name(r.name) not in cpu]
    keep = {n: v for n, v in cpu.items() if n != "onnxruntime"}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "requirements.in"
        src.write_text("".join(f"{n}=={v}\n" for n, v in keep.items()) + "".join(f"{r}\n" for r in gpu_only))
        out = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                              "--report", "-", "-r", str(src)], capture_output=True, text=True, timeout=600)
        if out.returncode:
            raise SystemExit(f"pip could not resolve the gpu packages:\n{out.stderr[-3000:]}")
    report = json.loads(out.stdout)
    pins = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in report["install"]}
    changed = {n: (v, pins.get(n)) for n, v in keep.items() if pins.get(n) != v}
    if changed:
        raise SystemExit(f"the gpu lock moved CPU pins: {changed}")
    return pins


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when a file is out of date")
    args = ap.parse_args(argv)
    cpu = closure(roots("serve"))
    cpu_text = render(cpu, "the serving packages of the tested environment")
    stale = []
    if args.check:
        if CPU_LOCK.read_text() != cpu_text if CPU_LOCK.exists() else True:
            old = parse(CPU_LOCK.read_text()) if CPU_LOCK.exists() else {}
            diff = sorted(set(old.items()) ^ set(cpu.items()))
            stale.append(f"{CPU_LOCK.name}: differs from this environment: {diff}")
        gpu = parse(GPU_LOCK.read_text()) if GPU_LOCK.exists() else {}
        want = {n: v for n, v in cpu.items() if n != "onnxruntime"}
        moved = {n: (v, gpu.get(n)) for n, v in want.items() if gpu.get(n) != v}
        if moved or "onnxruntime" in gpu or "onnxruntime-gpu" not in gpu:
            stale.append(f"{GPU_LOCK.name}: CPU pins differ {moved} or onnxruntime-gpu missing")
        for msg in stale:
            print(msg, file=sys.stderr)
        if stale:
            print("run: python deploy/lock.py", file=sys.stderr)
        return 1 if stale else 0
    CPU_LOCK.write_text(cpu_text)
    GPU_LOCK.write_text(render(gpu_pins(cpu), "the CPU pins, onnxruntime-gpu[cuda,cudnn] for onnxruntime"))
    print(f"wrote {CPU_LOCK.relative_to(REPO)} ({len(cpu)} packages) and {GPU_LOCK.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
