"""The package's imports run one way: io/download -> config -> taxonomy -> data/model -> evaluation -> training -> tools.

``prepare/`` (dataset preparation) is a leaf: nothing but its own command line imports it. Every import of a
project module counts, also those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mseg_semantic"

# lower number = lower layer; a module may import its own package and lower layers only
LAYERS = {
    "errors": 0, "atomic": 0, "download": 0, "compat": 1,
    "config": 2,
    "taxonomy": 3,
    "data": 4, "model": 4,
    "evaluation": 5,
    "training": 6,
    "prepare": 7,
    "tool": 8,
}


def _unit(module: str) -> str:
    """'mseg_semantic.training.gradients.mgda' -> 'training'."""
    return module.split(".")[1] if module.count(".") >= 1 else ""


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("mseg_semantic.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mseg_semantic"):
            if node.module == "mseg_semantic":
                found += [(node.lineno, f"mseg_semantic.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_unit_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if not p.name.startswith("__") and (p.suffix == ".py" or p.is_dir())}
    assert units - {"__pycache__"} <= set(LAYERS), sorted(units - set(LAYERS))


def test_imports_run_one_way_and_prepare_is_a_leaf():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = _unit(_module_name(path))
        for line, imported in _imports(path):
            target = _unit(imported)
            if target == importer or target not in LAYERS:
                continue
            if target == "prepare" and importer != "tool":
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {imported}: prepare/ is a leaf")
            elif LAYERS[target] > LAYERS[importer]:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} ({importer}) imports {imported} ({target}), a higher layer")
    assert not wrong, "\n".join(wrong)
