"""The explorer's pictures: tensors as small PNGs, and the graph as SVG drawn by Graphviz.

`drawn` takes what `explorer` computed and colours each tensor too big to send as numbers
into a picture a person can read: a digit as 28×28 pixels, a layer as a grid of squares (one
per neuron), the first layer's weights as 28×28 tiles of a few units, any other matrix as a
heatmap. The PNGs are tiny (one pixel per number); the page scales them up without smoothing.
The graph has one SVG node per traced tensor, each carrying its id as `data-node`, and one
cluster per module, so a page can light nodes up and fold modules away.
"""
from __future__ import annotations

import base64
import functools
import io
import math
import re
from collections.abc import Sequence
from typing import Any

import graphviz
import numpy as np
from PIL import Image

from .data import SIDE
from .graph import CONSTANT, FONT, INTERMEDIATE, OP, PARAMETER, GraphvizNotFound, esc, svg_markup

PLACEHOLDER = "{} ‖·‖ ·········"  # a line of a tensor's box that the page fills with a norm
GAP = (200, 200, 200)  # between tiles, and where a grid has no neuron
_STYLES = {"op": {**OP, "shape": "box", "style": "rounded,filled", "fillcolor": "#ffe8b0"},
           "parameter": PARAMETER, "input": INTERMEDIATE, "constant": CONSTANT}
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


def grid_picture(v: np.ndarray, signed: bool, rows: int, cols: int) -> str:
    """A vector as a grid of squares, one per entry, row by row."""
    rgb = np.empty((rows * cols, 3), np.uint8)
    rgb[:] = GAP
    rgb[:v.size] = colours(v, signed)
    return png_url(rgb.reshape(rows, cols, 3))


def tiles_picture(w: np.ndarray, signed: bool) -> str:
    """The columns of a (784, k) matrix as 28×28 tiles in a square-ish grid, one colour scale
    for all (so tiles compare), with 1-pixel gaps."""
    k = w.shape[1]
    per_row = max(1, math.ceil(math.sqrt(k)))
    rows = math.ceil(k / per_row)
    step = SIDE + 1
    canvas = np.empty((rows * step - 1, per_row * step - 1, 3), np.uint8)
    canvas[:] = GAP
    coloured = colours(w.T.reshape(k, SIDE, SIDE), signed)
    for i in range(k):
        r, c = divmod(i, per_row)
        canvas[r * step:r * step + SIDE, c * step:c * step + SIDE] = coloured[i]
    return png_url(canvas)


def _picture(p: dict[str, Any], a: np.ndarray, signed: bool) -> str:
    """One of `explorer`'s picture arrays as a PNG data URL, by its kind."""
    if p["kind"] == "grid":
        return grid_picture(a, signed, p["rows"], p["cols"])
    if p["kind"] == "tiles":
        return tiles_picture(a, signed)
    return png_url(colours(a, signed))  # a digit, or a heatmap already averaged


def drawn(data: dict[str, Any]) -> dict[str, Any]:
    """`explorer`'s answer ready to send: each picture's arrays as PNG data URLs (a gradient
    always on the signed scale), and the graph as SVG (`svg`), or why not (`svg_error`)."""
    for n in data["nodes"]:
        p = n["picture"]
        if p is not None:
            signed = p.pop("signed")
            p["value"] = _picture(p, p["value"], signed)
            p["grad"] = None if p["grad"] is None else _picture(p, p["grad"], True)
    try:
        data["svg"], data["svg_error"] = graph_svg(data["nodes"], data["clusters"],
                                                   numbers=data["source"] == "expression"), None
    except GraphvizNotFound as e:
        data["svg"], data["svg_error"] = None, str(e)
    return data


# ----------------------------------------------------------------------------- the graph


def graph_svg(nodes: list[dict[str, Any]], clusters: list[dict[str, Any]], numbers: bool) -> str:
    """The graph as inline SVG markup: one node per tensor (`nodes`, as the explorer sends
    them), wired input → output, inside its module's cluster; with `numbers`, each number's
    data and grad in its box (else only names and shapes: one layout serves every digit).
    Raises GraphvizNotFound when the Graphviz `dot` program is missing."""
    dot = graphviz.Digraph(graph_attr={"rankdir": "LR", "nodesep": "0.25", "ranksep": "0.4",
                                       "fontname": FONT, "bgcolor": "transparent"},
                           node_attr={"fontname": FONT, "fontsize": "11"},
                           edge_attr={"arrowsize": "0.7", "color": "#555555"})
    subgraphs = [graphviz.Digraph(name=f"cluster_{c['id']}", graph_attr={
        "label": f"<<B>{esc(c['label'])}</B>>", "labeljust": "l", "style": "rounded,filled",
        "color": "#9e9e9e", "fillcolor": "#f4f4f4" if c["depth"] % 2 else "#e9e9e9",
        "id": f"cluster_{c['id']}", "fontname": FONT, "fontsize": "12"}) for c in clusters]
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
    return svg_markup(graphviz.Source(source))


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
                  lambda m: m.group(1) + esc(titles[int(m.group(2))]) + m.group(3), svg)


def _label(n: dict[str, Any], numbers: bool) -> str:
    """An HTML-like label: the op (or name); with `numbers`, the data and grad of a number;
    else the shape, and room for two lines (data, grad) the page fills in."""
    lines = [f"<B>{esc(n['label'])}</B>"]
    if numbers:
        lines.append(f"data {_number(n['value'])}")
        lines.append(f"grad {_number(n['grad'])}" if n["grad"] is not None else
                     '<FONT POINT-SIZE="9">no grad: a constant</FONT>' if n["kind"] == "constant"
                     else "grad none")
    else:
        lines += [f'<FONT POINT-SIZE="9">{esc(text)}</FONT>'
                  for text in (_shape(n["shape"]), n.get("note"), PLACEHOLDER.format("data"),
                               PLACEHOLDER.format("grad")) if text]
    return "<" + "<BR/>".join(lines) + ">"


def _shape(shape: Sequence[int]) -> str:
    return "scalar" if not shape else "(" + ", ".join(map(str, shape)) + (",)" if len(shape) == 1 else ")")


def _number(v: Any) -> str:
    return f"{float(v):.4g}"
