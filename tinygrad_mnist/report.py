"""A run's report: one self-contained HTML page that tells the story of a training run.

The page is rebuilt from the run directory alone (the checkpoint holds the weights, the
settings and the per-epoch metrics) plus MNIST; `draw_pictures` makes the run's PNGs, which
the page embeds. Pictures are PNGs embedded as data URIs and
the computation graph is inline SVG, so the file works offline, mailed or archived. Its one
script is the graph explorer's (static/graph.js, inlined with its data as JSON): it steps
through backprop on the run's first test mistake from file://, with no server. The numbers
are computed here; the page layout is the Jinja2 template `templates/report.html.j2`.
"""
from __future__ import annotations

import base64
import html
import os
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from . import plots
from .augment import distort, distorts, epoch_moves
from .checkpoint import Checkpoint, load_checkpoint
from .config import TrainConfig
from .data import MNIST, load_mnist
from .explain import Explanation, explain
from .explain_plot import plot_explanation
from .explorer import explore_digit
from .explorer_draw import drawn
from .files import atomic_write
from .gradcheck import check_parameters
from .graph import GraphvizNotFound, draw_graph, loss_graph, svg_markup
from .nn import Module, cross_entropy
from .predict import first_mistake, predict_proba
from .run_dir import CHECKPOINT, PICTURES
from .seeding import epoch_order
from .tensor import Tensor

REPORT = "report.html"
SECTIONS = ("data", "model", "curves", "predictions", "confusion", "mistakes", "explanation",
            "backprop", "weights", "gradcheck")  # the page's section ids, in reading order


def draw_pictures(model: Module, data: MNIST, history: list[dict], directory: Path,
                  config: TrainConfig) -> dict[str, Path]:
    """The pictures a person wants after training, as PNGs in `directory` (named as in
    run_dir.PICTURES), by name; the run's report embeds these same files."""
    names = {key: directory / name for key, name in PICTURES.items()}
    probs = predict_proba(model, data.test_x)
    preds = probs.argmax(axis=1)
    mistake = first_mistake(preds, data.test_y)  # where learning happens; else the first digit
    pictures = {"digits": plots.plot_digits(data.train_x[:16], data.train_y[:16], names["digits"])}
    n = len(data.train_x[:config.train_limit])
    if distorts(config.augment, config.shift):
        examples, moves = data.train_x[:8], []
        for epoch in range(min(3, config.epochs)):  # the very distortions these digits got
            position = np.argsort(epoch_order(config.seed, epoch, n))[:8]
            epoch_rows = epoch_moves(config.augment, config.seed, epoch, n, config.shift)
            assert epoch_rows is not None
            moves.append(epoch_rows[position])
        pictures["augmented"] = plots.plot_augmented(
            examples, [distort(examples, m, config.augment) for m in moves], moves,
            names["augmented"])
    why = explain(model, data.test_x[mistake], label=int(data.test_y[mistake]))
    return {**pictures,
            "curves": plots.plot_learning_curves(history, names["curves"]),
            "predictions": plots.plot_predictions(
                data.test_x[:24], data.test_y[:24], preds[:24], names["predictions"],
                probs=probs[:24].max(axis=1), title="test digits: true label and prediction"),
            "confusion": plots.plot_confusion_matrix(data.test_y, preds, names["confusion"]),
            "mistakes": plots.plot_confident_mistakes(data.test_x, data.test_y, probs,
                                                      names["mistakes"]),
            "explanation": plot_explanation(why, names["explanation"]),
            "weights": plots.plot_first_layer_weights(model.parameters()[0].data, names["weights"])}


