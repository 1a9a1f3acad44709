"""A run's report: one self-contained HTML page that tells the story of a training run.

The page is rebuilt from the run directory alone (the checkpoint holds the weights, the
settings and the per-epoch metrics) plus MNIST. Pictures are PNGs embedded as data URIs and
the computation graph is inline SVG, so the file works offline, mailed or archived, with no
scripts at all. The numbers are computed here; the page layout is the Jinja2 template
`templates/report.html.j2`.
"""
from __future__ import annotations

import base64
import copy
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data import MNIST, load_mnist
from .explain import explain
from .files import atomic_write
from .nn import Module, cross_entropy
from .tensor import Tensor, grad, no_grad
from .train import CHECKPOINT, Checkpoint, draw_pictures, load_checkpoint, predict_proba

REPORT = "report.html"
SECTIONS = ("data", "model", "curves", "predictions", "confusion", "mistakes", "explanation",
            "weights", "gradcheck")  # the page's section ids, in reading order


@dataclass
class GradCheckRow:
    """One weight: the engine's gradient against a central finite difference."""

    parameter: str  # e.g. "layers.0.weight"
    layer: str  # the layer that holds it, e.g. "Linear(784→128)"
    index: tuple[int, ...]
    analytic: float
    numerical: float
    relative_error: float  # |analytic - numerical| / max(|analytic|, |numerical|)


def write_report(run_dir: str | os.PathLike, data: MNIST | None = None,
                 data_dir: str | os.PathLike | None = None, data_dir_name: str = "data_dir",
                 pictures: dict[str, Path] | None = None) -> Path:
    """Write RUN_DIR/report.html (atomically) from the run's checkpoint; returns its path.

    `pictures` are the run's PNGs just drawn by `train.draw_pictures` (train passes them);
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
    """The report page as an HTML string, with `pictures` (from `train.draw_pictures`) embedded."""
    from jinja2 import Environment, PackageLoader, select_autoescape
    model = ckpt.model
    probs = predict_proba(model, data.test_x)
    preds = probs.argmax(axis=1)
    wrong = np.flatnonzero(preds != data.test_y)
    mistake = int(wrong[0]) if len(wrong) else 0
    why = explain(model, data.test_x[mistake], label=int(data.test_y[mistake]))
    embedded = {name: "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
                for name, path in pictures.items()}
    # mistakes have the large gradients that learning follows; a sure, right digit's are ~0
    chosen = np.concatenate([wrong, np.flatnonzero(preds == data.test_y)])[:8]
    check = gradient_check(model, data.test_x[chosen], data.test_y[chosen])
    env = Environment(loader=PackageLoader("tinygrad_mnist", "templates"),
                      autoescape=select_autoescape(["html", "j2"]))
    return env.get_template("report.html.j2").render(
        title=title, config=ckpt.config, epochs=ckpt.epoch, history=ckpt.history,
        sizes=model.sizes, n_params=sum(p.size for p in model.parameters()),
        n_train=len(data.train_x[:ckpt.config.train_limit]), n_val=len(data.val_x),
        n_test=len(data.test_x), test_acc=float((preds == data.test_y).mean()),
        n_wrong=len(wrong), pictures=embedded, graph_svg=_graph_svg(model, data),
        mistake=mistake, why=why, check=check,
        worst_error=max(row.relative_error for row in check), sections=SECTIONS)


def gradient_check(model: Module, x: np.ndarray, y: np.ndarray, per_parameter: int = 3,
                   eps: float = 1e-6, seed: int = 0) -> list[GradCheckRow]:
    """Backprop's gradient of the batch loss against central finite differences, for a few
    randomly chosen weights of each parameter, on a float64 copy of the model (eval mode).
    Only weights whose gradient is at least 1/1000 of the parameter's largest are chosen: a
    gradient of ~0 is lost in the finite difference's rounding. The model is not changed."""
    twin = copy.deepcopy(model).eval()
    for p in twin.parameters():
        p.data, p.grad = p.data.astype(np.float64), None
    inputs = Tensor(np.asarray(x, dtype=np.float64))

    def loss() -> Tensor:
        return cross_entropy(twin(inputs), y)

    named = list(twin.named_parameters())
    analytic = grad(loss(), [p for _, p in named])
    rng = np.random.default_rng(seed)
    rows = []
    for (name, p), g in zip(named, analytic):
        g_data = np.zeros(p.shape) if g is None else g.data
        large = np.flatnonzero(np.abs(g_data) >= 1e-3 * np.abs(g_data).max())
        pool = large if len(large) >= per_parameter else np.arange(p.size)
        for j in np.sort(rng.permutation(pool)[:per_parameter]):
            flat, orig = p.data.reshape(-1), p.data.flat[j]
            with no_grad():
                flat[j] = orig + eps
                up = loss().item()
                flat[j] = orig - eps
                down = loss().item()
                flat[j] = orig
            numerical, a = (up - down) / (2 * eps), float(g_data.flat[j])
            scale = max(abs(a), abs(numerical))
            rows.append(GradCheckRow(name, _owner(twin, name), tuple(int(i) for i in
                                     np.unravel_index(j, p.shape)), a, numerical,
                                     abs(a - numerical) / scale if scale else 0.0))
    return rows


def _owner(model: Module, parameter: str) -> str:
    """The graph label of the module holding a parameter ("layers.0.weight" -> "Linear(784→128)")."""
    module: Any = model
    for part in parameter.split(".")[:-1]:
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module.scope_label() or type(module).__name__


def _graph_svg(model: Module, data: MNIST, batch: int = 2) -> str:
    """The loss graph of the trained model on two test digits, as inline SVG markup."""
    from .graph import GraphvizNotFound, draw_graph, render_to, retain_grads
    model = copy.deepcopy(model).eval()
    pixels = Tensor(data.test_x[:batch], name=f"pixels of {batch} digits")
    loss = cross_entropy(model(pixels), data.test_y[:batch])
    loss.name = "loss"
    retain_grads(loss)
    loss.backward()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            svg = render_to(draw_graph(loss), Path(tmp) / "graph.svg").read_text(encoding="utf-8")
        except GraphvizNotFound:
            return ('<p class="note">(The graph picture needs the Graphviz <code>dot</code> '
                    'program: install it with <code>apt-get install graphviz</code> and run '
                    '<code>tinygrad-mnist report</code> again.)</p>')
    return svg[svg.index("<svg"):]  # drop the XML prolog and DOCTYPE: not allowed inside HTML
