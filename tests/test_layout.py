"""The package's layering (larimar/__init__.py): no import cycles, and imports point only toward the core.

Read statically from the source (every ``import`` and ``from ... import``, those inside functions
included: a lazy import is still a dependency), so the test needs nothing installed and fails on
the commit that adds a bad edge, whatever the tests happen to import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "larimar"

# rank of each layer; a module may import its own layer (other packages of the same rank excepted) and lower ones
LAYERS = {"core": 0, "evaluation": 1, "baselines": 1, "train": 2, "serving": 2, "cli": 3}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS and parts[1] != "core" and (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return "core"


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the larimar modules it imports (``from pkg import sub`` names the submodule)."""
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base_name = ".".join(base + ([node.module] if node.module else []))
                else:
                    base_name = node.module or ""
                subs = [f"{base_name}.{a.name}" for a in node.names if f"{base_name}.{a.name}" in mods]
                targets = subs or [base_name]
            else:
                continue
            for target in targets:
                # the longest larimar module the name starts with (import a.b.c imports a.b.c's module)
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.add(target)
        graph[name] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def upward(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in graph.items():
        for dst in targets:
            a, b = layer(src), layer(dst)
            if LAYERS[b] > LAYERS[a] or (LAYERS[b] == LAYERS[a] and a != b and {a, b} != {"evaluation", "baselines"}):
                bad.append(f"{src} ({a}) imports {dst} ({b})")
    return sorted(bad)


def test_no_import_cycles_in_the_package():
    graph = imports(modules())
    assert len(graph) > 50  # the scan found the package
    assert cycles(graph) == []


def test_imports_point_only_toward_the_core():
    assert upward(imports(modules())) == []


def test_the_checks_catch_a_cycle_and_an_upward_import():
    """The two checks above on a made-up graph: they would fail on the edges they forbid."""
    graph = {
        "larimar.model": {"larimar.train.loop"},
        "larimar.train.loop": {"larimar.model"},
        "larimar.serving.app": {"larimar.train.data"},
        "larimar.train.data": set(),
    }
    assert cycles(graph) == [["larimar.model", "larimar.train.loop"]]
    assert upward(graph) == [
        "larimar.model (core) imports larimar.train.loop (train)",
        "larimar.serving.app (serving) imports larimar.train.data (train)",
    ]


def test_the_library_never_reads_the_checkout():
    """No module outside larimar_ops finds files by walking up from its own location to the repo."""
    offenders = []
    for name, path in modules().items():
        text = path.read_text()
        for needle in ("parents[1]", "parents[2]", "parent.parent", "jobs/configs", "sys.path.insert"):
            if needle in text:
                offenders.append(f"{name}: {needle}")
    assert offenders == []


@pytest.mark.parametrize(
    "command",
    [["--help"], ["train", "--help"], ["eval", "--help"], ["sweep", "--help"], ["serve", "--help"], ["demo", "--help"]],
)
def test_help_answers_without_loading_torch(command):
    """``larimar ... --help`` imports neither torch nor Ray, so it answers in well under 2 seconds."""
    probe = (
        "import sys, runpy; sys.argv = ['larimar', *sys.argv[1:]]\n"
        "try:\n    from larimar.cli import main; main()\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'ray', 'transformers') if m in sys.modules)\n"
        "print('HEAVY', heavy)"
    )
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, cwd=ROOT, timeout=60)
    seconds = time.perf_counter() - t0
    assert "usage" in out.stdout, out.stdout + out.stderr
    assert "HEAVY []" in out.stdout, out.stdout[-500:]
    print(f"larimar {' '.join(command)}: {seconds:.2f} s")
