"""Training in the page without a browser: the run (live_training.py) on real MNIST, and its
API (train_page.py) through Flask's test client.

Each run trains for a second or two, read through the same EventStream the server sends, and
is stopped at the end of its test.
"""
import base64
import json
import math
import time

import numpy as np
import pytest

from tinygrad_mnist import config as config_module
from tinygrad_mnist.checkpoint import load_checkpoint
from tinygrad_mnist.config import TrainConfig
from tinygrad_mnist.data import load_mnist
from tinygrad_mnist.live_training import MAX_READERS, EventStream, LiveRun, RunConflict
from tinygrad_mnist.nn import MLP
from tinygrad_mnist.predict import predict_proba
from tinygrad_mnist.seeding import epoch_order
from tinygrad_mnist.server import create_app
from tinygrad_mnist.train import train
from tinygrad_mnist.train_page import PRESETS, RUNS, SAVE_DIR, live_config


@pytest.fixture(scope="module")
def data(mnist_dir):
    return load_mnist(mnist_dir)


@pytest.fixture
def runs():
    """Runs made by a test, stopped when it ends (pass or fail)."""
    made = []
    yield made
    for run in made:
        run.stop()


def start(runs, data, preset="default", epochs=None, **kwargs):
    """A run of a preset (with `epochs` if given: 20 keeps any machine busy long enough)."""
    name, config = live_config({"preset": preset, **({"epochs": epochs} if epochs else {})})
    run = LiveRun(config, data, preset=name, **kwargs).start()
    runs.append(run)
    return run


def read(stream, until, timeout=30.0):
    """The events of `stream` up to the first for which `until(event)` holds."""
    seen, end = [], time.monotonic() + timeout
    for chunk in stream:
        if chunk.startswith(b"data: "):
            seen.append(json.loads(chunk[6:]))
            if until(seen[-1]):
                return seen
        assert time.monotonic() < end, f"no such event in {timeout} s; the last: {seen[-1:]}"
    raise AssertionError(f"the stream ended first; the last event: {seen[-1:]}")


def test_the_default_presets_loss_falls_over_its_first_300_steps(runs, data):
    run = start(runs, data)
    events = read(EventStream(run), lambda e: e["step"] >= 300)
    assert {"step", "epoch", "loss", "accuracy", "lr", "grad_norms", "points"} <= set(events[-1])
    points = [p for e in events for p in e["points"]]
    loss = {step: value for step, value, *_ in points}
    early = [v for s, v in loss.items() if s <= 20]
    late = [v for s, v in loss.items() if 250 <= s <= 300]
    assert early and late and max(late) < 0.5 < min(early)
    assert all(len(p) == 4 + 3 for p in points)  # step, loss, accuracy, lr, 3 layers' gradients
    assert all(e["warning"] is None for e in events)  # a good learning rate: no warning


def test_the_lr_too_high_preset_is_flagged_in_an_event(runs, data):
    run = start(runs, data, "lr-too-high")
    events = read(EventStream(run), lambda e: e["warning"] is not None and "dead" in e["warning"])
    assert "2.30 = ln 10" in events[-1]["warning"] and "learning rate 1)" in events[-1]["warning"]
    assert min(events[-1]["grad_norms"]) == 0  # what gave it away: no gradient at all


@pytest.mark.parametrize("settings, says", [
    ({"hidden": [], "lr": 10}, "far above 2.30 = ln 10"),  # no ReLU to die: it overshoots
    ({"lr": 1e-5}, "still about 2.30 = ln 10"),
])
def test_other_learning_rates_too_high_or_too_low_are_flagged(runs, data, settings, says):
    name, config = live_config(settings)
    run = LiveRun(config, data, preset=name).start()
    runs.append(run)
    events = read(EventStream(run), lambda e: e["warning"] is not None)
    assert says in events[-1]["warning"] and min(events[-1]["grad_norms"]) > 0


def test_pause_holds_the_step_step_takes_one_batch_and_resume_goes_on(runs, data):
    run = start(runs, data)
    stream = EventStream(run)
    read(stream, lambda e: e["step"] > 20)
    paused = run.pause()
    assert paused["state"] == "paused"
    held = paused["step"]
    end = time.monotonic() + 2
    while time.monotonic() < end:  # the page keeps reading; the step must not move
        next(stream)
        assert run.step == held
    result = run.step_one()
    assert result["step"] == run.step == held + 1 and result["state"] == "paused"
    epoch, at = divmod(held, run.steps_per_epoch)
    order = epoch_order(run.config.seed, epoch, len(data.train_x))
    batch = order[at * 128:(at + 1) * 128]
    assert result["labels"] == data.train_y[batch[:16]].tolist()  # the next batch in order
    assert math.isfinite(result["loss"]) and math.isfinite(result["loss_after"])
    images = np.frombuffer(base64.b64decode(result["images"]), np.uint8)
    assert images.shape == (16 * 784,)
    assert result["tiles_before"] != result["tiles_after"] and result["change_scale"] > 0
    assert run.pause(False)["state"] == "running"  # what the page's button then says
    read(stream, lambda e: e["step"] > held + 10)
    assert run.step_one()["state"] == "paused"  # a step asked of a running run pauses it
    assert run.pause(False)["state"] == "running"


