"""The layout's rules, read from every module's imports with `ast` (function-level imports too):
no import circles; sweep/ and data/ import no training code; launch/ reaches training through its
one entry; the launcher's and the CLI's record helpers are JAX-free; analysis/ imports nothing of
scaling. A rule broken here is a dependency running the wrong way, whatever the tests of behaviour
say."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TRAINING_ENTRY = "scaling.training.run"
# Tiers that hold or use the compiled model: sweep/ and data/ must not depend on them.
TRAINING_CODE = ("scaling.training", "scaling.science", "scaling.model", "scaling.launch", "scaling.bench",
                 "scaling.cli")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for top in ("scaling", "analysis") for p in sorted((REPO / top).rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project's modules that `path` imports anywhere in it: `from a.b import c` is a.b.c when
    that is a module, else a.b."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if full in known:
                    out.add(full)
                elif node.module in known:
                    out.add(node.module)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(path, set(mods)) - {name} for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan 1972)."""
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
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for mod, deps in sorted(graph.items()):
        for dep in sorted(deps):
            if mod.startswith(("scaling.sweep", "scaling.data")) and dep.startswith(TRAINING_CODE):
                found.append(f"{mod} imports {dep}: sweep/ and data/ import no training code")
            if (mod.startswith("scaling.launch") and dep.startswith("scaling.training")
                    and dep != TRAINING_ENTRY):
                found.append(f"{mod} imports {dep}: launch/ reaches training through {TRAINING_ENTRY} alone")
            if mod.startswith("analysis") and dep.startswith("scaling"):
                found.append(f"{mod} imports {dep}: analysis/ reads records and needs nothing of scaling")
    return found


def test_no_import_circles(graph):
    assert cycles(graph) == []


def test_the_tiers_depend_one_way(graph):
    assert violations(graph) == []


def test_the_checks_catch_a_circle_and_a_wrong_way_import():
    """The checks themselves, on a made-up graph: they can fail."""
    made_up = {"scaling.sweep.reader": {"scaling.training.step"}, "scaling.training.step": {"scaling.sweep.reader"},
               "scaling.launch.local": {"scaling.training.loop"}, "analysis.fit": {"scaling.records"}}
    assert cycles(made_up) == [["scaling.sweep.reader", "scaling.training.step"]]
    assert len(violations(made_up)) == 3


def test_what_the_launcher_and_cli_load_is_jax_free():
    """The parent of a sweep (CLI, local launcher, record helpers, spec files) imports no JAX: the
    record helpers live in JAX-free modules, so their imports can sit at the top of the files."""
    code = ("import sys, scaling.cli, scaling.records, scaling.launch.local, scaling.launch.jobfile, "
            "scaling.launch.report, scaling.sweep, scaling.data\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'optax', 'orbax'))\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
