"""The package's layer rule (raysegment/__init__.py), checked on every import statement, and no import circle."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "raysegment"
LAYERS = [
    {"config", "storage", "errors", "viz"},
    {"data"},
    {"augment"},
    {"models"},
    {"engine"},
    {"export"},
    {"registry"},
    {"distributed"},
    {"serving"},
    {"apps"},
    {"cli"},
]
RAY_FREE = {
    "config",
    "storage",
    "errors",
    "viz",
    "data",
    "augment",
    "models",
    "engine",
    "export",
    "registry",
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


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_imports_itself_back_through_others():
    """The import graph of the package's modules (lazy imports included) has no circle: every
    module can be read knowing only the ones it imports."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}

    def target(name: str) -> str | None:  # `from raysegment.x import y`: module x.y if it is one, else x
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for m, p in modules.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                graph[m] |= {target(a.name) for a in node.names if a.name.startswith("raysegment.")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("raysegment."):
                for alias in node.names:  # `from raysegment.models import freeze` names the module freeze
                    name = f"{node.module}.{alias.name}"
                    graph[m].add(name if name in modules else target(node.module))
        graph[m] -= {m, None}
    circles, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                circles.append(" -> ".join(path[path.index(n) :] + [n]))
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(modules):
        if m not in state:
            visit(m, [m])
    assert not circles, circles
