"""The package's layer rule (raysegment/__init__.py), checked on every import statement."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "raysegment"
LAYERS = [
    {"config", "storage", "objectstore", "errors", "viz"},
    {"data"},
    {"augment"},
    {"models"},
    {"engine"},
    {"export"},
    {"registry", "manifest", "weights_cache", "traffic", "artifacts", "intake"},
    {"promotion"},
    {"distributed"},
    {"serving"},
    {"apps"},
    {"cli"},
]
RAY_FREE = {
    "config",
    "storage",
    "objectstore",
    "errors",
    "viz",
    "data",
    "augment",
    "models",
    "engine",
    "export",
    "registry",
    "artifacts",
    "manifest",
    "weights_cache",
    "traffic",
    "intake",
    "promotion",
}


def layer_of(part: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if part in names)


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_every_module_imports_only_its_own_layer_or_those_to_its_left():
    broken = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts == ("__init__",):
            continue
        own = layer_of(parts[0])
        for module in imports(path):
            names = module.split(".")
            if names[0] == "raysegment" and len(names) > 1 and layer_of(names[1]) > own:
                broken.append(f"{'/'.join(parts)} imports {module}")
            if names[0] == "ray" and parts[0] in RAY_FREE:
                broken.append(f"{'/'.join(parts)} imports Ray")
    assert not broken, broken
