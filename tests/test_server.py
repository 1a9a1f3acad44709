"""The draw-a-digit JSON API through Flask's test client, and `tinygrad-mnist serve` for real.
(What protects a server on a network is tested in test_serve_safety.py.)

The model is a small seeded MLP: the API's numbers are checked against `explain` itself and
against an independent SGD step, so no training is needed here.
"""
import base64
import io
import json
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tinygrad_mnist.checkpoint import save_checkpoint
from tinygrad_mnist.config import TrainConfig, build_model, build_optimizer
from tinygrad_mnist.digit_image import prepare_digit
from tinygrad_mnist.explain import explain
from tinygrad_mnist.nn import MLP
from tinygrad_mnist.server import MAX_BODY, create_app

LR = 0.05


@pytest.fixture
def model():
    return MLP([784, 32, 16, 10], seed=0)


@pytest.fixture
def app(model):
    return create_app(model, lr=LR, max_sessions=2)


@pytest.fixture
def client(app):
    return app.test_client()


def digit(seed=0):
    """A 28x28 'pixels' input: a blurry bar, so the saliency has something to look at."""
    rng = np.random.default_rng(seed)
    x = np.zeros((28, 28), np.float32)
    x[5:23, 12 + seed % 4:16 + seed % 4] = 1
    return np.clip(x + 0.1 * rng.random((28, 28), dtype=np.float32), 0, 1)


def png_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def drawn_one() -> Image.Image:
    """What the page sends: black ink on a transparent canvas (the page paints it white)."""
    img = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    ImageDraw.Draw(img).line([(140, 40), (140, 240)], fill="black", width=22)
    return img


def probs_of(client, x):
    r = client.post("/api/predict", json={"pixels": x.tolist()})
    assert r.status_code == 200, r.json
    return np.array(r.json["probs"])


# ----------------------------------------------------------------------------- predict

def test_predict_pixels_returns_what_explain_computes(client, model):
    x = digit()
    r = client.post("/api/predict", json={"pixels": x.tolist()})
    assert r.status_code == 200
    body, e = r.json, explain(model, x)
    assert set(body) == {"input", "probs", "prediction", "activations", "saliency"}
    np.testing.assert_allclose(body["input"], x, atol=1e-4)
    np.testing.assert_allclose(body["probs"], e.probs, atol=1e-6)
    assert body["prediction"] == e.prediction == int(np.argmax(body["probs"]))
    assert [len(a) for a in body["activations"]] == [32, 16]
    np.testing.assert_allclose(body["activations"][0], e.layers[0].post, atol=1e-4)
    assert np.array(body["saliency"]).shape == (28, 28)
    np.testing.assert_allclose(body["saliency"], e.saliency, atol=1e-6)


def test_predict_png_data_url_is_prepared_like_mnist(client, model):
    img = drawn_one()
    r = client.post("/api/predict", json={"image": png_url(img)})
    assert r.status_code == 200, r.json
    paper = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img).convert("L")
    expected = prepare_digit(np.asarray(paper))
    np.testing.assert_allclose(r.json["input"], expected, atol=1e-4)
    assert np.array(r.json["input"])[:, :8].max() < 0.05  # a thin centred bar, not the canvas
    np.testing.assert_allclose(r.json["probs"], explain(model, expected).probs, atol=1e-6)


def test_a_large_png_gives_the_same_digit_as_a_small_one(client):
    small, large = drawn_one(), drawn_one().resize((2800, 2800))
    inputs = [np.array(client.post("/api/predict", json={"image": png_url(img)}).json["input"])
              for img in (small, large)]
    assert np.corrcoef(inputs[0].ravel(), inputs[1].ravel())[0, 1] > 0.95


def test_page_and_assets_are_served_without_any_outside_address(client):
    html = client.get("/").get_data(as_text=True)
    for name in ["canvas", "clear", "prediction", "reset", *(f"teach-{d}" for d in range(10))]:
        assert f'id="{name}"' in html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(a.startswith(("/", "data:")) for a in assets), assets
    for asset in assets:
        if asset.startswith("/"):
            r = client.get(asset)
            assert r.status_code == 200
            assert not re.search(rb"https?://", r.data), asset  # works offline: no CDN


# ----------------------------------------------------------------------------- teach / reset

def test_teach_takes_one_sgd_step_on_the_sessions_copy_only(client, app, model):
    x, label = digit(), 3
    weights = {k: v.copy() for k, v in model.state_dict().items()}
    base = probs_of(client, x)
    r = client.post("/api/teach", json={"pixels": x.tolist(), "label": label})
    assert r.status_code == 200, r.json
    before, after = np.array(r.json["before"]), np.array(r.json["after"])
    np.testing.assert_allclose(before, base, atol=1e-6)
    assert after[label] > before[label]
    np.testing.assert_allclose(after, explain(model, x, label=label, lr=LR).after_step.probs,
                               atol=1e-5)  # the same step explain takes on its own copy
    np.testing.assert_allclose(probs_of(client, x), after, atol=1e-6)  # the session keeps it
    np.testing.assert_allclose(probs_of(app.test_client(), x), base, atol=1e-6)  # others don't
    for k, v in model.state_dict().items():
        assert np.array_equal(v, weights[k]), k  # the served model itself never changes
    assert client.post("/api/reset", json={}).status_code == 200
    np.testing.assert_allclose(probs_of(client, x), base, atol=1e-6)


