"""The stages stay layers: a stage package imports shared modules one floor down, not a sibling stage.

The stages are ``prepare``, ``data``, ``training``, ``predict`` and ``export``. What two of them share lives
below them (``unosat/io/``, ``scenes.py``, ``bands.py``, ``prepared.py``, ``models/`` ...), and that floor
imports no stage. The few imports that cross on purpose are listed in ``ALLOWED``, each with its reason; any
other one fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import unosat

STAGES = ("prepare", "data", "training", "predict", "export")
PACKAGE = Path(unosat.__file__).parent

#: (importing module, imported module) -> why the import crosses stages on purpose
ALLOWED = {
    (
        "unosat.data.datamodule",
        "unosat.prepare",
    ): "the data module prepares the bundled demo dataset on first use (prepare_data), by running prepare.py",
    (
        "unosat.training.baseline",
        "unosat.data.tile_dataset",
    ): "training is fed by the data stage: the baseline is fitted on the training TileDataset",
    (
        "unosat.export.run",
        "unosat.predict.ensemble",
    ): "export packages exactly the network predict.py loads, so it loads checkpoints with predict's loader",
    (
        "unosat.baselines.vv_threshold_net",
        "unosat.training.baseline",
    ): "the baseline network is fitted by training's VV-threshold baseline (a lazy import, at fit time only)",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports (at any depth: function-level imports count too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "unosat" and parts[1] in STAGES else None


def cross_stage_imports() -> set[tuple[str, str]]:
    """``(importer, imported)`` for every import of a stage module from another stage or from the shared floor."""
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        stage = stage_of(importer)
        for imported in imported_modules(path):
            other = stage_of(imported)
            if other is not None and other != stage:
                found.add((importer, imported))
    return found


def test_no_stage_imports_a_sibling_stage():
    unexpected = sorted(cross_stage_imports() - set(ALLOWED))
    assert not unexpected, (
        "a stage module is imported from outside its stage; move what is shared one floor down:\n"
        + "\n".join(f"  {a} imports {b}" for a, b in unexpected)
    )


def test_allow_list_has_no_stale_entries():
    stale = sorted(set(ALLOWED) - cross_stage_imports())
    assert not stale, f"ALLOWED lists imports that no longer exist: {stale}"


def test_relative_imports_are_not_used():
    """The check above reads absolute imports only; keep it honest."""
    relative = [
        str(p)
        for p in PACKAGE.rglob("*.py")
        if any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(ast.parse(p.read_text())))
    ]
    assert not relative, relative
