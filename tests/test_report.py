"""The run's report page: built by the train command, rebuilt by `tinygrad-mnist report`, checked
in Chromium."""
import html
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tinygrad_mnist import Tensor, ops, report
from tinygrad_mnist.checkpoint import load_checkpoint
from tinygrad_mnist.data import load_mnist
from tinygrad_mnist.explorer import explore_digit
from tinygrad_mnist.explorer_draw import drawn
from tinygrad_mnist.gradcheck import check_parameters
from tinygrad_mnist.nn import MLP, cross_entropy
from tinygrad_mnist.predict import first_mistake, predict_proba

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(mnist_dir, tmp_path_factory):
    """A small real run with pictures on, so the train command itself writes report.html."""
    run_dir = tmp_path_factory.mktemp("run")
    result = cli("train", "--hidden", 32, "--epochs", 2, "--train-limit", 3000, "--val-size", 1000,
                 "--run-dir", run_dir, "--overwrite", "--no-progress", "--data-dir", mnist_dir)
    assert result.returncode == 0, result.stderr
    assert f"report: {run_dir / 'report.html'}" in result.stdout.splitlines()
    return run_dir


@pytest.fixture(scope="module")
def page(run) -> str:
    return (run / "report.html").read_text(encoding="utf-8")


def test_page_is_self_contained(page, dot_binary):
    # its only scripts are the graph explorer's, inline: its data (JSON) and its code
    scripts = re.findall(r"<script[^>]*>", page.lower())
    assert scripts == ['<script type="application/json" id="explorer-data">', "<script>"]
    assert "<link" not in page.lower() and len(page.encode()) <= 5_000_000
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched
    sources = re.findall(r"<img[^>]*\ssrc=\"([^\"]*)\"", page)
    assert len(sources) == 8 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "randomly distorted copies" in page and "turned each training" in page  # affine, the default
    assert page.count("<svg") == 1 and "Affine" in page and "CrossEntropy" in page


def test_sections_come_in_the_story_order(page):
    positions = [page.find(f'<section id="{name}">') for name in report.SECTIONS]
    assert -1 not in positions and positions == sorted(positions)
    assert positions[0] > page.find("test accuracy")


def test_gradient_check_rows_are_in_the_page_and_agree(page):
    rows = re.findall(r"<tr><td class=\"name\">(.*?)</td>.*?</tr>", page, re.DOTALL)
    assert [html.unescape(r) for r in rows] == ["Linear(784→32)"] * 6 + ["Linear(32→10)"] * 6
    errors = [float(e) for e in re.findall(r'<td class="ok">([0-9.e+-]+)</td></tr>', page)]
    assert len(errors) == 12 and max(errors) < 1e-5 and 'class="bad"' not in page


def test_gradient_check_finds_a_wrong_gradient_and_leaves_the_model_alone(monkeypatch):
    rng = np.random.default_rng(0)
    x, y = rng.random((8, 784), dtype=np.float32), rng.integers(0, 10, 8)
    model = MLP([784, 16, 10], seed=0)
    before = {k: v.tobytes() for k, v in model.state_dict().items()}

    def gradient_check():  # as the report checks its model
        return check_parameters(model, lambda m: cross_entropy(m(Tensor(x.astype(np.float64))), y))

    good = gradient_check()
    assert len(good) == 12 and max(r.relative_error for r in good) < 1e-5
    assert {k: v.tobytes() for k, v in model.state_dict().items()} == before
    assert all(p.grad is None for p in model.parameters())
    right = ops.Affine.fast_backward  # the rule backward uses when no graph of it is wanted

    def wrong(ctx, out, g):  # a 1 % error in every weight gradient
        gx, gw, gb = right(ctx, out, g)
        return gx, gw * 1.01, gb

    monkeypatch.setattr(ops.Affine, "fast_backward", wrong)
    bad = gradient_check()
    assert all(r.relative_error > 5e-3 for r in bad if r.parameter.endswith("weight"))
    assert all(r.relative_error < 1e-5 for r in bad if r.parameter.endswith("bias"))


def cli(*args):
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tinygrad_mnist.cli", *map(str, args)],
                          check=False, capture_output=True, text=True, env=env, timeout=300)


def without_svg(page: str) -> str:
    return re.sub(r"<svg.*</svg>", "", page, flags=re.DOTALL)


