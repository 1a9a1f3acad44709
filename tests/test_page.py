"""The draw-a-digit page in a real browser: headless Chromium draws strokes with the pointer.

One small model is trained on real MNIST for the whole module (about a second), served on a
free port by waitress (as `serve` runs it), and the page is driven as a user drives it.
"""
import itertools
import math
import threading
from pathlib import Path

import pytest

from tinygrad_mnist.checkpoint import load_checkpoint
from tinygrad_mnist.config import TrainConfig
from tinygrad_mnist.server import create_app, make_server
from tinygrad_mnist.train import train

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def page_url(mnist_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    config = TrainConfig(hidden=(128, 64), epochs=2, train_limit=20000, val_size=1000)
    train(config, run, data_dir=mnist_dir, progress=False, log=lambda _: None)
    app = create_app(load_checkpoint(run / "checkpoint.npz").model, data_dir=mnist_dir)
    server = make_server(app, "127.0.0.1", 0)  # waitress, as `serve` runs it
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.effective_port}/"
    server.close()
    thread.join(timeout=10)


@pytest.fixture
def page(browser, page_url):
    browser.get(page_url)
    browser.get_log("browser")  # start each test with an empty console
    yield browser
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def draw(browser, points):
    """One stroke through `points` (x, y offsets from the canvas centre) with the pointer."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    canvas = browser.find_element(By.ID, "canvas")
    actions = ActionChains(browser, duration=0).move_to_element_with_offset(canvas, *points[0])
    actions.click_and_hold()
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        actions.move_by_offset(x1 - x0, y1 - y0)
    actions.release().perform()


def shown_prediction(browser) -> str:
    """The prediction on the page once the answer to the latest drawing has arrived."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(browser, 20).until(
        lambda b: b.find_element(By.ID, "prediction").get_attribute("data-busy") == "0")
    return browser.find_element(By.ID, "prediction").text


def vertical_stroke():
    return [(0, y) for y in range(-90, 91, 10)]


def loop():
    return [(round(65 * math.sin(t * math.pi / 18)), round(-90 * math.cos(t * math.pi / 18)))
            for t in range(37)]


def test_page_has_the_controls_with_stable_ids(page):
    from selenium.webdriver.common.by import By
    ids = ["canvas", "clear", "prediction", "reset", *(f"teach-{d}" for d in range(10))]
    for name in ids:
        assert page.find_element(By.ID, name).is_displayed(), name
    canvas = page.find_element(By.ID, "canvas")
    assert (canvas.get_attribute("width"), canvas.get_attribute("height")) == ("280", "280")


@pytest.mark.parametrize("stroke, digit", [(vertical_stroke, "1"), (loop, "0")])
def test_drawn_digit_is_predicted(page, stroke, digit):
    draw(page, stroke())
    assert shown_prediction(page) == digit


def test_teach_raises_the_taught_label_and_reset_forgets(page):
    from selenium.webdriver.common.by import By
    draw(page, loop())
    assert shown_prediction(page) == "0"
    page.find_element(By.ID, "teach-6").click()
    shown_prediction(page)

    def prob(bar: str) -> float:
        return float(page.find_element(By.ID, bar).get_attribute("data-prob"))

    assert page.find_element(By.ID, "taught").is_displayed()
    assert prob("after-6") > prob("before-6")
    assert prob("after-0") < prob("before-0")
    assert '"6"' in page.find_element(By.ID, "taught-text").text
    held = page.find_element(By.ID, "held-out")  # accountable: the lesson's cost elsewhere
    assert held.is_displayed() and "1,000 test digits it never saw, accuracy went from" in held.text
    first_before = prob("before-6")
    page.find_element(By.ID, "reset").click()
    assert shown_prediction(page) == "0"
    assert not page.find_element(By.ID, "taught").is_displayed()
    page.find_element(By.ID, "teach-6").click()  # from the trained network again
    shown_prediction(page)
    assert page.find_element(By.ID, "taught").is_displayed()
    assert prob("before-6") == pytest.approx(first_before, rel=1e-3)


def test_clear_empties_the_drawing(page):
    from selenium.webdriver.common.by import By
    draw(page, vertical_stroke())
    assert shown_prediction(page) == "1"
    assert page.find_element(By.ID, "bars").text.startswith("0")
    page.find_element(By.ID, "clear").click()
    assert page.find_element(By.ID, "prediction").text == "?"
    assert page.find_element(By.ID, "bars").text == "(shown once you draw)"
    ink = page.execute_script(
        "const d = document.getElementById('canvas').getContext('2d').getImageData(0, 0, 280, 280)"
        ".data; let n = 0; for (let i = 0; i < d.length; i += 4) n += d[i] < 128; return n;")
    assert ink == 0


def four():
    return [(30, 100), (30, 0), (30, -100), (-15, -35), (-60, 30), (5, 30), (70, 30)]


def test_screenshot_of_a_drawn_and_taught_digit(page, tmp_path):
    """The README's picture; saved beside the test run and, with UPDATE_SCREENSHOT=1, to docs/."""
    import os

    from selenium.webdriver.common.by import By
    draw(page, four())
    shown_prediction(page)
    page.find_element(By.ID, "teach-4").click()
    shown_prediction(page)
    after, before = (float(page.find_element(By.ID, f"{when}-4").get_attribute("data-prob"))
                     for when in ("after", "before"))
    assert after > before
    out = ROOT / "docs" / "page.png" if os.environ.get("UPDATE_SCREENSHOT") else tmp_path / "page.png"
    size = page.get_window_size()
    page.set_window_size(1280, 1180)  # the whole page, teaching result included
    try:
        assert page.save_screenshot(str(out))
    finally:
        page.set_window_size(size["width"], size["height"])
    assert out.read_bytes().startswith(b"\x89PNG")


def test_a_drawing_goes_along_to_the_graph_explorer(page, page_url):
    """"Step through backprop" opens the explorer on this very drawing, labelled with the
    network's own answer (no true label for a drawing)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    draw(page, vertical_stroke())
    answer = shown_prediction(page)
    page.find_element(By.ID, "to-graph").click()
    WebDriverWait(page, 20).until(
        lambda b: b.find_element(By.ID, "explorer").get_attribute("data-source") == "digit")
    outcome = page.find_element(By.ID, "outcome-body").text
    assert f"The network says {answer}" in outcome and "the network's own answer" in outcome
    page.get(page_url)  # back to the draw page for the next test
