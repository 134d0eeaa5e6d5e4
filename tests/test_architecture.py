"""The package's modules import each other without cycles (module-level imports)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Each cosalign module -> the cosalign modules it imports at module level."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.parse(path.read_text()).body:  # module level only
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycles():
    graph = imports()
    assert "cosalign.methods.table" in graph and graph["cosalign.engine.train"]
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_dataset_list_sits_below_config_and_data():
    """config validates domains with data (inside a function) and data dispatches on the
    dataset names: the names live in a module both import, so data imports no config."""
    graph = imports()
    assert "cosalign.config" not in graph["cosalign.data"]
    assert "cosalign.datasets" in graph["cosalign.config"]
    assert "cosalign.datasets" in graph["cosalign.data"]


def test_methods_and_losses_import_nothing_from_engine():
    """engine/train.py runs the methods, so the methods (and what they use) sit below engine/:
    the upsampling, the schedule and the diagnostics live in models/, schedule.py, losses/."""
    graph = imports()
    below = [m for m in graph if m.startswith(("cosalign.methods", "cosalign.losses",
                                               "cosalign.models", "cosalign.data"))]
    assert len(below) > 10
    for m in below:
        up = sorted(d for d in graph[m] if d.startswith("cosalign.engine"))
        assert not up, f"{m} imports {up}"
