"""Draw a digit and watch the network think: a local page and its JSON API.

Flask serves it: a well-kept WSGI framework with Jinja2 templates, a test client that runs
requests without a socket, and Werkzeug's threaded server underneath, so no HTTP is handled
by hand. Every number in a response comes from `tinygrad_mnist.explain`, i.e. from the
engine's forward and backward.

The engine's grad mode is one process-wide flag (not per thread), so requests run the engine
one at a time under a lock. Teaching changes only the asking browser's own copy of the model
(kept for at most `max_sessions` browsers, the least recently used dropped); the checkpoint
file is only ever read.
"""
from __future__ import annotations

import base64
import binascii
import copy
import io
import json
import logging
import secrets
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask, Response, jsonify, render_template, request, session
from PIL import Image
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.serving import make_server

from .checkpoint import load_checkpoint
from .digit_image import grey_on_white, prepare_digit
from .explain import Explanation, explain, sgd_step
from .nn import MLP

MAX_BODY = 1 << 20  # bytes of one request
MAX_IMAGE_SIDE = 4096  # pixels: a small PNG can unpack into a huge image
WORK_SIDE = 1024  # larger images are shrunk to this first: ample for a 20-pixel digit
PNG_URL = "data:image/png;base64,"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
TEACH_LR = 0.01  # one step of 0.1 on a single digit overshoots: most digits then get its label
_log = logging.getLogger(__name__)


class InputError(Exception):
    """A request the API cannot use; the message says what was wrong and what was expected."""


class Sessions:
    """Each browser's taught copy of the model; browsers that never taught share the base."""

    def __init__(self, base: MLP, limit: int):
        self.base, self.limit = base, limit
        self.models: OrderedDict[str, MLP] = OrderedDict()

    def model(self, sid: str | None) -> MLP:
        if sid is not None and sid in self.models:
            self.models.move_to_end(sid)
            return self.models[sid]
        return self.base

    def own(self, sid: str) -> MLP:
        """The session's own copy, made on its first teach; the oldest copy goes beyond the limit."""
        if sid not in self.models:
            self.models[sid] = copy.deepcopy(self.base)
            while len(self.models) > self.limit:
                self.models.popitem(last=False)
        return self.model(sid)

    def reset(self, sid: str | None) -> None:
        self.models.pop(sid or "", None)


def create_app(model: MLP, lr: float = TEACH_LR, max_sessions: int = 32) -> Flask:
    """The Flask app serving the page for `model` (put in eval mode; its weights are never
    changed); `lr` is the step size of one teach."""
    if lr <= 0 or max_sessions < 1:
        raise ValueError(f"need lr > 0 and max_sessions >= 1, got lr={lr}, max_sessions={max_sessions}")
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY, SECRET_KEY=secrets.token_bytes(32),
                      SESSION_COOKIE_SAMESITE="Strict")
    model.eval()
    sessions = Sessions(model, max_sessions)
    engine = threading.Lock()
    app.extensions["tinygrad_mnist.sessions"] = sessions

    def session_id() -> str:
        if "id" not in session:
            session["id"] = secrets.token_hex(16)
        return session["id"]

    @app.get("/")
    def page() -> str:
        return render_template("page.html", sizes=model.sizes, lr=lr)

    @app.post("/api/predict")
    def predict() -> Response:
        body = _json_object()
        digit = _digit(body)
        with engine:
            e = explain(sessions.model(session.get("id")), digit)
        return jsonify(_explanation_json(e))

    @app.post("/api/teach")
    def teach() -> Response:
        body = _json_object()
        digit, label = _digit(body), _label(body)
        sid = session_id()
        with engine:
            taught = sessions.own(sid)
            before = explain(taught, digit)
            sgd_step(taught, before.input, label, lr)
            after = explain(taught, digit)
        return jsonify({"label": label, "lr": lr, "before": _floats(before.probs, 6),
                        "after": _floats(after.probs, 6), "explanation": _explanation_json(after)})

    @app.post("/api/reset")
    def reset() -> Response:
        with engine:
            sessions.reset(session.get("id"))
        return jsonify({"reset": True})

    @app.errorhandler(InputError)
    def bad_input(e: InputError) -> tuple[Response, int]:
        return jsonify({"error": str(e)}), 400

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> tuple[Response, int]:
        if isinstance(e, RequestEntityTooLarge):
            return jsonify({"error": f"request body is over the {MAX_BODY // 1024} KB limit"}), 400
        return jsonify({"error": f"{e.code} {e.name}"}), e.code or 500

    @app.errorhandler(Exception)
    def server_error(e: Exception) -> tuple[Response, int]:
        _log.exception("unexpected error while serving %s", request.path)
        return jsonify({"error": "internal error; the server log has the details"}), 500

    return app


