"""The graph explorer served: POST /api/graph and /api/graph/update through Flask's test client,
and /graph in a real browser (headless Chromium), stepped backward to the end, where every
gradient it shows must be the API's, which is the engine's."""
import base64
import io
import json
import threading
import urllib.request

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tinygrad_mnist.explorer import explore_digit, explore_expression
from tinygrad_mnist.nn import MLP
from tinygrad_mnist.server import create_app, make_server

EXPRESSION = {"expression": "tanh(a*b + c)", "values": {"a": 2, "b": -3, "c": 10}}


@pytest.fixture(scope="module")
def model():
    return MLP([784, 32, 16, 10], seed=0)  # untrained: every number is checked against the engine


@pytest.fixture(scope="module")
def app(model, mnist_dir):
    return create_app(model, lr=0.05, data_dir=mnist_dir)


@pytest.fixture
def client(app):
    return app.test_client()


def digit():
    x = np.zeros((28, 28), np.float32)
    x[5:23, 13:16] = 1
    return x


# ----------------------------------------------------------------------------- the API

def test_an_expression_answers_with_everything_the_issue_names(client, dot_binary):
    r = client.post("/api/graph", json=EXPRESSION)
    assert r.status_code == 200, r.json
    body = r.json
    expected = explore_expression(EXPRESSION["expression"], EXPRESSION["values"])
    for key in ("nodes", "forward_order", "backward_steps", "loss", "probs", "svg"):
        assert key in body
    for n, e in zip(body["nodes"], expected["nodes"], strict=True):
        assert {"id", "op", "name", "param", "shape", "value", "grad", "value_norm", "grad_norm"} <= set(n)
        assert (n["id"], n["op"], n["name"], n["param"], n["value"], n["grad"]) == \
            (e["id"], e["op"], e["name"], e["param"], e["value"], e["grad"])  # exact, through JSON
    assert body["forward_order"] == expected["forward_order"]
    step = body["backward_steps"][0]
    assert set(step) >= {"node", "upstream", "rule", "to_inputs"} and step["upstream"] == 1.0
    assert set(step["to_inputs"][0]) >= {"node", "grad_norm"}
    assert body["svg"].startswith("<svg") and 'data-node="0"' in body["svg"]


def test_a_digit_by_pixels_is_the_engines_trace_of_this_browsers_model(client, model):
    r = client.post("/api/graph", json={"pixels": digit().tolist(), "label": 3})
    assert r.status_code == 200, r.json
    body, expected = r.json, explore_digit(model, digit(), 3)
    assert body["label"] == 3 and body["label_source"] == "given"
    assert np.float32(body["loss"]) == expected["loss"]
    for n, e in zip(body["nodes"], expected["nodes"], strict=True):
        assert n["grad_norm"] == e["grad_norm"] and n["param"] == e["param"]
        if "grads" in e:
            np.testing.assert_array_equal(np.float32(n["grads"]), e["grads"])  # bit for bit
    assert [s["node"] for s in body["backward_steps"]] == [s["node"] for s in expected["backward_steps"]]
    no_label = client.post("/api/graph", json={"pixels": digit().tolist()}).json
    assert no_label["label"] == no_label["prediction"] and no_label["label_source"] == "predicted"


def test_a_test_digit_comes_with_its_true_label(client, mnist_dir):
    from tinygrad_mnist.data import load_mnist
    data = load_mnist(mnist_dir, download=False)
    body = client.post("/api/graph", json={"test_index": 5}).json
    assert body["label"] == int(data.test_y[5]) and body["label_source"] == "true"
    assert body["test_index"] == 5
    chosen = client.post("/api/graph", json={"test_index": 5, "label": 0}).json
    assert chosen["label"] == 0 and chosen["label_source"] == "given"


