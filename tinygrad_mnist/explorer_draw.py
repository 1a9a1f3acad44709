"""The explorer's pictures: tensors as small PNGs, and the graph as SVG drawn by Graphviz.

A tensor too big to send as numbers is sent as a picture a person can read: a digit as
28×28 pixels, a layer as a grid of squares (one per neuron), the first layer's weights as
28×28 tiles of a few units, any other matrix as a heatmap (averaged down to at most
HEATMAP_SIDE pixels a side). The PNGs are tiny (one pixel per number); the page scales them
up without smoothing. The graph has one SVG node per traced tensor, each carrying its id as
`data-node`, and one cluster per module, so a page can light nodes up and fold modules away.
"""
from __future__ import annotations

import base64
import functools
import html
import io
import math
import re
from collections.abc import Sequence
from typing import Any

import graphviz
import numpy as np
from PIL import Image

from .data import SIDE
from .graph import GraphvizNotFound

HEATMAP_SIDE = 128  # pixels on the long side of a matrix's heatmap, at most
PLACEHOLDER = "{} ‖·‖ ·········"  # a line of a tensor's box that the page fills with a norm
GAP = (200, 200, 200)  # between tiles, and where a grid has no neuron
_FONT = "Helvetica"
_STYLES = {  # one per node kind; the colours of graph.py's pictures
    "op": {"shape": "box", "style": "rounded,filled", "fillcolor": "#ffe8b0", "color": "#b7791f"},
    "parameter": {"shape": "box", "style": "rounded,filled,bold", "fillcolor": "#b7e4b0",
                  "color": "#2e7d32", "penwidth": "2"},
    "input": {"shape": "box", "style": "rounded,filled", "fillcolor": "#dbe8fb",
              "color": "#5b7fb5"},
    "constant": {"shape": "box", "style": "rounded,dashed", "color": "#888888",
                 "fontcolor": "#555555"},
}
_ID = re.compile(r'<g id="(node|edge|cluster)_(\d+)(?:_(\d+)_\d+)?" class="(?:node|edge|cluster)">')

# ----------------------------------------------------------------------------- pictures


def png_url(rgb: np.ndarray) -> str:
    """An (H, W, 3) uint8 array as a PNG data URL."""
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, "PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def colours(a: np.ndarray, signed: bool) -> np.ndarray:
    """(…, 3) uint8 colours for `a`, scaled by its largest |value|: signed, blue (< 0) through
    white (0) to red (> 0); else black (0) to white (largest), as MNIST draws ink."""
    a = np.asarray(a, np.float64)
    top = float(np.abs(a).max()) if a.size else 0.0
    t = a / top if top > 0 else np.zeros_like(a)
    if not signed:
        return np.repeat((255 * np.clip(t, 0, 1))[..., None], 3, axis=-1).round().astype(np.uint8)
    pos, neg = np.clip(t, 0, 1), np.clip(-t, 0, 1)
    rgb = np.stack([1 - 0.85 * neg, 1 - 0.85 * pos - 0.55 * neg, 1 - 0.85 * pos], -1)
    return (255 * np.clip(rgb, 0, 1)).round().astype(np.uint8)


def grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols) of the grid of squares showing n neurons: twice as wide as tall."""
    cols = max(1, math.ceil(math.sqrt(2 * n)))
    return math.ceil(n / cols), cols


def grid_picture(v: np.ndarray, signed: bool) -> str:
    """A vector as a grid of squares, one per entry, row by row."""
    flat = v.reshape(-1)
    rows, cols = grid_shape(flat.size)
    rgb = np.empty((rows * cols, 3), np.uint8)
    rgb[:] = GAP
    rgb[:flat.size] = colours(flat, signed)
    return png_url(rgb.reshape(rows, cols, 3))


def digit_picture(v: np.ndarray, signed: bool) -> str:
    return png_url(colours(v.reshape(SIDE, SIDE), signed))


def tiles_picture(w: np.ndarray, units: Sequence[int], signed: bool) -> str:
    """Columns `units` of a (784, n) matrix as 28×28 tiles in a square-ish grid, one colour
    scale for all (so tiles compare), with 1-pixel gaps."""
    per_row = max(1, math.ceil(math.sqrt(len(units))))
    rows = math.ceil(len(units) / per_row)
    step = SIDE + 1
    canvas = np.empty((rows * step - 1, per_row * step - 1, 3), np.uint8)
    canvas[:] = GAP
    coloured = colours(w[:, list(units)].T.reshape(len(units), SIDE, SIDE), signed)
    for k in range(len(units)):
        r, c = divmod(k, per_row)
        canvas[r * step:r * step + SIDE, c * step:c * step + SIDE] = coloured[k]
    return png_url(canvas)


def heatmap_picture(m: np.ndarray, signed: bool) -> tuple[str, int]:
    """A matrix as a heatmap, averaged over f×f blocks so that no side is over HEATMAP_SIDE;
    returns the picture and f (1: every entry is one pixel)."""
    f = max(1, math.ceil(max(m.shape) / HEATMAP_SIDE))
    if f > 1:
        h, w = math.ceil(m.shape[0] / f) * f, math.ceil(m.shape[1] / f) * f
        padded = np.full((h, w), np.nan)
        padded[:m.shape[0], :m.shape[1]] = m
        m = np.nanmean(padded.reshape(h // f, f, w // f, f), axis=(1, 3))
    return png_url(colours(m, signed)), f


# ----------------------------------------------------------------------------- the graph


def graph_svg(nodes: list[dict[str, Any]], clusters: list[dict[str, Any]], numbers: bool) -> str:
    """The graph as inline SVG markup: one node per tensor (`nodes`, as the explorer sends
    them), wired input → output, inside its module's cluster; with `numbers`, each number's
    data and grad in its box (else only names and shapes: one layout serves every digit).
    Raises GraphvizNotFound when the Graphviz `dot` program is missing."""
    dot = graphviz.Digraph(graph_attr={"rankdir": "LR", "nodesep": "0.25", "ranksep": "0.4",
                                       "fontname": _FONT, "bgcolor": "transparent"},
                           node_attr={"fontname": _FONT, "fontsize": "11"},
                           edge_attr={"arrowsize": "0.7", "color": "#555555"})
    subgraphs = [graphviz.Digraph(name=f"cluster_{c['id']}", graph_attr={
        "label": f"<<B>{_esc(c['label'])}</B>>", "labeljust": "l", "style": "rounded,filled",
        "color": "#9e9e9e", "fillcolor": "#f4f4f4" if c["depth"] % 2 else "#e9e9e9",
        "id": f"cluster_{c['id']}", "fontname": _FONT, "fontsize": "12"}) for c in clusters]
    home = {n: c["id"] for c in clusters for n in c["own"]}
    for n in nodes:
        target = subgraphs[home[n["id"]]] if n["id"] in home else dot
        target.node(f"n{n['id']}", _label(n, numbers), id=f"node_{n['id']}", **_STYLES[n["kind"]])
    for c in sorted(clusters, key=lambda c: -c["depth"]):  # children into their parents first
        parent = c["parent"]
        (dot if parent is None else subgraphs[parent]).subgraph(subgraphs[c["id"]])
    for n in nodes:
        for position, i in enumerate(n["inputs"]):
            dot.edge(f"n{i}", f"n{n['id']}", id=f"edge_{i}_{n['id']}_{position}")
    titles = {n["id"]: n["title"] for n in nodes}
    return _marked(_render(dot.source), titles)


@functools.lru_cache(maxsize=64)
def _render(source: str) -> str:
    """SVG markup of DOT source (the same model's graph has the same source for every digit,
    so it is laid out once)."""
    try:
        svg = graphviz.Source(source).pipe(format="svg").decode("utf-8")
    except graphviz.ExecutableNotFound as e:
        raise GraphvizNotFound("the graph picture needs the Graphviz `dot` program, which is not "
                               "on PATH: install it with `apt-get install graphviz` (Debian/"
                               "Ubuntu), `brew install graphviz` (macOS) or `conda install -c "
                               "conda-forge graphviz`") from e
    return svg[svg.index("<svg"):]  # no XML prolog or DOCTYPE inside HTML


def _marked(svg: str, titles: dict[int, str]) -> str:
    """Graphviz's SVG with data-node on nodes, data-from/data-to on edges and data-cluster on
    clusters, and each node's tooltip its tensor's full name."""
    def mark(m: re.Match[str]) -> str:
        kind, first, second = m.group(1), m.group(2), m.group(3)
        extra = {"node": f' data-node="{first}"', "cluster": f' data-cluster="{first}"',
                 "edge": f' data-from="{first}" data-to="{second}"'}[kind]
        return m.group(0)[:-1] + extra + ">"

    svg = _ID.sub(mark, svg)
    return re.sub(r'(data-node="(\d+)">\n<title>)[^<]*(</title>)',
                  lambda m: m.group(1) + _esc(titles[int(m.group(2))]) + m.group(3), svg)


def _label(n: dict[str, Any], numbers: bool) -> str:
    """An HTML-like label: the op (or name); with `numbers`, the data and grad of a number;
    else the shape, and room for two lines (data, grad) the page fills in."""
    lines = [f"<B>{_esc(n['label'])}</B>"]
    if numbers:
        lines.append(f"data {_number(n['value'])}")
        lines.append(f"grad {_number(n['grad'])}" if n["grad"] is not None else
                     '<FONT POINT-SIZE="9">no grad: a constant</FONT>' if n["kind"] == "constant"
                     else "grad none")
    else:
        lines += [f'<FONT POINT-SIZE="9">{_esc(text)}</FONT>'
                  for text in (_shape(n["shape"]), n.get("note"), PLACEHOLDER.format("data"),
                               PLACEHOLDER.format("grad")) if text]
    return "<" + "<BR/>".join(lines) + ">"


def _shape(shape: Sequence[int]) -> str:
    return "scalar" if not shape else "(" + ", ".join(map(str, shape)) + (",)" if len(shape) == 1 else ")")


def _number(v: Any) -> str:
    return f"{float(v):.4g}"


def _esc(s: Any) -> str:
    return html.escape(str(s), quote=False)
