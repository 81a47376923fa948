"""The package's shape, as docs/explanation/how-it-works.md describes it: no import
cycle, imports going one way between the sides, and SQL only in the store.
(Module size follows cohesion, not a line count: no limit is checked.) Read
from the source with `ast`: nothing is imported or patched here.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "taskworker"
SQL_TEXT = re.compile(  # the start of a statement, as queries.sql writes them
    r"^\s*(?:(?:SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|WITH \w+ AS|CREATE|ALTER) "
    r"|LISTEN \w+;?\s*$)")


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def module_level_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules `name` imports when it is imported (imports inside
    functions and under `if TYPE_CHECKING:` run later, or never)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body + node.orelse + getattr(node, "finalbody", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                for alias in node.names:  # a submodule, or a name of module `base`
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in known else base)

    visit(tree.body)
    # The importer's own packages are already (being) imported: not an edge.
    return {t for t in targets if t in known and not (name + ".").startswith(t + ".")}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: module_level_imports(name, path, set(mods)) for name, path in mods.items()}


def test_no_import_cycle() -> None:
    edges = graph()
    state: dict[str, str] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            walk(node)


ENTRY = ("taskworker.cooperative", "taskworker.__main__")  # the console entry: runs the CLI


def side(module: str) -> str:
    if module in ENTRY:
        return "entry"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in (
        "store", "processor", "web", "commands", "dashboard", "django") else "top"


def test_imports_go_one_way_between_the_sides() -> None:
    allowed = {  # side -> sides it may import at module level
        "top": {"top", "store"},
        "store": {"top", "store"},
        "processor": {"top", "store", "processor", "web", "dashboard"},
        "web": {"top", "store", "web"},
        "dashboard": {"top", "store", "dashboard"},
        "commands": {"top", "store", "processor", "commands"},
        "entry": {"top", "entry", "commands"},
        # The Django integration: its entry (__main__) patches through the console
        # entry's module, then runs the commands.
        "django": {"top", "store", "entry", "commands", "django"},
    }
    wrong = [f"{name} imports {target}" for name, targets in graph().items()
             for target in targets if side(target) not in allowed[side(name)]]
    assert not wrong, wrong


def test_the_public_api_and_the_store_import_no_serve_side() -> None:
    """`import taskworker` and the enqueue API stay free of the serve side."""
    edges = graph()
    for start in ("taskworker", "taskworker.client", "taskworker.store.admin"):
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(edges[node])
        assert not {m for m in seen if side(m) in ("processor", "web", "commands",
                                                    "dashboard")}, start


def test_sql_lives_only_in_the_store() -> None:
    outside = []
    for name, path in modules().items():
        if side(name) == "store":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and SQL_TEXT.match(node.value):
                outside.append(f"{path.name}:{node.lineno}: {node.value[:40]!r}")
            if isinstance(node, ast.ImportFrom) and node.module and node.module.endswith("sql") \
                    and "store" in node.module:
                outside.append(f"{path.name}:{node.lineno}: imports the statements")
    assert not outside, outside