def test_stop_ends_the_stream(runs, data):
    run = start(runs, data)
    stream = EventStream(run)
    read(stream, lambda e: e["step"] > 0)
    assert run.stop()["state"] == "stopped"
    rest = [json.loads(c[6:]) for c in stream if c.startswith(b"data: ")]  # ends by itself
    assert rest[-1]["done"] and rest[-1]["state"] == "stopped"
    assert rest[-1]["reason"] == "stopped by you"


def test_a_run_stops_without_a_reader_and_at_its_time_limit(runs, data):
    alone = start(runs, data, reader_timeout=1.0)
    watched = start(runs, data, epochs=20, reader_timeout=1.0)
    stream = EventStream(watched)
    read(stream, lambda e: e["seconds"] > 2.0)  # read for 2 s: twice the timeout
    assert watched.alive
    stream.close()
    assert alone.join(10)["state"] == "stopped"
    assert alone.reason == "stopped: no page watched it for 1 s"
    assert watched.join(10)["state"] == "stopped"
    limited = start(runs, data, max_seconds=0.5)
    read(EventStream(limited), lambda e: e["done"])
    assert limited.reason == "stopped at its time limit, 0.5 s"


def test_the_stream_stays_under_200_KB_per_second(runs, data):
    run = start(runs, data, epochs=20)
    begun, size, events = time.monotonic(), 0, 0
    for chunk in EventStream(run):  # the first event (about 35 KB) included
        size, events = size + len(chunk), events + chunk.startswith(b"data: ")
        if time.monotonic() - begun > 3:
            break
    seconds = time.monotonic() - begun
    assert size / seconds <= 200_000, f"{size / seconds / 1000:.0f} KB/s"
    assert events > 0


def test_at_most_max_readers_pages_stream_a_run(runs, data):
    run = start(runs, data)
    streams = [EventStream(run) for _ in range(MAX_READERS)]
    with pytest.raises(RunConflict, match="watching this run already"):
        EventStream(run)
    streams[0].close()
    streams.append(EventStream(run))
    assert run.readers == MAX_READERS


def test_the_run_reaches_the_same_weights_as_train(data, tmp_path):
    """The same pieces in the same order: shuffling, distortions, dropout, schedule, steps."""
    config = TrainConfig(hidden=(32,), epochs=2, train_limit=1000, batch_size=100, dropout=0.1,
                         shift=2)
    run = LiveRun(config, data).start()
    assert run.join(60)["state"] == "finished"
    cli = train(config, tmp_path, data=data, progress=False, log=lambda _: None)
    for name, value in cli.model.state_dict().items():
        assert np.array_equal(run.model.state_dict()[name], value), name
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in run.history] == \
        [{k: v for k, v in row.items() if k != "seconds"} for row in cli.history]


def test_a_save_is_the_runs_model_in_a_new_file_never_over_an_old_one(runs, data, tmp_path):
    run = start(runs, data)
    read(EventStream(run), lambda e: e["step"] > 5)
    run.pause()
    path = run.save(tmp_path)
    assert path.parent.parent == tmp_path and path.name == f"step-{run.step}.npz"
    saved = load_checkpoint(path)
    epochs, at = divmod(run.step, run.steps_per_epoch)
    assert saved.epoch == epochs == len(saved.history)
    assert saved.partial.step == at if at else saved.partial is None  # where in the epoch
    model = run.copy_model()
    for name, value in model.state_dict().items():
        assert np.array_equal(saved.model.state_dict()[name], value)
    with pytest.raises(RunConflict, match="exists already"):
        run.save(tmp_path)
    run.step_one()
    assert run.save(tmp_path) != path


# ------------------------------------------------------------------ the API

@pytest.fixture(scope="module")
def app(mnist_dir, tmp_path_factory):
    app = create_app(MLP([784, 16, 10], seed=0), data_dir=mnist_dir)
    app.config[SAVE_DIR] = tmp_path_factory.mktemp("saves")
    yield app
    if app.extensions[RUNS].current is not None:
        app.extensions[RUNS].current.stop()