BAD = [
    ({"expression": "foo(a)", "values": {"a": 1}}, "unknown function foo"),
    ({"expression": "open('x')", "values": {}}, "unknown function open"),
    ({"expression": "__import__('os')", "values": {}}, "unknown function __import__"),
    ({"expression": "a.__class__", "values": {"a": 1}}, "an attribute (x.y) is not allowed"),
    ({"expression": "a ** 1000", "values": {"a": 1}}, "exponents may be at most 100"),
    ({"expression": "a+" * 250 + "a", "values": {"a": 1}}, "501 characters long; at most 500"),
    ({"expression": "-" * 60 + "a", "values": {"a": 1}}, "nests 61 operations deep; at most 50"),
    ({"expression": "a * b", "values": {"a": 1}}, "no value for b"),
    ({"expression": "a\u0000", "values": {"a": 1}}, "contains a null character"),
    ({"expression": "a * b"}, "no value for a, b"),
    ({"expression": "a", "values": {"a": 1, "q": 2}}, "q has a value but is not in the expression"),
    ({"expression": "a", "values": {"a": None}}, "the value of a must be a number, got NoneType"),
    ({"expression": "a", "values": {"a": 1}, "label": 3}, "unknown field 'label' for an expression"),
    ({"test_index": 10_000}, '"test_index" must be an integer from 0 to 9999'),
    ({"test_index": True}, '"test_index" must be an integer'),
    ({"test_index": 1, "label": 10}, '"label" must be an integer from 0 to 9'),
    ({"test_index": 1, "pixels": []}, 'give exactly one of "image"'),
    ({}, 'give exactly one of "image" (a PNG data URL), "pixels"'),
    ({"pixels": [[0.5] * 28] * 27}, '"pixels" must be 28 rows of 28 numbers'),
]


@pytest.mark.parametrize("payload, message", BAD, ids=[m[:30] for _, m in BAD])
def test_bad_input_is_a_400_with_one_line_saying_why(client, payload, message):
    r = client.post("/api/graph", json=payload)
    assert r.status_code == 400 and set(r.json) == {"error"}
    assert message in r.json["error"] and "\n" not in r.json["error"]


def test_nan_and_infinite_values_are_refused(client):
    for word in ("NaN", "Infinity"):  # what Python's JSON reader accepts beyond the standard
        body = '{"expression": "a * 2", "values": {"a": ' + word + "}}"
        r = client.post("/api/graph", data=body, content_type="application/json")
        assert r.status_code == 400 and "it must be a finite number" in r.json["error"]


def test_update_steps_this_browsers_own_copy_only(app, model):
    before = {k: v.tobytes() for k, v in model.state_dict().items()}
    mine, other = app.test_client(), app.test_client()
    payload = {"pixels": digit().tolist(), "label": 3}
    first = mine.post("/api/graph", json=payload).json
    r = mine.post("/api/graph/update", json={**payload, "lr": 0.5})
    assert r.status_code == 200, r.json
    step = r.json
    assert step["lr"] == 0.5 and step["label"] == 3
    assert step["loss_before"] == pytest.approx(first["loss"], rel=1e-6)
    assert step["loss_after"] < step["loss_before"] and step["probs_after"][3] > step["probs_before"][3]
    assert mine.post("/api/graph", json=payload).json["loss"] == step["loss_after"] == step["graph"]["loss"]
    assert other.post("/api/graph", json=payload).json["loss"] == first["loss"]  # its own model
    assert {k: v.tobytes() for k, v in model.state_dict().items()} == before  # the base: never
    assert mine.post("/api/graph/update", json={**payload, "lr": 0}).status_code == 400
    huge = mine.post("/api/graph/update", content_type="application/json",  # too large for a float
                     data=json.dumps(payload)[:-1] + ', "lr": 1' + "0" * 400 + "}")
    assert huge.status_code == 400 and huge.json["error"].startswith('"lr" must be a number in (0, ')


def test_update_of_an_expression_moves_its_values(client):
    r = client.post("/api/graph/update", json={**EXPRESSION, "lr": 5})
    assert r.status_code == 200, r.json
    body = r.json
    fresh = explore_expression(EXPRESSION["expression"], EXPRESSION["values"])
    grads = {n["name"]: n["grad"] for n in fresh["nodes"] if n["kind"] == "input"}
    assert body["values_after"] == {k: v - 5 * grads[k] for k, v in EXPRESSION["values"].items()}
    assert body["after"] < body["before"] and body["graph"]["values"] == body["values_after"]