def test_teaching_twice_keeps_learning(client):
    x, label = digit(), 7
    first = client.post("/api/teach", json={"pixels": x.tolist(), "label": label}).json
    second = client.post("/api/teach", json={"pixels": x.tolist(), "label": label}).json
    np.testing.assert_allclose(second["before"], first["after"], atol=1e-6)
    assert second["after"][label] > first["after"][label]


def test_sessions_are_bounded_and_the_oldest_is_dropped(app):
    x = digit()
    clients = [app.test_client() for _ in range(3)]
    base = probs_of(clients[0], x)
    for c in clients:
        assert c.post("/api/teach", json={"pixels": x.tolist(), "label": 5}).status_code == 200
    assert len(app.extensions["tinygrad_mnist"].sessions) == 2
    np.testing.assert_allclose(probs_of(clients[0], x), base, atol=1e-6)  # dropped: back to base
    assert probs_of(clients[2], x)[5] > base[5]


def test_concurrent_requests_all_succeed_and_agree(app, model):
    """Werkzeug serves each request on its own thread; the engine's grad mode is global."""
    x, expected = digit(), explain(model, digit()).probs
    results, errors = [], []

    def worker(i):
        c = app.test_client()
        for _ in range(5):
            if i % 4 == 0:
                r = c.post("/api/teach", json={"pixels": x.tolist(), "label": 1})
            else:
                r = c.post("/api/predict", json={"pixels": x.tolist()})
                results.append(r.json["probs"] if r.status_code == 200 else None)
            if r.status_code != 200:
                errors.append(r.json)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    np.testing.assert_allclose(np.array(results), np.tile(expected, (len(results), 1)), atol=1e-6)


# ----------------------------------------------------------------------------- bad input

def _png_bytes(size, mode="L"):
    buf = io.BytesIO()
    Image.new(mode, size, 255).save(buf, "PNG")
    return buf.getvalue()


_GOOD = digit().tolist()
_BAD = [
    ("malformed JSON", b'{"pixels": [', "not valid JSON (Expecting value at character 12)"),
    ("not an object", b"[1, 2]", "is a JSON array, not a JSON object"),
    ("deeply nested", b"[" * 100_000, "JSON object"),
    ("not UTF-8", b'{"pixels": "\xff"}', "JSON object"),
    ("no digit", b"{}", 'exactly one of "image"'),
    ("both", json.dumps({"pixels": _GOOD, "image": "x"}).encode(), 'exactly one of "image"'),
    ("pixels not a list", b'{"pixels": 3}', "28 rows of 28"),
    ("too few rows", json.dumps({"pixels": _GOOD[:27]}).encode(), "got 27 rows"),
    ("a short row", json.dumps({"pixels": _GOOD[:27] + [[0] * 27]}).encode(), "row 27 is 27 numbers"),
    ("strings", json.dumps({"pixels": [["0.5"] * 28] * 28}).encode(), "row 0, column 0 is a JSON string"),
    ("rows of null", json.dumps({"pixels": [None] * 28}).encode(), "row 0 is a JSON null"),
    ("rows of objects", json.dumps({"pixels": [{}] * 28}).encode(), "row 0 is a JSON object"),
    ("a 401-digit integer", json.dumps({"pixels": [[0] * 28] * 28}).replace("[[0", "[[" + "9" * 401, 1)
     .encode(), "row 0, column 0 is an integer of 401 digits"),  # not an OverflowError (500)
    ("a 5000-digit integer", b'{"pixels": ' + b"9" * 5000 + b"}", "digits"),
    ("NaN", json.dumps({"pixels": [[float("nan")] * 28] * 28}).encode(), "NaN"),
    ("infinity", b'{"pixels": [' + b",".join([b"[" + b",".join([b"Infinity"] * 28) + b"]"] * 28)
     + b"]}", "NaN or infinity"),
    ("out of range", json.dumps({"pixels": [[255] * 28] * 28}).encode(), "row 0, column 0 is 255"),
    ("image not a string", b'{"image": 5}', "PNG data URL"),
    ("a JPEG data URL", b'{"image": "data:image/jpeg;base64,/9j/4AAQ"}', "PNG data URL"),
    ("bad base64", b'{"image": "data:image/png;base64,***"}', "base64"),
    ("not PNG bytes", json.dumps({"image": "data:image/png;base64," + base64.b64encode(
        b"GIF89a....").decode()}).encode(), "PNG signature"),
    ("a truncated PNG", json.dumps({"image": "data:image/png;base64," + base64.b64encode(
        _png_bytes((50, 50))[:40]).decode()}).encode(), "readable PNG"),
    ("a huge PNG", json.dumps({"image": "data:image/png;base64," + base64.b64encode(
        _png_bytes((5000, 2), "1")).decode()}).encode(), "at most 4096"),
    ("a thin PNG", json.dumps({"image": "data:image/png;base64," + base64.b64encode(
        _png_bytes((4096, 3), "1")).decode()}).encode(), "is 4096x3 pixels: too thin"),
    ("an unreadable PNG", json.dumps({"image": "data:image/png;base64," + base64.b64encode(
        b"\x89PNG\r\n\x1a\n" + b"junk" * 10).decode()}).encode(), "not a readable PNG"),
    ("a blank drawing", json.dumps({"image": "data:image/png;base64," + base64.b64encode(
        _png_bytes((280, 280))).decode()}).encode(), "blank"),
]


