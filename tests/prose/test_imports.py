"""The package's import graph has no circle (issue 38): every module of identity_study, with the imports inside its
functions too, forms a directed acyclic graph, so each room can be read after the rooms it stands on."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "identity_study"


def imports(path: Path) -> set:
    "The identity_study modules that `path` imports, at the top or inside a function."
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif node.module and node.module.startswith("identity_study."):
                found.add(node.module.split(".")[1])
            elif node.module == "identity_study":
                found |= {a.name for a in node.names}
    return found


def graph() -> dict:
    modules = {p.stem for p in PACKAGE.glob("*.py") if not p.stem.startswith("_")}
    return {m: imports(PACKAGE / f"{m}.py") & modules - {m} for m in modules}


def test_the_import_graph_has_no_circle():
    edges, done, path = graph(), set(), []

    def visit(m):
        if m in path:
            raise AssertionError("a circle of imports: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        path.append(m)
        for n in sorted(edges[m]):
            visit(n)
        path.pop()
        done.add(m)

    for m in sorted(edges):
        visit(m)


def test_the_graph_sees_function_level_imports():
    edges = graph()
    assert "findings" in edges["figures"] and "protocol" in edges["findings"]
    assert "data" in edges["protocol"]            # imported inside this_machine()


def test_figures_draws_without_the_net_builder_and_plotting_stands_alone():
    "Issue 38: figures reaches no net builder (params) and no propagation; the presentation module imports nothing."
    edges = graph()
    assert not {"params", "propagation", "models"} & edges["figures"]
    assert edges["plotting"] == set() and "plotting" in edges["propagation"] and "plotting" in edges["figures"]