def test_the_page_has_its_controls_and_no_inline_script_or_style(client):
    r = client.get("/graph")
    assert r.status_code == 200
    page = r.get_data(as_text=True)
    for name in ("step-forward", "step-backward", "run-all", "reset-steps", "update", "expression",
                 "expression-go", "test-index", "node-detail", "graph", "to-draw"):
        assert f'id="{name}"' in page, name
    assert 'href="/"' in page and "<script>" not in page and "style=" not in page
    assert 'max="9999"' in page  # the test set is at hand


def test_without_mnist_the_page_offers_the_expression_and_says_how_to_get_digits(model, tmp_path):
    client = create_app(model, data_dir=tmp_path).test_client()  # an empty folder: no MNIST
    page = client.get("/graph").get_data(as_text=True)
    assert 'id="test-index"' not in page and "Test digits need MNIST" in page
    r = client.post("/api/graph", json={"test_index": 0})
    assert r.status_code == 400 and "MNIST is not available to this server" in r.json["error"]
    assert client.post("/api/graph", json=EXPRESSION).status_code == 200


def test_mnist_put_in_place_while_serving_is_found_without_a_restart(model, tmp_path, mnist_dir,
                                                                     monkeypatch):
    import shutil

    from tinygrad_mnist import sessions
    monkeypatch.setattr(sessions, "MNIST_RETRY", 0.0)
    client = create_app(model, data_dir=tmp_path).test_client()
    assert client.post("/api/graph", json={"test_index": 0}).status_code == 400
    for f in mnist_dir.iterdir():  # what `tinygrad-mnist train` would have downloaded
        shutil.copy(f, tmp_path / f.name)
    assert client.post("/api/graph", json={"test_index": 0}).status_code == 200


# ----------------------------------------------------------------------------- in Chromium

@pytest.fixture(scope="module")
def served(model, mnist_dir):
    app = create_app(model, data_dir=mnist_dir)
    server = make_server(app, "127.0.0.1", 0)  # waitress, as `serve` runs it
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.effective_port}"
    server.close()  # the browser's idle keep-alive connections end by themselves (daemon thread)
    thread.join(timeout=1)


