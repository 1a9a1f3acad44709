"""The training page in a real browser: headless Chromium starts the default preset on real
MNIST, served by waitress as `serve` runs it, pauses it, steps one batch, uses the model, and
then draws on the draw page, which answers with that model.
"""
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from test_page import draw, shown_prediction, vertical_stroke

from tinygrad_mnist.data import load_mnist
from tinygrad_mnist.nn import MLP
from tinygrad_mnist.predict import predict_proba
from tinygrad_mnist.server import create_app, make_server
from tinygrad_mnist.train_page import RUNS, SAVE_DIR

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site(mnist_dir, tmp_path_factory):
    """An untrained base model: whatever the draw page gets right comes from the used model."""
    app = create_app(MLP([784, 16, 10], seed=0), data_dir=mnist_dir)
    app.config[SAVE_DIR] = tmp_path_factory.mktemp("saves")
    server = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.effective_port}/", app
    if app.extensions[RUNS].current is not None:
        app.extensions[RUNS].current.stop()
    server.close()
    thread.join(timeout=10)


def shown_step(browser) -> int:
    from selenium.webdriver.common.by import By
    found = re.search(r"step (\d+)", browser.find_element(By.ID, "status").text)
    return int(found.group(1)) if found else -1


def test_start_pause_step_and_use_the_model_on_the_draw_page(browser, site, mnist_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    url, app = site
    browser.get(url + "train")
    browser.get_log("browser")
    assert Select(browser.find_element(By.ID, "preset")).first_selected_option \
        .get_attribute("value") == "default"
    assert "784-128-64-10" in browser.find_element(By.ID, "preset-about").text or \
        "Nesterov" in browser.find_element(By.ID, "preset-about").text

    browser.find_element(By.ID, "train-start").click()
    WebDriverWait(browser, 10).until(  # the bar: within 10 s
        lambda b: shown_step(b) > 0 and int(b.find_element(By.ID, "loss-chart")
                                             .get_attribute("data-points")) > 0)
    WebDriverWait(browser, 10).until(
        lambda b: len(b.find_elements(By.CSS_SELECTOR, "#weights canvas")) == 16 and all(
            a.text != "?" for a in b.find_elements(By.CSS_SELECTOR, "#digits .answer")))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#digits .digit-card")) == 16
    WebDriverWait(browser, 30).until(  # a first validation (300 steps in): it reads digits now
        lambda b: "validation accuracy" in b.find_element(By.ID, "numbers").text)

    browser.find_element(By.ID, "train-pause").click()
    WebDriverWait(browser, 10).until(lambda b: "paused" in b.find_element(By.ID, "status").text)
    assert browser.find_element(By.ID, "train-pause").text == "Resume"
    held = shown_step(browser)
    browser.find_element(By.ID, "train-step").click()
    WebDriverWait(browser, 10).until(
        lambda b: b.find_element(By.ID, "step-result").is_displayed() and shown_step(b) == held + 1)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#step-change canvas")) == 16
    assert "before the update" in browser.find_element(By.ID, "step-text").text

    browser.find_element(By.ID, "use-model").click()
    WebDriverWait(browser, 10).until(
        lambda b: f"at step {held + 1}" in b.find_element(By.ID, "message").text)
    used = app.extensions[RUNS].current.copy_model()  # paused: the weights the page took
    out = ROOT / "docs" / "train_page.png" if os.environ.get("UPDATE_SCREENSHOT") \
        else tmp_path / "train_page.png"
    size = browser.get_window_size()
    browser.set_window_size(1280, 1900)  # the whole page, the step's close-up included
    try:
        assert browser.save_screenshot(str(out))
    finally:
        browser.set_window_size(size["width"], size["height"])
    browser.find_element(By.ID, "train-stop").click()
    WebDriverWait(browser, 10).until(lambda b: "stopped by you" in b.find_element(By.ID, "status").text)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors

    browser.get(url)  # the draw page, in the same browser: it now answers with the used model
    draw(browser, vertical_stroke())
    assert shown_prediction(browser) == "1"
    digit = load_mnist(mnist_dir).val_x[3]
    probs = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('/api/predict', {method: 'POST', headers: {'Content-Type': 'application/json'},"
        " body: JSON.stringify({pixels: arguments[0]})}).then(r => r.json()).then(d => done(d.probs));",
        digit.reshape(28, 28).tolist())
    np.testing.assert_allclose(probs, predict_proba(used, digit[None])[0], atol=1e-5)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