def write_report(run_dir: str | os.PathLike, data: MNIST | None = None,
                 data_dir: str | os.PathLike | None = None, data_dir_name: str = "data_dir",
                 pictures: dict[str, Path] | None = None) -> Path:
    """Write RUN_DIR/report.html (atomically) from the run's checkpoint; returns its path.

    `pictures` are the run's PNGs just drawn by `draw_pictures` (the train command passes them);
    without them they are drawn anew from the checkpoint, so the page never shows stale ones."""
    run_dir = Path(run_dir)
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    if data is None:
        data = load_mnist(data_dir, val_size=ckpt.config.val_size, seed=ckpt.config.seed,
                          data_dir_name=data_dir_name)
    if pictures is None:
        with tempfile.TemporaryDirectory() as tmp:
            page = render_report(ckpt, data, draw_pictures(ckpt.model, data, ckpt.history,
                                                           Path(tmp), ckpt.config), run_dir.name)
    else:
        page = render_report(ckpt, data, pictures, run_dir.name)
    return atomic_write(run_dir / REPORT, page.encode("utf-8"))


def render_report(ckpt: Checkpoint, data: MNIST, pictures: dict[str, Path],
                  title: str = "run") -> str:
    """The report page as an HTML string, with `pictures` (from `draw_pictures`) embedded."""
    from jinja2 import Environment, PackageLoader, select_autoescape
    model = ckpt.model
    probs = predict_proba(model, data.test_x)
    preds = probs.argmax(axis=1)
    wrong = np.flatnonzero(preds != data.test_y)
    mistake = first_mistake(preds, data.test_y)
    why = explain(model, data.test_x[mistake], label=int(data.test_y[mistake]))
    embedded = {name: "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
                for name, path in pictures.items()}
    # mistakes have the large gradients that learning follows; a sure, right digit's are ~0
    chosen = np.concatenate([wrong, np.flatnonzero(preds == data.test_y)])[:8]
    x, y = data.test_x[chosen].astype(np.float64), data.test_y[chosen]
    check = check_parameters(model, lambda m: cross_entropy(m(Tensor(x)), y))
    env = Environment(loader=PackageLoader("tinygrad_mnist", "templates"),
                      autoescape=select_autoescape(["html", "j2"]))
    return env.get_template("report.html.j2").render(
        title=title, config=ckpt.config, epochs=ckpt.epoch, history=ckpt.history,
        sizes=model.sizes, n_params=sum(p.size for p in model.parameters()),
        n_train=len(data.train_x[:ckpt.config.train_limit]), n_val=len(data.val_x),
        n_test=len(data.test_x), test_acc=float((preds == data.test_y).mean()),
        n_wrong=len(wrong), pictures=embedded, graph_svg=_graph_svg(model, data),
        mistake=mistake, why=why, check=check,
        worst_error=max(row.relative_error for row in check), sections=SECTIONS,
        explorer_json=_script_json(_explorer(model, data.test_x[mistake], why)),
        explorer_js=_static("graph.js", "</script"), explorer_css=_static("graph.css", "</style"))


def _explorer(model: Module, digit: np.ndarray, why: Explanation) -> dict[str, Any]:
    """The graph explorer's data for the digit `why` explains (against its label), with the
    SGD step `explain` took on a copy of the model as what Update shows."""
    assert why.label is not None and why.after_step is not None  # explained with its label
    data = drawn(explore_digit(model, digit, why.label))
    step = why.after_step
    data.update(label_source="true", update={
        "lr": step.lr, "label": why.label, "loss_before": step.loss_before,
        "loss_after": step.loss_after, "probs_before": why.probs, "probs_after": step.probs})
    return data


def _script_json(data: dict[str, Any]) -> str:
    """JSON to place inside a <script> element: `<`, `>` and `&` escaped, so no string in it
    (the SVG's markup, say) can close the element."""
    text = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY).decode("utf-8")
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _static(name: str, closing: str) -> str:
    """A file of the package's static folder, to inline; it must not contain `closing`."""
    text = (files("tinygrad_mnist") / "static" / name).read_text(encoding="utf-8")
    if closing in text.lower():
        raise ValueError(f"static/{name} contains {closing!r}, which would end its inline element")
    return text


def _graph_svg(model: Module, data: MNIST, batch: int = 2) -> str:
    """The loss graph of the trained model on two test digits, as inline SVG markup."""
    try:
        return svg_markup(draw_graph(loss_graph(model, data.test_x[:batch], data.test_y[:batch])))
    except GraphvizNotFound as e:
        return f'<p class="note">({html.escape(str(e))}; then run tinygrad-mnist report again.)</p>'
