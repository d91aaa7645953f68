"""The imports of mtl/ follow the data flow: no module imports a stage that runs later in the chain.

The foundation (modules directly under mtl/, mtl/config/ and mtl/models/: contracts such as the
schema, the tables, the batch contract, the model and its artifact) imports no stage. A stage
imports the foundation and the stages before it. The command-line layer (mtl/cli/) is on top.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

MTL = Path(__file__).resolve().parents[1] / "mtl"
# The chain, in the order it runs; a package may import only those at or before its own place.
STAGES = (
    "generate",
    "ingest",
    "candidates",
    "features",
    "data",
    "train",
    "tune",
    "export",
    "recommend",
    "evaluate",
    "score",
    "monitor",
    "pipeline",
    "cli",
)
FOUNDATION_PACKAGES = ("config", "models")


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every ``mtl.*`` module ``path`` imports, at any depth of the file (lazy imports count)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
            if node.module == "mtl":  # from mtl import x: x may be a package
                out += [(node.lineno, f"mtl.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in out if name == "mtl" or name.startswith("mtl.")]


def _layer(module: str) -> int:
    """-1 for the foundation, else the stage's place in the chain."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in STAGES:
        return -1
    return STAGES.index(parts[1])


def _module_name(path: Path) -> str:
    rel = path.relative_to(MTL.parent).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def test_every_top_level_package_is_a_stage_or_foundation():
    packages = {p.name for p in MTL.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(STAGES) | set(FOUNDATION_PACKAGES)


def test_no_import_runs_against_the_data_flow():
    upward = []
    for path in sorted(MTL.rglob("*.py")):
        importer = _module_name(path)
        own = _layer(importer)
        for line, imported in _imported_modules(path):
            if _layer(imported) > own:
                upward.append(f"{path.relative_to(MTL.parent)}:{line} imports {imported}")
    assert upward == [], "imports against the data flow:\n" + "\n".join(upward)


def test_the_walker_sees_upward_imports(tmp_path):
    # The check itself must be able to fail: a foundation module importing a stage, lazily.
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from mtl.train.job import run_train\n")
    assert [name for _, name in _imported_modules(probe)] == ["mtl.train.job"]
    assert _layer("mtl.train.job") > _layer("mtl.tables") == -1


@pytest.mark.parametrize("module", ["mtl.score.job", "mtl.evaluate.job"])
def test_scoring_and_evaluation_import_neither_training_nor_petastorm(module):
    code = (
        f"import sys, {module}\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('mtl.train', 'petastorm', 'mtl.data.loader')))\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing {module} loads {out}"