def test_report_command_rebuilds_the_page(run, mnist_dir, tmp_path):
    (run / "report.html").rename(tmp_path / "old.html")
    result = cli("report", run, "--data-dir", mnist_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"report: {run / 'report.html'}"
    # the same page; only the graph's layout may differ: graph.py orders nested clusters of
    # equal depth by set iteration order, which changes with Python's hash seed per process
    new, old = ((run / "report.html").read_text(), (tmp_path / "old.html").read_text())
    assert without_svg(new) == without_svg(old) and "<svg" in new
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no temp files
    missing = cli("report", tmp_path / "nothing")
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1
    assert "checkpoint not found" in missing.stderr and "Traceback" not in missing.stderr


def test_a_failed_rebuild_keeps_the_old_page(run, mnist_dir, monkeypatch):
    before = (run / "report.html").read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("template broke")

    monkeypatch.setattr(report, "render_report", broken)
    with pytest.raises(RuntimeError, match="template broke"):
        report.write_report(run, data_dir=mnist_dir)
    assert (run / "report.html").read_bytes() == before


def test_page_in_a_real_browser(run, browser, tmp_path):
    browser.get_log("browser")  # drop what earlier pages logged
    browser.set_window_size(1280, 1000)
    browser.get((run / "report.html").as_uri())
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []
    widths = browser.execute_script(
        "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) == 8 and min(widths) > 0  # 7 pictures, and the shifted digits
    for name in report.SECTIONS:
        section = browser.find_element("id", name)
        assert section.is_displayed() and section.size["height"] > 100, name
    svg = browser.find_element("css selector", "#model svg")
    assert svg.size["width"] > 300 and svg.size["height"] > 100
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1280, height + 100)  # the whole page in one screenshot
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot)) and shot.read_bytes().startswith(PNG)
    browser.set_window_size(1280, 1000)


def embedded(page: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="explorer-data">(.*?)</script>',
                                page, re.DOTALL).group(1))


def test_the_explorer_holds_the_engines_trace_of_the_first_mistake(run, page, mnist_dir):
    ckpt = load_checkpoint(run / "checkpoint.npz")
    data = load_mnist(mnist_dir, val_size=ckpt.config.val_size, seed=ckpt.config.seed)
    mistake = first_mistake(predict_proba(ckpt.model, data.test_x).argmax(axis=1), data.test_y)
    expected = drawn(explore_digit(ckpt.model, data.test_x[mistake], int(data.test_y[mistake])))
    shown = embedded(page)
    assert shown["label"] == int(data.test_y[mistake]) and np.float32(shown["loss"]) == expected["loss"]
    assert shown["svg"] == expected["svg"] and "<svg" not in page.split('id="explorer-data">')[1]
    for n, e in zip(shown["nodes"], expected["nodes"], strict=True):
        assert n["grad_norm"] == e["grad_norm"]
        if "grads" in e:
            np.testing.assert_array_equal(np.float32(n["grads"]), e["grads"])
    assert shown["update"]["loss_after"] < shown["update"]["loss_before"]


def test_the_explorer_works_from_file_with_no_console_errors(run, page, browser):
    from selenium.webdriver.common.by import By
    browser.get_log("browser")
    browser.set_window_size(1280, 1000)
    browser.get((run / "report.html").as_uri())
    data = embedded(page)
    nodes = browser.find_elements(By.CSS_SELECTOR, "#backprop #graph g.node[data-node]")
    assert len(nodes) == len(data["nodes"]) and browser.find_element(By.ID, "explorer").get_attribute(
        "data-ready") == "1"
    button, steps = browser.find_element(By.ID, "step-backward"), 0
    while button.is_enabled():
        button.click()
        node = data["nodes"][data["backward_steps"][steps]["node"]]
        field = browser.find_element(By.CSS_SELECTOR, "#node-detail [data-field=grad]")
        exact = node["grad"] if node["grad"] is not None else node["grad_norm"]
        assert float(field.get_attribute("data-exact")) == exact
        steps += 1
    assert steps == len(data["backward_steps"])
    browser.find_element(By.ID, "update").click()
    assert "the loss went from" in browser.find_element(By.ID, "update-result").text
    assert not browser.find_element(By.ID, "update").is_enabled()
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


@pytest.mark.parametrize("command", ["explain", "report"])
def test_new_subcommands_have_help(command):
    result = cli(command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: tinygrad-mnist {command}") and "--data-dir" in result.stdout
