"""The exercises' grader (tinygrad_mnist.exercises and its exercise_book), demos/exercises.ipynb,
its answer key demos/exercise_solutions.py, and docs/exercises.md.

Every reference answer passes. Every planted mistake, the kind a learner makes, fails with the
hint that names it. A blank or malformed answer gets a plain message, never an exception. The
notebook runs twice with nbclient: with its cells tagged `solution` every check passes; without
them every check fails with its message and no cell raises.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # conftest, also when run as a script
from conftest import ROOT, require_module, require_python3_kernel  # noqa: E402

sys.path.insert(0, str(ROOT / "demos"))  # the answer key lives beside the notebook, not in the package
import exercise_solutions as answers  # noqa: E402

from tinygrad_mnist import Tensor, exercises  # noqa: E402

NOTEBOOK = ROOT / "demos" / "exercises.ipynb"
DOCS = ROOT / "docs" / "exercises.md"
NAMES = ["mul", "div", "exp", "tanh", "sum", "broadcast", "matmul", "relu", "cross_entropy", "mlp"]


def wrong(answer, backward):
    """The right answer `answer` with a planted mistake: its backward replaced by `backward`."""
    return type("Wrong" + answer.__name__, (answer,), {"backward": backward})


def planted(answer, rule):
    """`answer` whose backward is `rule(g, out, *what forward saved)`."""
    return wrong(answer, lambda ctx, out, g: rule(g, out, *ctx.saved))


def blank(ctx, out, g):
    raise NotImplementedError("your code here")


def mlp_blank(x, labels, W1, b1, W2, b2):
    raise NotImplementedError("your code here")


def onehot(logits, labels):
    return Tensor(np.eye(logits.shape[1])[labels])


def naive_softmax(logits):
    e = logits.exp()  # no max subtracted: overflows for large logits
    return e / e.sum(axis=1, keepdims=True)


def numpy_softmax(logits):
    e = np.exp(logits.data - logits.data.max(axis=1, keepdims=True))
    return Tensor(e / e.sum(axis=1, keepdims=True))  # a constant to the engine


def kept(shape, axis):
    return tuple(1 if i in axis else n for i, n in enumerate(shape))


def sum_leading(g, shape):
    """g summed over the axes that broadcasting added in front of `shape`."""
    return g.sum(axis=tuple(range(g.ndim - len(shape))))


def sum_to(g, shape, keepdims=True):
    """g summed over the axes that broadcasting stretched `shape` along."""
    return sum_leading(g, shape).sum(axis=tuple(i for i, n in enumerate(shape) if n == 1), keepdims=keepdims)


A = answers
# name: (exercise, the planted mistake, what its hint must say)
PLANTED = {
    "mul-sign": ("mul", planted(A.Mul, lambda g, out, x, y: (-g * y, -g * x)), "a sign"),
    "mul-factor-2": ("mul", planted(A.Mul, lambda g, out, x, y: (g * y * 2, g * x)),
                     "a factor of 2: yours is twice"),
    "mul-own-input": ("mul", planted(A.Mul, lambda g, out, x, y: (g * x, g * y)),
                      "g times the *other* input"),
    "mul-no-g": ("mul", planted(A.Mul, lambda g, out, x, y: (y * 1.0, x * 1.0)),
                 "the chain rule: multiply by g"),
    "mul-numpy": ("mul", planted(A.Mul, lambda g, out, x, y: (g * y.data, g * x.data)),
                  "build the gradient from Tensor operations"),
    "div-no-square": ("div", planted(A.Div, lambda g, out, x, y: (g / y, -g * x / y)), "y is squared"),
    "div-sign": ("div", planted(A.Div, lambda g, out, x, y: (g / y, g * out / y)), "a sign"),
    "div-times-y": ("div", planted(A.Div, lambda g, out, x, y: (g * y, -g * out / y)), "divide g by y"),
    "exp-numpy": ("exp", planted(A.Exp, lambda g, out: g * out.data), "build the gradient from Tensor"),
    "exp-times-x": ("exp", planted(A.Exp, lambda g, out: g * out.log()), "by the output (out), not by x"),
    "exp-half": ("exp", planted(A.Exp, lambda g, out: g * out * 0.5), "a factor of 2: yours is half"),
    "exp-g-only": ("exp", planted(A.Exp, lambda g, out: g * 1.0), "passed g through unchanged"),
    "tanh-not-squared": ("tanh", planted(A.Tanh, lambda g, out: g * (1 - out)), "the output is squared"),
    "tanh-plus": ("tanh", planted(A.Tanh, lambda g, out: g * (1 + out * out)), "minus, not plus"),
    "tanh-sign": ("tanh", planted(A.Tanh, lambda g, out: g * (out * out - 1)), "a sign"),
    "sum-no-reshape": ("sum", planted(A.Sum, lambda g, out, shape, axis: g.broadcast_to(shape)),
                       "reshape g to the keepdims shape"),
    "sum-returns-g": ("sum", planted(A.Sum, lambda g, out, shape, axis: g), "that is the output's shape"),
    "sum-mean": ("sum", planted(A.Sum, lambda g, out, shape, axis: g.reshape(kept(shape, axis))
                                .broadcast_to(shape) * (out.size / np.prod(shape))), "mean's gradient"),
    "broadcast-returns-g": ("broadcast", planted(A.BroadcastTo, lambda g, out, shape: g),
                            "sum over the broadcast axes: x was broadcast to (2, 3)"),
    "broadcast-leading-only": (
        "broadcast", planted(A.BroadcastTo, lambda g, out, shape: sum_leading(g, shape)),
        "sum over the broadcast axes: x was broadcast to (3, 4), and every copy of an element sends back "
        "its gradient: add them up over axis 1 (keepdims=True there"),
    "broadcast-no-keepdims": ("broadcast",
                              planted(A.BroadcastTo, lambda g, out, shape: sum_to(g, shape, keepdims=False)),
                              "keep summed axes as size 1 (keepdims=True)"),
    "broadcast-mean": ("broadcast", planted(A.BroadcastTo, lambda g, out, shape: sum_to(g, shape)
                                            * (np.prod(shape) / out.size)), "don't average"),
    "matmul-x-no-transpose": ("matmul", planted(A.MatMul, lambda g, out, x, y: (g @ y, x.T @ g)),
                              "a missing transpose: d/dx (x @ y) = g @ yᵀ"),
    "matmul-y-no-transpose": ("matmul", planted(A.MatMul, lambda g, out, x, y: (g @ y.T, x @ g)),
                              "a missing transpose: d/dy (x @ y) = xᵀ @ g"),
    "matmul-y-transposed": ("matmul", planted(A.MatMul, lambda g, out, x, y: (g @ y.T, g.T @ x)),
                            "yours is the transpose of the right gradient"),
    "matmul-order": ("matmul", planted(A.MatMul, lambda g, out, x, y: (y.T @ g, g @ x.T)), "do not commute"),
    "matmul-swapped": ("matmul", planted(A.MatMul, lambda g, out, x, y: (x.T @ g, g @ y.T)),
                       "the two gradients are swapped"),
    "relu-at-0": ("relu", planted(A.ReLU, lambda g, out, x: g * Tensor(x.data >= 0)),
                  "with x > 0, not x >= 0"),
    "relu-times-out": ("relu", planted(A.ReLU, lambda g, out, x: g * out), "not by relu(x) itself"),
    "relu-sign": ("relu", planted(A.ReLU, lambda g, out, x: g * Tensor(np.sign(x.data))), "not −1"),
    "relu-identity": ("relu", planted(A.ReLU, lambda g, out, x: g * 1.0), "you let it through everywhere"),
    "ce-no-softmax": ("cross_entropy", planted(A.CrossEntropy, lambda g, out, z, labels: (
        -onehot(z, labels) * g / len(labels))), "the softmax is missing"),
    "ce-no-mean": ("cross_entropy", planted(A.CrossEntropy, lambda g, out, z, labels: (
        (z.softmax(axis=1) - onehot(z, labels)) * g)), "divide by N"),
    "ce-sign": ("cross_entropy", planted(A.CrossEntropy, lambda g, out, z, labels: (
        (onehot(z, labels) - z.softmax(axis=1)) * g / len(labels))), "a sign"),
    "ce-no-g": ("cross_entropy", planted(A.CrossEntropy, lambda g, out, z, labels: (
        (z.softmax(axis=1) - onehot(z, labels)) / len(labels))), "the chain rule"),
    "ce-overflow": ("cross_entropy", planted(A.CrossEntropy, lambda g, out, z, labels: (
        (naive_softmax(z) - onehot(z, labels)) * g / len(labels))), "an overflow"),
    "ce-numpy-softmax": ("cross_entropy", planted(A.CrossEntropy, lambda g, out, z, labels: (
        (numpy_softmax(z) - onehot(z, labels)) * g / len(labels))), "Tensor operations"),
}


def test_list_names_the_exercises_in_order_with_one_line_each():
    listed = exercises.list()
    assert [name for name, _ in listed] == NAMES
    assert all(about and "\n" not in about for _, about in listed)
    assert list(answers.SOLUTIONS) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_the_reference_answer_passes(name):
    result = exercises.check(name, answers.SOLUTIONS[name])
    assert result and result.passed and result.hint == "", result.message
    assert result.message.startswith(f"✔ {name}: right.") and str(result) == result.message


@pytest.mark.parametrize("case", PLANTED.values(), ids=PLANTED.keys())
def test_a_planted_mistake_gets_the_hint_that_names_it(case):
    name, answer, words = case
    result = exercises.check(name, answer)
    assert not result and result.message.startswith(f"✘ {name}: not right yet, in case ")
    assert words in result.hint and f"\nHint: {result.hint}" in result.message, result.message


def test_a_wrong_value_is_reported_with_input_element_expected_and_given():
    result = exercises.check("div", PLANTED["div-sign"][1])
    assert re.search(r"The gradient of y is wrong at element \(0, 0\) \(6 of 6 elements are off\): "
                     r"expected (-?[\d.]+), got (-?[\d.]+)\.", result.message), result.message
    expected, given = re.search(r"expected (\S+), got (\S+)\.", result.message).groups()
    assert float(given) == pytest.approx(-float(expected))


@pytest.mark.parametrize("name", NAMES[:-1])
def test_a_blank_is_not_done_yet_and_never_raises(name):
    result = exercises.check(name, wrong(answers.SOLUTIONS[name], blank))
    assert not result and result.message == (
        f"✘ {name}: not done yet: your backward still raises NotImplementedError('your code here'): "
        f"fill in the blank, run its cell, then this check again.")


@pytest.mark.parametrize("backward, words", [
    (lambda c, out, g: None, "Your backward returned None.\nHint: return the gradients"),
    (lambda c, out, g: [g * c.saved[1], g * c.saved[0]], "returned a list.\nHint: return a tuple"),
    (lambda c, out, g: g * c.saved[1], "returned 1 gradient(s) for 2 input(s) (x, y)"),
    (lambda c, out, g: ((g * c.saved[1]).data, g), "a numpy.ndarray as the gradient of x, not a Tensor"),
    (lambda c, out, g: (g * c.saved[1], None), "returned None as the gradient of y"),
    (lambda c, out, g: (g * c.saved[2], g), "raised IndexError: tuple index out of range"),
], ids=["none", "list", "too-few", "ndarray", "none-for-y", "raises"])
def test_a_malformed_backward_gets_a_plain_message(backward, words):
    result = exercises.check("mul", wrong(answers.Mul, backward))
    assert not result and words in result.message, result.message


def test_matmul_shapes_that_do_not_line_up_suggest_a_transpose():
    """The square case comes first; on the others `g @ y` cannot even run."""
    result = exercises.check("matmul", PLANTED["matmul-x-no-transpose"][1])
    assert "case 1 of 4" in result.message
    late = type("Late", (answers.MatMul,), {"backward": lambda c, out, g: (
        g @ (c.saved[1].T if c.saved[1].shape[0] == c.saved[1].shape[1] else c.saved[1]), c.saved[0].T @ g)})
    result = exercises.check("matmul", late)
    assert "in case 2 of 4" in result.message and "raised ValueError: MatMul: input shapes" in result.message
    assert "a missing transpose?" in result.hint


def test_the_wrong_kind_of_answer_is_explained():
    assert "takes your Function class itself" in exercises.check("mul", answers.Mul()).message
    assert "takes your function mlp_backward" in exercises.check("mlp", 42).message
    result = exercises.check("div", answers.Mul)  # another exercise's class: its forward differs
    assert "Your forward's output differs from x / y" in result.message and "another exercise" in result.hint


def test_an_unknown_name_is_a_value_error_that_lists_the_names():
    with pytest.raises(ValueError, match="unknown exercise 'Mul'; the exercises are: mul, div, exp, tanh"):
        exercises.check("Mul", answers.Mul)


# The MLP by hand: one backprop with a switch for each planted mistake.

def mlp_by_hand(x, labels, W1, b1, W2, b2, mistake=""):
    n = len(x)
    pre = x @ W1 + b1
    h = np.maximum(pre, 0)
    logits = h @ W2 + b2
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    dlogits = (np.zeros_like(probs) if mistake == "no softmax" else probs) - np.eye(probs.shape[1])[labels]
    dlogits = dlogits if mistake == "no mean" else dlogits / n
    dW2 = dlogits.T @ h if mistake == "dW2 transposed" else h.T @ dlogits
    dW2 = -dW2 if mistake == "dW2 sign" else dW2
    db2 = dlogits if mistake == "db2 not summed" else dlogits.sum(axis=0)
    dh = dlogits @ W2 if mistake == "no transpose" else dlogits @ W2.T
    mask = 1.0 if mistake == "no mask" else pre >= 0 if mistake == "mask at 0" else pre > 0
    dpre = dh * mask
    return x.T @ dpre, dpre.sum(axis=0), dW2, db2


@pytest.mark.parametrize("mistake, words", [
    ("no softmax", "the softmax is missing"),
    ("no mean", "the loss is the mean over the N examples"),
    ("dW2 transposed", "a missing transpose: yours is the transpose"),
    ("dW2 sign", "a sign"),
    ("db2 not summed", "sum over the broadcast axes: b2 was broadcast to (5, 3), and every copy of an "
                       "element sends back its gradient: add them up over axis 0"),
    ("no transpose", "a missing transpose?"),
    ("no mask", "the ReLU is missing"),
    ("mask at 0", "ReLU at 0"),
])
def test_a_planted_mlp_mistake_gets_the_hint_that_names_it(mistake, words):
    result = exercises.check("mlp", lambda *arrays: mlp_by_hand(*arrays, mistake=mistake))
    assert not result and words in result.hint, result.message


def test_the_mlp_checks_its_answer_against_the_engine_and_catches_malformed_ones():
    assert exercises.check("mlp", mlp_by_hand)
    at_0 = exercises.check("mlp", lambda *a: mlp_by_hand(*a, mistake="mask at 0"))
    assert "in case 3 of 3: an all-zero example" in at_0.message  # the only case where pre is exactly 0
    three = exercises.check("mlp", lambda *a: mlp_by_hand(*a)[:3])
    assert "Your mlp_backward returned 3 values" in three.message
    result = exercises.check("mlp", lambda *a: (None, *mlp_by_hand(*a)[1:]))
    assert "Your gradient of W1 is None" in result.message
    result = exercises.check("mlp", mlp_blank)
    assert result.message.startswith("✘ mlp: not done yet: your mlp_backward still raises NotImplemented")


# The docs page shows one real message: it must be what the grader says today.

def test_the_docs_example_prints_the_message_shown_under_it():
    text = DOCS.read_text(encoding="utf-8")
    code, shown = re.search(r"```python\n(.*?)```\n.*?```text\n(.*?)```", text, re.S).groups()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(DOCS), "exec"), {"__name__": "__docs__"})
    assert out.getvalue() == shown
    assert all(f"`{name}`" in text for name in NAMES)


# The notebook, run twice.

@pytest.fixture(scope="module")
def nbformat():
    return require_module("nbformat", "nbformat (pip install nbclient)")


@pytest.fixture(scope="module", params=["with solutions", "with blanks"])
def executed(request, nbformat, tmp_path_factory):
    """The notebook after a fresh run, with or without its cells tagged `solution`."""
    require_python3_kernel()
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    if request.param == "with blanks":
        nb.cells = [c for c in nb.cells if "solution" not in c.metadata.get("tags", [])]
    mp = pytest.MonkeyPatch()
    mp.setenv("TMPDIR", str(tmp_path_factory.mktemp("kernel-tmp")))
    try:  # a check cell that raised would make nbclient raise here, failing the test
        NotebookClient(nb, timeout=300, kernel_name="python3", record_timing=False,
                       resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    finally:
        mp.undo()
    return request.param, nb


def check_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code" and c.source.startswith("exercises.check(")]


def shown(cell):
    return "".join(o.get("data", {}).get("text/plain", "") + o.get("text", "") for o in cell.outputs)


def test_every_check_passes_with_the_solutions_and_fails_plainly_without(executed):
    run, nb = executed
    cells = check_cells(nb)
    assert [re.search(r'check\("(\w+)"', c.source)[1] for c in cells] == NAMES
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    for name, cell in zip(NAMES, cells):
        if run == "with solutions":
            assert shown(cell).startswith(f"✔ {name}: right."), shown(cell)
        else:
            assert shown(cell).startswith(f"✘ {name}: not done yet: your ") and \
                "NotImplementedError('your code here')" in shown(cell), shown(cell)


def test_each_exercise_is_a_blank_its_solution_and_its_check(nbformat):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for check in check_cells(nb):
        i = code.index(check)
        the_blank, solution = code[i - 2], code[i - 1]
        assert 'raise NotImplementedError("your code here")' in the_blank.source
        assert solution.metadata.get("tags") == ["solution"]
        assert "solution" not in the_blank.metadata.get("tags", [])
        defined = re.match(r"(?:class|def) (\w+)", solution.source)[1]
        assert re.match(rf"(?:class|def) {defined}\b", the_blank.source)
        assert solution.source == inspect.getsource(getattr(answers, defined)).strip(), \
            f"the solution cell of {defined} is not exercise_solutions.{defined} word for word"


def test_the_committed_notebook_has_no_outputs_and_stays_small(nbformat):
    assert NOTEBOOK.stat().st_size < 200_000
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.outputs and c.execution_count is None for c in nb.cells if c.cell_type == "code")
