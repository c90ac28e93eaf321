"""The house's floors, checked on the source: every import (module level and inside functions, parsed with ast)
points down the order gan_service.core <- .serving <- .evaluation <- .training <- .cli | tools/, and no two modules
of the project import each other in a circle, on any floor. See docs/design.md, "Layers"."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = "gan_service"
# Floor of each part: the package's own __init__ (the version) and core at the bottom, the CLI and tools/ on top.
FLOORS = {PKG: 0, "core": 0, "serving": 1, "evaluation": 2, "training": 3, "cli": 4, "tools": 4}
TORCH_FREE = ("core", "serving")             # floors that must not import torch (serving: installable without it)
SOURCES = [ROOT / PKG, ROOT / "tools"]


def part(module: str) -> str:
    """The floor a module belongs to: 'core' for gan_service.core.imaging, 'cli' for gan_service.cli, 'tools'."""
    parts = module.split(".")
    if parts[0] != PKG:
        return parts[0]
    return parts[1] if len(parts) > 1 else PKG


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]   # `from pkg import module`
    return found


def _project_files() -> list[Path]:
    return sorted(p for src in SOURCES for p in src.rglob("*.py"))


def _known_modules() -> set[str]:
    return {_module_name(p) for p in _project_files()}


def _edges() -> dict[str, set[tuple[int, str]]]:
    """module -> {(line, project module it imports)}; names that are not project modules are dropped."""
    known = _known_modules()
    graph = {}
    for path in _project_files():
        targets = set()
        for line, name in _imports(path):
            while name and name not in known:           # `from gan_service.core.imaging import grid` -> its module
                name = name.rpartition(".")[0]
            if name and name != _module_name(path):
                targets.add((line, name))
        graph[_module_name(path)] = targets
    return graph


def layer_violations(graph: dict[str, set[tuple[int, str]]]) -> list[str]:
    """Every import that points up a floor or sideways to another package of the same floor."""
    bad = []
    for src, targets in graph.items():
        top = part(src)
        for line, dst in sorted(targets):
            other = part(dst)
            if other != top and FLOORS[other] >= FLOORS[top]:
                bad.append(f"{src.replace('.', '/')}.py:{line} imports {dst} ({top} may import only "
                           f"{', '.join(k for k, v in FLOORS.items() if v < FLOORS[top]) or 'nothing of the project'})")
    return bad


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}                   # 1 = on the current path, 2 = finished
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph.get(start, ())))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


# ---------------------------------------------------------------- the checker checks itself

def test_checker_sees_function_level_relative_and_from_imports(tmp_path, monkeypatch):
    src = tmp_path / PKG / "training" / "x.py"
    src.parent.mkdir(parents=True)
    src.write_text("import gan_service.core.imaging\nfrom . import nets\n\ndef f():\n    from gan_service.cli import main\n"
                   "    import gan_service.serving.modeldir as md\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    names = {n for _, n in _imports(src)}
    assert {"gan_service.core.imaging", "gan_service.training.nets", "gan_service.cli", "gan_service.cli.main",
            "gan_service.serving.modeldir"} <= names


def test_checker_flags_up_and_sideways_imports_and_cycles():
    graph = {"gan_service.core.a": {(3, "gan_service.training.loop")},
             "gan_service.training.loop": {(1, "gan_service.core.a")},
             "gan_service.cli": {(9, "tools.toy_lab")},
             "gan_service.evaluation.x": {(2, "gan_service.serving.y")},
             "gan_service.serving.y": {(4, "gan_service.serving.z")}}
    bad = layer_violations(graph)
    assert any(b.startswith("gan_service/core/a.py:3 imports gan_service.training.loop") for b in bad)
    assert any(b.startswith("gan_service/cli.py:9 imports tools.toy_lab") for b in bad)      # sideways
    assert not any(b.startswith("gan_service/evaluation/x.py") for b in bad)                 # down is fine
    assert not any(b.startswith("gan_service/serving/y.py") for b in bad)                    # same part is fine
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


# ---------------------------------------------------------------- the project

def test_every_import_points_down_the_floors():
    assert layer_violations(_edges()) == []


def test_no_import_cycle_between_parts():
    parts: dict[str, set[str]] = {}
    for src, targets in _edges().items():
        parts.setdefault(part(src), set()).update(part(d) for _, d in targets)
    parts = {k: v - {k} for k, v in parts.items()}
    assert find_cycle(parts) is None


def test_no_import_cycle_between_any_two_modules():
    """Module by module, every floor included: no two modules import each other, directly or round a circle."""
    modules = {src: {d for _, d in t} for src, t in _edges().items()}
    cycle = find_cycle(modules)
    assert cycle is None, " -> ".join(cycle)


def test_cli_is_one_module_on_top():
    assert (ROOT / PKG / "cli.py").is_file() and not (ROOT / PKG / "cli").exists()
    assert not any(part(d) == "cli" for src, t in _edges().items() if part(src) != "cli" for _, d in t)


def test_one_top_level_package():
    """The distribution installs gan_service alone: no generic top-level names (core, service, ...) beside it."""
    import tomllib
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert find["include"] == [f"{PKG}*"]
    assert [d.name for d in ROOT.iterdir() if (d / "__init__.py").is_file()] == [PKG]


@pytest.mark.parametrize("floor", TORCH_FREE)
def test_low_floors_do_not_import_torch(floor):
    bad = [f"{p.relative_to(ROOT)}:{line} imports {name}" for p in (ROOT / PKG / floor).rglob("*.py")
           for line, name in _imports(p) if name.split(".")[0] == "torch"]
    assert bad == []


def test_serving_imports_without_training_or_evaluation():
    """Every serving module imports in a fresh interpreter where training, evaluation, the CLI and torch cannot
    be found."""
    modules = sorted(_module_name(p) for p in (ROOT / PKG / "serving").rglob("*.py"))
    code = ("import importlib, sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'torch' or name.split('.')[:2] in (\n"
            "                ['gan_service', 'training'], ['gan_service', 'evaluation'], ['gan_service', 'cli']):\n"
            "            raise ImportError(f'blocked: {name}')\n"
            "sys.meta_path.insert(0, Block())\n"
            f"for m in {modules!r}:\n"
            "    importlib.import_module(m)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
