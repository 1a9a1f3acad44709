"""The draw-a-digit page: draw, watch the network think, and teach it with one backprop step.

Every number comes from `explain` (the engine's forward and backward). Teaching changes only
this browser's own copy of the model, and, when MNIST is at hand, the answer says how the
step changed the accuracy on 1,000 held-out test digits: one lesson can help the drawing and
hurt the rest.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from flask import Blueprint, Response, jsonify, render_template, session

from .api_input import InputError, digit_from, floats, json_body, label_from
from .explain import Explanation, explain, sgd_step
from .nn import MLP
from .predict import predict_proba
from .sessions import pages, session_id

HELD_OUT = 1000  # test digits a teach is checked on: the last ones, which the draw page never shows

draw_page = Blueprint("draw_page", __name__)


@draw_page.get("/")
def page() -> str:
    state = pages()
    with state.sessions.reading(session.get("id")) as model:  # the used model, after /train
        sizes = model.sizes
    return render_template("page.html", sizes=sizes, lr=state.lr,
                           held_out=HELD_OUT if state.has_mnist() else 0)


@draw_page.post("/api/predict")
def predict() -> Response:
    digit = digit_from(json_body())
    with pages().sessions.reading(session.get("id")) as model:
        e = explain(model, digit)
    # the reply written straight to bytes: this is the request a class sends most
    return Response(orjson.dumps(prediction_reply(e), option=orjson.OPT_SERIALIZE_NUMPY),
                    mimetype="application/json")


def prediction_reply(e: Explanation) -> dict[str, Any]:
    """The draw page's reply for a digit: what it draws, rounded."""
    return {"input": floats(e.input), "probs": floats(e.probs, 6), "prediction": int(e.prediction),
            "activations": [floats(layer.post) for layer in e.layers[:-1]],
            "saliency": floats(e.saliency, 6)}


@draw_page.post("/api/teach")
def teach() -> Response:
    state = pages()
    body = json_body()
    digit, label = digit_from(body), label_from(body)  # checked before a copy is made
    with state.sessions.writing(session_id()) as taught:
        before = explain(taught, digit)
        held_before = _held_out_accuracy(taught)
        sgd_step(taught, before.input, label, state.lr)
        after = explain(taught, digit)
        held_after = _held_out_accuracy(taught)
    reply: dict[str, Any] = {"label": label, "lr": state.lr, "before": floats(before.probs, 6),
                             "after": floats(after.probs, 6), "explanation": prediction_reply(after)}
    if held_before is not None:
        reply["held_out"] = {"digits": HELD_OUT, "before": held_before, "after": held_after}
    return jsonify(reply)


@draw_page.post("/api/reset")
def reset() -> Response:
    json_body()
    pages().sessions.reset(session.get("id"))
    return jsonify({"reset": True})


def _held_out_accuracy(model: MLP) -> float | None:
    """Accuracy on the last HELD_OUT test digits; None without MNIST."""
    try:
        data = pages().mnist()
    except InputError:
        return None
    x, y = data.test_x[-HELD_OUT:], data.test_y[-HELD_OUT:]
    return float(np.mean(predict_proba(model, x).argmax(axis=1) == y))
