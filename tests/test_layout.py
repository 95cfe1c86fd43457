"""The package's imports run one way: io/download/distributed -> config -> taxonomy -> data/model -> evaluation ->
training -> tools.

``prepare/`` (dataset preparation) is a leaf: nothing but its own command line imports it. Only ``mseg-train``'s
tool imports ``training/``: every other tool's orchestrator lives in ``evaluation/`` (or below). ``taxonomy/`` holds
no mutable state: the taxonomies a run knows are its Catalog. Every import of a project module counts, also those
inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mseg_semantic"

# lower number = lower layer; a module may import its own package and lower layers only
LAYERS = {
    "errors": 0, "atomic": 0, "download": 0, "distributed": 0, "compat": 1,
    "config": 2,
    "taxonomy": 3,
    "data": 4, "model": 4,
    "evaluation": 5,
    "training": 6,
    "prepare": 7,
    "tool": 8,
    "": 9,  # mseg_semantic/__init__.py: the public API's lazy names (Segmenter) from any layer
    "configs": 2,  # the packaged YAML configs (data, no code)
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


def test_only_the_training_tool_imports_training():
    wrong = []
    for path in sorted((PACKAGE / "tool").glob("*.py")):
        if path.stem == "train":
            continue
        wrong += [f"tool/{path.name}:{line} imports {imported}" for line, imported in _imports(path) if _unit(imported) == "training"]
    assert not wrong, "\n".join(wrong)


_MUTABLE_DISPLAYS = (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)
_MUTABLE_CALLS = {"dict", "list", "set", "defaultdict", "OrderedDict", "Counter", "deque", "bytearray"}
_MUTATORS = {"update", "append", "extend", "add", "pop", "popitem", "setdefault", "clear", "remove", "insert", "discard"}


def _module_containers(tree: ast.Module) -> dict[str, int]:
    """Module-level names bound to a mutable container, with their line."""
    found = {}
    for node in tree.body:
        targets, value = [], None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        mutable = isinstance(value, _MUTABLE_DISPLAYS) or (
            isinstance(value, ast.Call) and getattr(value.func, "id", getattr(value.func, "attr", "")) in _MUTABLE_CALLS)
        if mutable:
            found.update({t.id: node.lineno for t in targets if isinstance(t, ast.Name)})
    return found


def _mutated_names(tree: ast.Module) -> set[str]:
    """Names whose content the module changes: ``X[k] = v``, ``del X[k]``, ``X += ...``, ``X.update(...)`` and the like."""
    mutated = set()
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target] if isinstance(node, ast.AugAssign) else []
        for target in targets:
            base = target.value if isinstance(target, ast.Subscript) else target if isinstance(node, ast.AugAssign) else None
            if isinstance(base, ast.Name):
                mutated.add(base.id)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _MUTATORS \
                and isinstance(node.func.value, ast.Name):
            mutated.add(node.func.value.id)
    return mutated


def _registries(tree: ast.Module) -> list[tuple[int, str]]:
    """Module-level mutable containers the module changes at run time (constant tables are fine), and globals."""
    containers = _module_containers(tree)
    found = [(line, name) for name, line in containers.items() if name in _mutated_names(tree)]
    found += [(node.lineno, f"global {', '.join(node.names)}") for node in ast.walk(tree) if isinstance(node, ast.Global)]
    return sorted(found)


def test_taxonomy_has_no_module_level_mutable_state():
    wrong = []
    for path in sorted((PACKAGE / "taxonomy").glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        wrong += [f"taxonomy/{path.name}:{line} {name}" for line, name in _registries(tree)]
    assert not wrong, "mutable module state in taxonomy/ (a run's taxonomies belong in its Catalog):\n" + "\n".join(wrong)


def test_the_mutable_state_check_finds_a_registry():
    tree = ast.parse("_user: dict[str, int] = {}\nTABLE = {'a': 1}\n_cache = dict()\n"
                     "def add(n):\n    _user[n] = 1\n    _cache.update(x=1)\n    return TABLE['a']\n")
    assert [name for _, name in _registries(tree)] == ["_user", "_cache"]
