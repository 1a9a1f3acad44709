"""Draw the computation graph behind a Tensor with Graphviz, to see what backward() walks.

Every tensor is a box and every recorded op an ellipse, wired in data-flow order (input
tensor -> op -> output tensor). Leaf parameters are green with a bold border, intermediates
blue, constants (inputs that need no gradient) white and dashed. Ops recorded under
`name_scope(...)` are boxed together in labelled clusters.
"""
from __future__ import annotations

import copy
import html
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import graphviz
import numpy as np

from .files import atomic_write
from .nn import Module, cross_entropy
from .tensor import Tensor
from .trace import walk

RANKDIRS = ("LR", "TB")
FORMATS = ("svg", "png", "pdf", "gv", "dot")  # the last two are DOT source, no `dot` binary needed
TINY = 6  # tensors with at most this many elements show their values

FONT = "Helvetica"
# one palette for every graph picture (this module's and the explorer's)
PARAMETER = {"shape": "box", "style": "rounded,filled,bold", "fillcolor": "#b7e4b0",
             "color": "#2e7d32", "penwidth": "2"}
INTERMEDIATE = {"shape": "box", "style": "rounded,filled", "fillcolor": "#dbe8fb",
                "color": "#5b7fb5"}
CONSTANT = {"shape": "box", "style": "rounded,dashed", "color": "#888888",
            "fontcolor": "#555555"}
OP = {"shape": "ellipse", "style": "filled", "fillcolor": "#ffd98e", "color": "#b7791f"}
INSTALL_DOT = ("install it with `apt-get install graphviz` (Debian/Ubuntu), `brew install "
               "graphviz` (macOS) or `conda install -c conda-forge graphviz`")


class GraphvizNotFound(RuntimeError):
    """The Graphviz `dot` program, which turns DOT source into pictures, is not installed."""


def svg_markup(dot: graphviz.Digraph | graphviz.Source) -> str:
    """The graph as SVG markup to place inside HTML (no XML prolog or DOCTYPE, which HTML does
    not allow there). Raises GraphvizNotFound when the `dot` program is missing."""
    try:
        svg = dot.pipe(format="svg").decode("utf-8")
    except graphviz.ExecutableNotFound as e:
        raise GraphvizNotFound(f"the graph picture needs the Graphviz `dot` program, which is "
                               f"not on PATH: {INSTALL_DOT}") from e
    return svg[svg.index("<svg"):]


def retain_grads(root: Tensor) -> None:
    """Keep the gradient of every tensor behind `root` after the next backward, so the picture
    shows how the gradient flows (leaves keep theirs anyway; intermediates' are otherwise freed)."""
    for t in walk(root):
        if t.requires_grad:
            t.retain_grad()


def loss_graph(model: Module, images: np.ndarray, labels: np.ndarray) -> Tensor:
    """The loss of `model` on a small batch, after backward with every node's gradient kept:
    the graph worth drawing. A copy of the model runs (in eval mode), so the model's own
    weights and `.grad`s are left alone."""
    twin = copy.deepcopy(model).eval()
    pixels = Tensor(images, name=f"pixels of {len(images)} digits")
    loss = cross_entropy(twin(pixels), labels)
    loss.name = "loss"
    retain_grads(loss)
    loss.backward()
    return loss


def draw_graph(root: Tensor, path: str | os.PathLike | None = None, *, show_values: bool = True,
               show_grads: bool = True, rankdir: str = "LR", max_nodes: int | None = 500,
               group_scopes: bool = True) -> graphviz.Digraph:
    """The graph that computed `root`, as a graphviz.Digraph (it shows inline in Jupyter).

    With `path` it is also rendered there, by extension: .svg/.png/.pdf (with the DOT source
    beside it as <stem>.gv) or .gv/.dot (source only). A graph with more than `max_nodes`
    tensor+op nodes is replaced by one node that says how big it is; None draws any size.
    """
    if not isinstance(root, Tensor):
        raise TypeError(f"draw_graph needs a Tensor, got {type(root).__name__}")
    if rankdir not in RANKDIRS:
        raise ValueError(f"rankdir must be one of {', '.join(RANKDIRS)}; got {rankdir!r}")
    tensors = walk(root)
    ops = [t for t in tensors if t._ctx is not None]  # one op per output tensor
    dot = graphviz.Digraph(graph_attr={"rankdir": rankdir, "nodesep": "0.25", "ranksep": "0.35",
                                       "fontname": FONT},
                           node_attr={"fontname": FONT, "fontsize": "11"},
                           edge_attr={"arrowsize": "0.7", "color": "#555555"})
    n_nodes = len(tensors) + len(ops)
    if max_nodes is not None and n_nodes > max_nodes:
        dot.node("summary", _too_large(n_nodes, ops, max_nodes), shape="note", style="filled",
                 fillcolor="#fff3cd", fontsize="14")
    else:
        _draw(dot, tensors, ops, show_values, show_grads, group_scopes)
    if path is not None:
        render_to(dot, path)
    return dot


def render_to(dot: graphviz.Digraph, path: str | os.PathLike) -> Path:
    """Write `dot` to `path` by its extension (see FORMATS), atomically; return the path.

    For a picture the DOT source is written first, as <stem>.gv, so that it exists even when
    the `dot` program is missing and GraphvizNotFound is raised.
    """
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"cannot render to {str(path)!r}: the extension must be one of "
                         f"{', '.join('.' + f for f in FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    source = path if fmt in ("gv", "dot") else path.with_suffix(".gv")
    atomic_write(source, dot.source.encode("utf-8"))
    if source == path:
        return path
    try:
        picture = dot.pipe(format=fmt)
    except graphviz.ExecutableNotFound as e:
        raise GraphvizNotFound(
            f"cannot render {path}: the Graphviz `dot` program is not on PATH; {INSTALL_DOT}. "
            f"The DOT source was written to {source}; "
            f"render it later with `dot -T{fmt} {source} -o {path}`") from e
    atomic_write(path, picture)
    return path


