"""The package's import structure, read from the source with `ast` (function-level imports included): no recipe
imports another recipe (what recipes share lives in modules that are not recipes), and no import cycles."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "vidpost"


def _module(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from vidpost.recipes import sft`
    return {name for name in found if name in modules}


def _graph() -> dict[str, set[str]]:
    files = {_module(path): path for path in PACKAGE.rglob("*.py")}
    return {name: _imports(path, set(files)) - {name} for name, path in files.items()}


def _is_recipe(module: str) -> bool:
    """A module of recipes/ that defines a top-level `train`: a recipe, not a helper the recipes share."""
    if not module.startswith("vidpost.recipes."):
        return False
    tree = ast.parse((SRC / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8"))
    return any(isinstance(node, ast.FunctionDef) and node.name == "train" for node in tree.body)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as [a, b, ..., a], or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = "open", path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node], _ = "done", path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_recipe_imports_another_recipe():
    graph = _graph()
    recipes = {name for name in graph if _is_recipe(name)}
    assert {
        "vidpost.recipes.sft",
        "vidpost.recipes.grpo",
        "vidpost.recipes.enhance",
        "vidpost.recipes.distill",
    } <= recipes
    crossing = sorted((name, other) for name in recipes for other in graph[name] & recipes)
    assert not crossing, f"recipes importing recipes: {crossing}"


def test_the_pipeline_has_no_import_cycle():
    graph = _graph()
    pipeline = {name: deps for name, deps in graph.items() if name.startswith("vidpost.pipeline")}
    assert _cycle({name: deps & set(pipeline) for name, deps in pipeline.items()}) is None


def test_the_package_has_no_import_cycle():
    assert _cycle(_graph()) is None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