def api(url, payload):
    request = urllib.request.Request(f"{url}/api/graph", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


@pytest.fixture
def page(browser, served):
    browser.set_window_size(1280, 1000)
    browser.get(f"{served}/graph")
    browser.execute_script("sessionStorage.clear()")
    browser.get_log("browser")  # start with an empty console
    yield browser
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def shown(browser) -> int:
    """How many graphs the page has shown so far (data-shown counts them)."""
    return int(browser.execute_script("return document.getElementById('explorer').dataset.shown || 0"))


def ready(browser, source, after=0):
    """Wait until the page shows a graph of `source`, the first after `after` were shown."""
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(browser, 30).until(lambda b: b.execute_script(
        "const e = document.getElementById('explorer');"
        "return e.dataset.ready === '1' && e.dataset.source === arguments[0] && "
        "Number(e.dataset.shown) > arguments[1]", source, after))


def step_backward_to_the_end(browser, answer):
    """Press Step backward until it is disabled; at each step the current node is the walk's,
    and the gradient the panel shows is the API's (the number, or the norm of a tensor's)."""
    from selenium.webdriver.common.by import By
    button = browser.find_element(By.ID, "step-backward")
    seen = []
    while button.is_enabled():
        button.click()
        step = answer["backward_steps"][len(seen)]
        current = browser.find_elements(By.CSS_SELECTOR, "#graph g.node.current")
        assert [g.get_attribute("data-node") for g in current] == [str(step["node"])]
        field = browser.find_element(By.CSS_SELECTOR, "#node-detail [data-field=grad]")
        n = answer["nodes"][step["node"]]
        if n["grad"] is not None:
            assert field.get_attribute("data-kind") == "number"
            assert float(field.get_attribute("data-exact")) == n["grad"]
            assert float(field.text) == pytest.approx(n["grad"], rel=1e-5)
        else:
            assert field.get_attribute("data-kind") == "norm"
            assert float(field.get_attribute("data-exact")) == n["grad_norm"]
        seen.append(step["node"])
    assert seen == [s["node"] for s in answer["backward_steps"]]  # the engine's order, every step
    return seen


def test_an_expression_stepped_backward_shows_the_apis_gradients(page, served):
    from selenium.webdriver.common.by import By
    box = page.find_element(By.ID, "expression")
    box.clear()
    box.send_keys("tanh(a*b + c)")
    values = page.find_element(By.ID, "values")
    values.clear()
    values.send_keys("a=2, b=-3, c=10")
    before = shown(page)
    page.find_element(By.ID, "expression-go").click()
    ready(page, "expression", before)
    answer = api(served, EXPRESSION)
    assert len(page.find_elements(By.CSS_SELECTOR, "#graph svg g.node[data-node]")) == len(answer["nodes"])
    assert step_backward_to_the_end(page, answer) == [5, 4, 2]
    assert not page.find_element(By.ID, "step-forward").is_enabled()
    page.find_element(By.CSS_SELECTOR, "g.node[data-node='0']").click()  # a: a leaf, after the walk
    field = page.find_element(By.CSS_SELECTOR, "#node-detail [data-field=grad]")
    assert float(field.get_attribute("data-exact")) == answer["nodes"][0]["grad"]
    assert "d(a·b)/da = b" in page.find_element(By.ID, "step-detail").text
    assert len(page.find_elements(By.CSS_SELECTOR, "#gradchecks .gradcheck.ok")) == 3
    page.find_element(By.ID, "reset-steps").click()
    assert page.find_element(By.ID, "step-forward").is_enabled()
    assert "Nothing computed yet" in page.find_element(By.ID, "step-info").text


def test_a_test_digit_stepped_backward_folded_and_updated(page, served):
    from selenium.webdriver.common.by import By
    index = page.find_element(By.ID, "test-index")
    index.clear()
    index.send_keys("3")
    ready(page, "digit")  # test digit 0, shown first
    before = shown(page)
    page.find_element(By.ID, "digit-go").click()
    ready(page, "digit", before)
    answer = api(served, {"test_index": 3})
    assert page.execute_script("return document.getElementById('explorer').dataset.source") == "digit"
    step_backward_to_the_end(page, answer)
    badges = page.find_elements(By.CSS_SELECTOR, "#gradchecks .gradcheck")
    assert [b.get_attribute("data-node") for b in badges] == [str(b["node"]) for b in answer["gradcheck"]]
    # a hidden neuron expands into its sum: click a square of the first layer's picture
    first = answer["forward_order"][0]
    page.find_element(By.CSS_SELECTOR, f"g.node[data-node='{first}']").click()
    page.find_element(By.CSS_SELECTOR, "#node-detail img.x-grid").click()
    assert "Σ" in page.find_element(By.ID, "neuron").text
    # a layer folds into one box and unfolds again
    cluster = page.find_element(By.CSS_SELECTOR, "#graph g.cluster[data-cluster='1']")
    cluster.click()
    assert not page.find_element(By.CSS_SELECTOR, f"g.node[data-node='{first}']").is_displayed()
    page.find_element(By.CSS_SELECTOR, "#graph g.cluster[data-cluster='1']").click()
    assert page.find_element(By.CSS_SELECTOR, f"g.node[data-node='{first}']").is_displayed()
    before = shown(page)
    page.find_element(By.ID, "update").click()
    ready(page, "digit", before)
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(page, 30).until(lambda b: b.find_element(By.ID, "update-result").is_displayed())
    assert "the loss went from" in page.find_element(By.ID, "update-result").text
    page.find_element(By.ID, "to-draw").click()
    assert page.current_url == f"{served}/"


def drawn_one_url() -> str:
    img = Image.new("RGBA", (280, 280), (0, 0, 0, 0))  # as the draw page's canvas: ink on nothing
    ImageDraw.Draw(img).line([(140, 40), (140, 240)], fill="black", width=22)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_the_drawing_left_by_the_draw_page_is_shown(page, served):
    from selenium.webdriver.common.by import By
    page.execute_script("sessionStorage.setItem('tinygrad_mnist.drawing', arguments[0])", drawn_one_url())
    page.get(f"{served}/graph")
    ready(page, "digit")
    assert page.find_element(By.ID, "drawing-go").is_displayed()
    assert "the network's own answer" in page.find_element(By.ID, "outcome").text
    page.execute_script("sessionStorage.clear()")