@pytest.fixture
def client(app):
    yield app.test_client()
    run = app.extensions[RUNS].current
    if run is not None:
        run.stop()


def test_presets_have_settings_and_what_to_watch_for(client):
    presets = client.get("/api/train/presets").json["presets"]
    assert [p["name"] for p in presets] == list(PRESETS) == \
        ["default", "lr-too-high", "lr-too-low", "linear", "tiny", "adam"]
    for p in presets:
        assert set(p["settings"]) == {"hidden", "lr", "optimizer", "batch_size", "epochs"}
        assert p["about"].count(". ") >= 1 and len(p["about"]) > 150
    settings = {p["name"]: p["settings"] for p in presets}
    assert settings["default"]["hidden"] == [128, 64] and settings["linear"]["hidden"] == []
    assert settings["tiny"]["hidden"] == [16] and settings["adam"]["optimizer"] == "adam"


@pytest.mark.parametrize("body, field", [
    ({"preset": "nope"}, '"preset" must be one of default, lr-too-high'),
    ({"preset": 3}, '"preset" must be one of'),
    ({"hidden": [0]}, '"hidden" must be a list of 0 to 4 hidden layer sizes'),
    ({"hidden": [8] * 5}, '"hidden" must be'),
    ({"hidden": [4096]}, '"hidden" must be'),
    ({"hidden": "128,64"}, '"hidden" must be'),
    ({"lr": 0}, '"lr" must be a number greater than 0'),
    ({"lr": -0.1}, '"lr" must be'),
    ({"lr": 11}, '"lr" must be'),
    ({"lr": "0.1"}, '"lr" must be'),
    ('{"lr": NaN}', '"lr" must be a number greater than 0 and at most 10; got nan'),
    ('{"lr": 1' + "0" * 400 + "}", '"lr" must be a number greater than 0 and at most 10; got 1000'),
    ({"optimizer": "rmsprop"}, "\"optimizer\" must be 'sgd' or 'adam'"),
    ({"batch_size": 0}, '"batch_size" must be an integer from 1 to 1024'),
    ({"batch_size": True}, '"batch_size" must be'),
    ({"epochs": 21}, '"epochs" must be an integer from 1 to 20'),
    ({"epochs": 2.5}, '"epochs" must be'),
    ({"colour": "red"}, "unknown field \"colour\""),
])
def test_bad_fields_get_a_400_naming_the_field(client, body, field):
    if isinstance(body, str):
        reply = client.post("/api/train/start", data=body, content_type="application/json")
    else:
        reply = client.post("/api/train/start", json=body)
    assert reply.status_code == 400
    error = reply.json["error"]
    assert field in error and "\n" not in error


def test_too_many_parameters_get_a_400(client, monkeypatch):
    monkeypatch.setattr(config_module, "_physical_memory", lambda: 1 << 20)
    reply = client.post("/api/train/start", json={"hidden": [2048, 2048]})
    assert reply.status_code == 400 and "parameters" in reply.json["error"]


def test_one_run_per_server_and_only_its_browser_controls_it(app, client):
    other = app.test_client()  # another browser: its own session cookie
    for path in ("/api/train/pause", "/api/train/stop"):
        assert client.post(path, json={}).status_code == 404  # no run yet
    assert client.get("/api/train/events").status_code == 404
    reply = client.post("/api/train/start", json={"preset": "tiny"})
    assert reply.status_code == 200 and reply.json["preset"] == "tiny"
    run_id = reply.json["run"]
    for who in (client, other):
        second = who.post("/api/train/start", json={})
        assert second.status_code == 409 and "going already" in second.json["error"]
    assert other.get("/api/train/state").json["run"] == run_id  # anyone may watch
    assert client.get("/api/train/state").json["yours"] is True
    assert other.get("/api/train/state").json["yours"] is False
    for path in ("/api/train/pause", "/api/train/resume", "/api/train/step", "/api/train/stop",
                 "/api/train/save"):
        refused = other.post(path, json={})
        assert refused.status_code == 403 and "only the browser that started" in refused.json["error"]
    assert client.post("/api/train/pause", json={}).json["state"] == "paused"
    assert client.post("/api/train/step", json={}).json["run"] == run_id
    assert client.post("/api/train/resume", json={}).json["state"] in ("running", "paused")
    assert client.post("/api/train/stop", json={}).json["state"] == "stopped"
    assert client.post("/api/train/pause", json={}).status_code == 409  # it has ended
    assert other.post("/api/train/start", json={"preset": "linear"}).status_code == 200