def serve(checkpoint: str | Path, host: str = "127.0.0.1", port: int = 8000,
          max_sessions: int = 32) -> None:
    """Load the checkpoint and serve the page with Werkzeug's threaded server until Ctrl+C."""
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535 (0 = any free port), got {port}")
    app = create_app(load_checkpoint(checkpoint).model, max_sessions=max_sessions)
    server = make_server(host, port, app, threaded=True)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per stroke
    if host not in LOCAL_HOSTS:
        print(f"warning: serving on {host}: other machines on the network can open this page "
              f"and use this server (there is no login)", file=sys.stderr)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"serving {checkpoint}: open http://{shown}:{server.port}/ in a browser (Ctrl+C stops)",
          flush=True)
    server.serve_forever()


# --------------------------------------------------------------------------- request parsing

def _json_object() -> dict[str, Any]:
    try:  # parsed here, not by get_json, so every failure is this one clear message
        body = json.loads(request.get_data(cache=False))
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict):
        raise InputError('the request body must be a JSON object, e.g. {"pixels": [[...28 '
                         'numbers...], ...28 rows...]} or {"image": "data:image/png;base64,..."}')
    return body


def _digit(body: dict[str, Any]) -> np.ndarray:
    """The 28x28 input the network sees, from "pixels" (used as is) or "image" (prepared)."""
    if ("image" in body) == ("pixels" in body):
        raise InputError('give exactly one of "image" (a PNG data URL) or "pixels" '
                         '(28 rows of 28 numbers in [0, 1])')
    if "pixels" in body:
        return _pixels(body["pixels"])
    try:
        return prepare_digit(_png(body["image"]))
    except ValueError as e:  # a blank drawing, say
        raise InputError(f'"image": {e}') from None


def _pixels(rows: Any) -> np.ndarray:
    expected = '"pixels" must be 28 rows of 28 numbers in [0, 1] (white digit on black)'
    if not (isinstance(rows, list) and len(rows) == 28 and all(
            isinstance(r, list) and len(r) == 28 for r in rows)):
        shape = f"{len(rows)} rows" if isinstance(rows, list) else type(rows).__name__
        raise InputError(f"{expected}, got {shape}" + (
            f" of lengths {sorted({len(r) if isinstance(r, list) else -1 for r in rows})}"
            if isinstance(rows, list) and len(rows) == 28 else ""))
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for r in rows for v in r):
        raise InputError(f"{expected}; some entries are not numbers")
    a = np.array(rows, dtype=np.float32)
    if not np.isfinite(a).all():
        raise InputError(f"{expected}; got NaN or infinity")
    if a.min() < 0 or a.max() > 1:
        raise InputError(f"{expected}; got values from {a.min():g} to {a.max():g}")
    return a


def _png(url: Any) -> np.ndarray:
    """A PNG data URL as a grey uint8 array; transparency counts as white paper."""
    if not isinstance(url, str) or not url.startswith(PNG_URL):
        raise InputError(f'"image" must be a PNG data URL starting with "{PNG_URL}"')
    try:
        raw = base64.b64decode(url[len(PNG_URL):], validate=True)
    except (binascii.Error, ValueError):
        raise InputError('"image" is not valid base64 after "data:image/png;base64,"') from None
    if not raw.startswith(PNG_SIGNATURE):
        raise InputError('"image" is not a PNG (its bytes do not start with the PNG signature)')
    try:
        with Image.open(io.BytesIO(raw), formats=["PNG"]) as im:
            side = max(im.size)
            if side <= MAX_IMAGE_SIDE:
                rgba = im.convert("RGBA")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f'"image" is not a readable PNG: {e}') from None
    if side > MAX_IMAGE_SIDE:
        raise InputError(f'"image" is {side} pixels wide or high; at most {MAX_IMAGE_SIDE} allowed')
    rgba.thumbnail((WORK_SIDE, WORK_SIDE))  # bounds the memory prepare_digit needs
    return grey_on_white(rgba)


def _label(body: dict[str, Any]) -> int:
    label = body.get("label")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 9:
        raise InputError(f'"label" must be an integer from 0 to 9, got {json.dumps(label)}')
    return label


# --------------------------------------------------------------------------- the engine's side

def _explanation_json(e: Explanation) -> dict[str, Any]:
    return {"input": _floats(e.input), "probs": _floats(e.probs, 6), "prediction": int(e.prediction),
            "activations": [_floats(layer.post) for layer in e.layers[:-1]],
            "saliency": _floats(e.saliency, 6)}


def _floats(a: Any, decimals: int = 4) -> Any:
    """A list of plain floats, rounded: the browser needs no more, and the reply stays small."""
    return np.round(np.asarray(a, dtype=np.float64), decimals).tolist()