@pytest.mark.parametrize("what, body, message", _BAD, ids=[b[0] for b in _BAD])
@pytest.mark.parametrize("path", ["/api/predict", "/api/teach"])
def test_bad_input_is_a_400_with_one_line_of_json(client, path, what, body, message):
    r = client.post(path, data=body, content_type="application/json")
    assert r.status_code == 400
    assert list(r.json) == ["error"] and message in r.json["error"], r.json["error"]
    assert "\n" not in r.get_data(as_text=True).strip() and "Traceback" not in r.json["error"]
    assert " object at 0x" not in r.json["error"]  # no Python reprs in a message


@pytest.mark.parametrize("label", [None, -1, 10, 2.5, True, "3", [3]])
def test_teach_needs_a_label_from_0_to_9(client, label):
    body = {"pixels": _GOOD} if label is None else {"pixels": _GOOD, "label": label}
    r = client.post("/api/teach", json=body)
    assert r.status_code == 400
    assert '"label" must be an integer from 0 to 9' in r.json["error"]


def test_a_body_over_the_limit_is_refused_and_the_server_keeps_serving(client):
    r = client.post("/api/predict", data=b" " * (MAX_BODY + 1), content_type="application/json")
    assert r.status_code == 413 and "over the 1024 KB limit" in r.json["error"]
    assert client.post("/api/predict", json={"pixels": _GOOD}).status_code == 200


def test_unknown_paths_and_methods_answer_in_json(client):
    assert client.get("/api/nothing").status_code == 404
    r = client.get("/api/predict")
    assert r.status_code == 405 and "Method Not Allowed" in r.json["error"]


def test_an_unexpected_error_is_json_without_a_traceback(client, monkeypatch):
    import tinygrad_mnist.draw_page as draw_page

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(draw_page, "explain", broken)
    r = client.post("/api/predict", json={"pixels": _GOOD})
    assert r.status_code == 500 and list(r.json) == ["error"]
    assert "secret" not in r.get_data(as_text=True) and "Traceback" not in r.get_data(as_text=True)
    monkeypatch.undo()
    assert client.post("/api/predict", json={"pixels": _GOOD}).status_code == 200


def test_create_app_refuses_bad_settings(model):
    with pytest.raises(ValueError, match="lr > 0"):
        create_app(model, lr=0)
    with pytest.raises(ValueError, match="max_sessions"):
        create_app(model, max_sessions=0)


# ----------------------------------------------------------------------------- the command

def cli(*args, cwd=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "tinygrad_mnist.cli", *map(str, args)],
                          check=False, capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})


@pytest.fixture
def checkpoint(tmp_path):
    config = TrainConfig(hidden=(16,))
    model = build_model(config)
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, model, build_optimizer(config, model), config, 0, [])
    return path


def test_serve_without_a_checkpoint_says_how_to_train_one(tmp_path):
    result = cli("serve", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "tinygrad-mnist train" in result.stderr
    assert "runs/mnist/checkpoint.npz" in result.stderr


@pytest.mark.parametrize("args, message", [(["missing.npz"], "checkpoint not found"),
                                          (["CKPT", "--port", "70000"], "port must be in")])
def test_serve_mistakes_are_one_line(tmp_path, checkpoint, args, message):
    result = cli("serve", *[checkpoint if a == "CKPT" else a for a in args], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_serve_runs_a_real_server_and_never_writes_the_checkpoint(checkpoint):
    saved = checkpoint.read_bytes()
    proc = subprocess.Popen([sys.executable, "-m", "tinygrad_mnist.cli", "serve", str(checkpoint),
                             "--host", "0.0.0.0", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        assert urllib.request.urlopen(url, timeout=10).status == 200

        def post(path, body):
            req = urllib.request.Request(url + path, data=body,
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as reply:
                    return reply.status, json.load(reply)
            except urllib.error.HTTPError as e:
                return e.code, json.load(e)

        assert post("api/predict", b"{")[0] == 400
        status, body = post("api/teach", json.dumps({"pixels": _GOOD, "label": 4}).encode())
        assert status == 200 and body["after"][4] > body["before"][4]
        assert post("api/predict", json.dumps({"pixels": _GOOD}).encode())[0] == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "warning" in err and "0.0.0.0" in err and "Traceback" not in err
    assert checkpoint.read_bytes() == saved
