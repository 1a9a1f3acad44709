"""The graph explorer page: step through forward and backward on the real graph.

`/graph` shows the graph the engine recorded for one digit through this browser's model (a
test digit, or the drawing the draw page left in the tab) or for a scalar expression, and
steps through the engine's own forward order and backward walk. `POST /api/graph` answers
with all of it in one reply (explorer.py computes it), and `POST /api/graph/update` takes
one SGD step: on this browser's own copy of the model (never the base model), or on the
expression's values. Every problem with a request is a one-line 400.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flask import Blueprint, Response, jsonify, render_template, session

from .api_input import InputError, digit_from, json_body, label_from
from .explain import sgd_step
from .explorer import explore_digit, explore_expression, update_expression
from .explorer_draw import drawn
from .expression import ExpressionError
from .predict import predict_proba
from .sessions import pages, session_id

DEFAULT_EXPRESSION, DEFAULT_VALUES = "tanh(a*b + c)", {"a": 2.0, "b": -3.0, "c": 10.0}
MAX_LR = 10.0
SOURCES = ("image", "pixels", "test_index", "expression")
_FIELDS = {"digit": {"label", "lr"}, "expression": {"values", "lr"}}  # besides the source

graph_page = Blueprint("graph_page", __name__)


@graph_page.get("/graph")
def page() -> str:
    state = pages()
    n_test = len(state.mnist().test_x) if state.has_mnist() else 0
    with state.sessions.reading(session.get("id")) as model:  # the used model, after /train
        sizes = model.sizes
    return render_template("graph.html", sizes=sizes, lr=state.lr,
                           n_test=n_test, expression=DEFAULT_EXPRESSION,
                           values=", ".join(f"{k}={v:g}" for k, v in DEFAULT_VALUES.items()))


@graph_page.post("/api/graph")
def graph() -> Response:
    body = json_body()
    if _source(body) == "expression":
        return jsonify(drawn(_expression(lambda: explore_expression(body["expression"],
                                                                     body.get("values", {})))))
    digit, label, how = _digit(body)
    with pages().sessions.reading(session.get("id")) as model:
        data = explore_digit(model, digit, label)
    return jsonify(_digit_graph(data, how, body))


@graph_page.post("/api/graph/update")
def update() -> Response:
    """One SGD step at `lr` (default: the server's, as the draw page teaches): the loss and
    probabilities (or the expression's value) before and after, and the new graph."""
    body = json_body()
    lr = _lr(body)
    if _source(body) == "expression":
        step = _expression(lambda: update_expression(body["expression"], body.get("values", {}), lr))
        graph = drawn(_expression(lambda: explore_expression(body["expression"], step["values_after"])))
        return jsonify({**step, "graph": graph})
    digit, label, how = _digit(body)
    with pages().sessions.writing(session_id()) as mine:
        probs_before = predict_proba(mine, digit.reshape(1, -1))[0]
        target = int(np.argmax(probs_before)) if label is None else label
        loss_before = sgd_step(mine, digit, target, lr)
        data = explore_digit(mine, digit, target)
    return jsonify({"lr": lr, "label": target, "loss_before": loss_before, "loss_after": data["loss"],
                    "probs_before": probs_before, "probs_after": data["probs"],
                    "graph": _digit_graph(data, how, body)})


def _source(body: dict[str, Any]) -> str:
    """"digit" or "expression", after checking that the body names exactly one source and
    nothing it does not use."""
    given = [k for k in SOURCES if k in body]
    if len(given) != 1:
        raise InputError('give exactly one of "image" (a PNG data URL), "pixels" (28 rows of 28 '
                         'numbers), "test_index" (a test digit) or "expression" (e.g. '
                         f'"tanh(a*b + c)" with "values"); got {len(given)}')
    kind = "expression" if given[0] == "expression" else "digit"
    unknown = sorted(set(body) - {given[0]} - _FIELDS[kind])
    if unknown:
        what = "an expression" if kind == "expression" else "a digit"
        raise InputError(f"unknown field {unknown[0]!r} for {what}; besides {given[0]!r} it takes "
                         f"{' and '.join(repr(f) for f in sorted(_FIELDS[kind]))}")
    return kind


def _digit(body: dict[str, Any]) -> tuple[np.ndarray, int | None, str]:
    """The digit, its label (None: the prediction) and where the label came from."""
    label = label_from(body) if "label" in body else None
    if "test_index" not in body:
        return digit_from(body), label, "given" if label is not None else "predicted"
    data = pages().mnist()
    i = body["test_index"]
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(data.test_x):
        raise InputError(f'"test_index" must be an integer from 0 to {len(data.test_x) - 1}, '
                         f"got {str(i)[:40]}")
    if label is None:
        return data.test_x[i], int(data.test_y[i]), "true"
    return data.test_x[i], label, "given"


def _digit_graph(data: dict[str, Any], how: str, body: dict[str, Any]) -> dict[str, Any]:
    """A digit's explorer data as the page takes it: drawn, with where its label came from."""
    return {**drawn(data), "label_source": how, "test_index": body.get("test_index")}


def _expression(compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """What `compute` returns; an expression it refuses is a 400 with its message."""
    try:
        result: dict[str, Any] = compute()
    except ExpressionError as e:
        raise InputError(str(e)) from None
    return result


def _lr(body: dict[str, Any]) -> float:
    lr = body.get("lr", pages().lr)
    # compared, never converted: NaN fails it, and an integer too large for a float
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr <= MAX_LR:
        raise InputError(f'"lr" must be a number in (0, {MAX_LR:g}], got {str(lr)[:40]}')
    return float(lr)