def _too_large(n_nodes: int, ops: list[Tensor], max_nodes: int) -> str:
    counts = Counter(type(t._ctx).__name__ for t in ops).most_common()
    kinds = ", ".join(f"{n:,} {name}" for name, n in counts[:5])
    kinds += " …" if len(counts) > 5 else ""
    return (f"graph too large to draw: {n_nodes:,} nodes ({len(ops):,} ops: {kinds}) "
            f"> max_nodes={max_nodes:,}\\npass max_nodes=None to draw anyway, "
            f"or draw a smaller part")


def _draw(dot: graphviz.Digraph, tensors: list[Tensor], ops: list[Tensor], show_values: bool,
          show_grads: bool, group_scopes: bool) -> None:
    """Add tensor and op nodes (in their scope clusters) and the data-flow edges to `dot`."""
    tid = {id(t): f"t{i}" for i, t in enumerate(tensors)}
    oid = {id(t): f"op{i}" for i, t in enumerate(tensors) if t._ctx is not None}
    scope_of: dict[int, tuple[Any, ...]] = {}  # tensor id -> the cluster it is drawn in
    users: dict[int, list[tuple[Any, ...]]] = defaultdict(list)  # leaf id -> its ops' scopes
    owners: dict[int, int] = {}  # who opened a scope (a module) -> its rank of first appearance
    for t in ops:
        ctx = t._ctx
        assert ctx is not None  # `ops` holds op outputs only
        # a scope is its labels and who opened each (two layers with one label are two boxes),
        # the openers ranked by first appearance, so the DOT source is the same in every run
        scope = tuple((str(e), owners.setdefault(id(getattr(e, "owner", None)), len(owners)))
                      for e in ctx.scope) if group_scopes else ()
        scope_of[id(t)] = scope
        for p in ctx.parents:
            if p._ctx is None:
                users[id(p)].append(scope)
    for t in tensors:
        if t._ctx is None and t.requires_grad:  # a parameter joins the scope all its users share
            scope_of[id(t)] = _common_prefix(users[id(t)]) if id(t) in users else ()

    bodies: dict[tuple[Any, ...], list[tuple[str, str, dict]]] = defaultdict(list)
    for t in tensors:
        body = bodies[scope_of.get(id(t), ())]
        if t._ctx is not None:
            body.append((oid[id(t)], f"<<B>{type(t._ctx).__name__}</B>>", OP))
        body.append((tid[id(t)], _tensor_label(t, show_values, show_grads), _tensor_style(t)))

    for name, label, style in bodies.pop((), []):
        dot.node(name, label, **style)
    scopes: set[tuple[Any, ...]] = set()
    for s in bodies:
        scopes.update(s[:k] for k in range(1, len(s) + 1))
    clusters = {s: graphviz.Digraph(name=f"cluster_{i}", graph_attr={
        "label": f"<<B>{esc(s[-1][0])}</B>>", "labeljust": "l", "style": "rounded,filled",
        "color": "#9e9e9e", "fillcolor": "#f4f4f4" if len(s) % 2 else "#e6e6e6"})
        for i, s in enumerate(sorted(scopes))}
    for s, body in bodies.items():
        for name, label, style in body:
            clusters[s].node(name, label, **style)
    for s in sorted(scopes, key=lambda s: (-len(s), s)):  # children before their parent; ties in
        # name order, so the DOT source is the same in every process (set order is not)
        (clusters[s[:-1]] if len(s) > 1 else dot).subgraph(clusters[s])

    for t in ops:
        assert t._ctx is not None
        for p in t._ctx.parents:
            dot.edge(tid[id(p)], oid[id(t)])
        dot.edge(oid[id(t)], tid[id(t)])


def _common_prefix(scopes: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    first = scopes[0]
    n = len(first)
    for s in scopes[1:]:
        n = next((i for i, (a, b) in enumerate(zip(first[:n], s)) if a != b), min(n, len(s)))
    return first[:n]


def _tensor_style(t: Tensor) -> dict:
    if t._ctx is not None:
        return INTERMEDIATE
    return PARAMETER if t.requires_grad else CONSTANT


def _tensor_label(t: Tensor, show_values: bool, show_grads: bool) -> str:
    """An HTML-like label: name, shape and dtype, and (when small) data and grad."""
    shape = "scalar" if t.ndim == 0 else str(t.shape)
    lines = [f"<B>{esc(t.name)}</B>"] if t.name else []
    lines.append(f'<FONT POINT-SIZE="9">{shape} {t.dtype}</FONT>')
    if show_values and t.size <= TINY:
        lines.append(f"data = {esc(_fmt(t.data))}")
    if show_grads and t.grad is not None:
        g = t.grad.data
        lines.append(f"grad = {esc(_fmt(g))}" if g.size <= TINY
                     else f"‖grad‖ = {float(np.linalg.norm(g.ravel())):.4g}")
    return "<" + "<BR/>".join(lines) + ">"


def _short(v: Any) -> str:
    return f"{float(v):.4g}"


def _fmt(a: np.ndarray) -> str:
    if a.ndim == 0:
        return f"{float(a):.4g}"
    text = np.array2string(a, separator=", ", formatter={"all": _short})
    return " ".join(text.split())


def esc(s: Any) -> str:
    """Text safe inside a Graphviz HTML-like label."""
    return html.escape(str(s), quote=False)
