"""The house rules of the package, checked: one concern per module, computing apart from
presenting, and no import cycle above the engine.

Read from the source (ast), so the rules hold for every import, also those inside functions.
"""
import ast
import itertools

import pytest
from conftest import ROOT

PACKAGE = ROOT / "tinygrad_mnist"
MODULES = {p.stem: p for p in PACKAGE.glob("*.py")}
MAX_LINES, MAX_TRAIN_LINES = 450, 350
# the modules that present: they may draw, render pages and serve; nothing below them may
# import what only they use
PRESENTING = {"cli", "__main__", "server", "report", "plots", "explain_plot", "draw_page",
              "graph_page", "train_page", "workers"}
PRESENTATION = {"report", "plots", "explain_plot", "explain", "server", "draw_page", "graph_page",
                "train_page"}


def imports(module: str) -> set[str]:
    """The package modules `module` imports, anywhere in its source."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module] if node.module else [a.name for a in node.names]
            found.update(n.split(".")[0] for n in names)
    return found & set(MODULES)


GRAPH = {m: imports(m) for m in MODULES}


def test_no_module_is_over_its_size():
    sizes = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in MODULES.items()}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}
    assert sizes["train"] <= MAX_TRAIN_LINES


def test_no_import_cycle_but_the_engines_own():
    """tensor.py and ops.py need each other (methods call ops; ops subclass Function); no other
    pair of modules, at any distance, does."""
    def reaches(a: str, b: str) -> bool:
        seen, todo = set(), [a]
        while todo:
            m = todo.pop()
            for n in GRAPH[m] - seen:
                if n == b:
                    return True
                seen.add(n)
                todo.append(n)
        return False
    cycles = {tuple(sorted(pair)) for pair in itertools.combinations(MODULES, 2)
              if reaches(*pair) and reaches(*reversed(pair))}
    assert cycles == {("ops", "tensor")}


def test_training_draws_nothing_and_the_pages_need_no_training_loop():
    assert GRAPH["train"] & PRESENTATION == set()
    assert "train" not in GRAPH["report"] | GRAPH["server"]
    below = set(MODULES) - PRESENTING
    users = {m for m in below if GRAPH[m] & PRESENTATION}
    assert users == set(), f"{users} import presentation"


@pytest.mark.parametrize("module", sorted(set(MODULES) - {"ops", "tensor"}))
def test_every_op_lives_in_ops_py(module):
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    functions = [n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
                 and any(getattr(b, "id", getattr(b, "attr", None)) == "Function" for b in n.bases)]
    assert functions == [], f"{module}.py defines the op(s) {functions}; ops live in ops.py"


def test_the_graph_is_read_from_the_source():
    """The checks above would pass vacuously if nothing were found."""
    assert {"tensor", "ops"} <= GRAPH["nn"] | GRAPH["ops"] and "ops" in GRAPH["tensor"]
    assert {"config", "checkpoint", "run_dir"} <= GRAPH["train"]