def test_the_event_stream_over_http(client):
    client.post("/api/train/start", json={"preset": "linear"})
    reply = client.get("/api/train/events", buffered=False)
    try:
        assert reply.status_code == 200 and reply.mimetype == "text/event-stream"
        assert reply.headers["Cache-Control"] == "no-cache"
        chunks = iter(reply.response)
        first = next(c for c in chunks if c.startswith(b"data: "))
        event = json.loads(first[6:])
        assert {"step", "epoch", "loss", "settings", "digit_images", "layers"} <= set(event)
        assert event["layers"] == ["784→10"] and event["tile_units"] == 10
    finally:
        reply.close()  # the WSGI server's close: the page's place is free again
    assert client.application.extensions[RUNS].current.readers == 0


def test_use_this_model_makes_it_this_browsers_model(app, client, data):
    other = app.test_client()
    client.post("/api/train/start", json={"preset": "default"})
    client.post("/api/train/step", json={})  # paused after one step: the weights stay put
    run = app.extensions[RUNS].current
    digit = data.val_x[7].reshape(28, 28)
    base = other.post("/api/predict", json={"pixels": digit.tolist()}).json["probs"]
    used = other.post("/api/train/use", json={})  # a watcher may take a copy too
    assert used.status_code == 200 and used.json["sizes"] == [784, 128, 64, 10]
    probs = other.post("/api/predict", json={"pixels": digit.tolist()}).json["probs"]
    expected = predict_proba(run.copy_model(), data.val_x[7:8])[0]
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert not np.allclose(probs, base, atol=1e-3)
    assert client.post("/api/predict", json={"pixels": digit.tolist()}).json["probs"] == base


def test_nothing_is_written_until_save_and_save_writes_a_checkpoint(app, client):
    folder = app.config[SAVE_DIR]
    client.post("/api/train/start", json={"preset": "linear"})
    client.post("/api/train/step", json={})
    assert list(folder.iterdir()) == []
    reply = client.post("/api/train/save", json={})
    assert reply.status_code == 200
    saved = load_checkpoint(reply.json["saved"])
    assert saved.config.hidden == () and saved.model.sizes == [784, 10]
    again = client.post("/api/train/save", json={})
    assert again.status_code == 409 and "exists already" in again.json["error"]


def test_the_page_without_mnist_says_how_to_get_it(tmp_path):
    app = create_app(MLP([784, 16, 10], seed=0), data_dir=tmp_path)
    client = app.test_client()
    page = client.get("/train").get_data(as_text=True)
    assert 'id="no-data"' in page and "tinygrad-mnist train" in page
    assert '<button id="train-start" type="button" disabled>' in page
    reply = client.post("/api/train/start", json={"preset": "default"})
    assert reply.status_code == 400 and "tinygrad-mnist train" in reply.json["error"]
    assert "\n" not in reply.json["error"]


def test_the_page_keeps_to_the_content_security_policy(client):
    page = client.get("/train").get_data(as_text=True)
    assert "style=" not in page and "<style" not in page
    assert all('src="' in tag for tag in page.split("<script")[1:])  # no inline script
    for ident in ("preset", "train-start", "train-pause", "train-step", "train-stop", "use-model",
                  "status", "loss-chart", "weights", "digits"):
        assert f'id="{ident}"' in page
    assert client.get("/static/vendor/uplot/uPlot.iife.min.js").status_code == 200


def test_a_page_that_goes_away_frees_its_place_and_the_run_stops(mnist_dir):
    """Over real HTTP (waitress, as `serve` runs it): closing the connection is noticed."""
    import http.client
    import socket
    import threading

    from tinygrad_mnist.server import make_server
    from tinygrad_mnist.train_page import READER_TIMEOUT_KEY
    app = create_app(MLP([784, 16, 10], seed=0), data_dir=mnist_dir)
    app.config[READER_TIMEOUT_KEY] = 1.0
    server = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        api = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=30)
        api.request("POST", "/api/train/start", '{"preset": "default"}',
                    {"Content-Type": "application/json"})
        assert api.getresponse().status == 200
        api.close()  # (an open connection would keep the server's loop running at the end)
        page = socket.create_connection(("127.0.0.1", server.effective_port), timeout=30)
        page.sendall(b"GET /api/train/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        received = b""
        while b"data: " not in received:
            received += page.recv(65536)
        assert received.startswith(b"HTTP/1.1 200") and b"text/event-stream" in received
        run = app.extensions[RUNS].current
        assert run.readers == 1
        page.close()  # the tab is closed
        assert run.join(15)["state"] == "stopped"
        assert run.reason == "stopped: no page watched it for 1 s" and run.readers == 0
    finally:
        server.close()
        thread.join(timeout=10)
