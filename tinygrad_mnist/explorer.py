"""The graph explorer's data: the engine's own trace of a computation, made ready to show.

Two computations can be explored: a digit through an MLP to its cross-entropy loss, and a
scalar expression a person types (expression.py). Either way the graph is recorded by the
engine and walked by the engine's own backward (`trace`), so every value, gradient and step
here is what ran, bit for bit; this module only arranges it. A small tensor is sent as its
numbers; a large one as the array a picture is made of (explorer_draw.py colours it), with its
min, max and norm. Each step
of the walk comes with the op's local rule in plain maths, and every parameter with a
gradient check against finite differences in float64. Computing only: `explorer_draw.drawn`
turns the arrays into PNGs and adds the graph's SVG, and the explorer page (graph_page.py) and
the run report present it.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from .data import SIDE
from .expression import Built, Expression, ExpressionError, build, checked_values, evaluate, parse
from .grad_mode import no_grad
from .gradcheck import central_difference, check_parameters
from .nn import Module, cross_entropy
from .optim import SGD
from .tensor import Tensor
from .trace import Node, Trace, trace, walk

SMALL = 1024  # a tensor with at most this many numbers is sent whole (values, grads)
TERMS = 5  # a neuron's largest terms w_i x_i, shown when it is expanded
TILES = 16  # first-layer units shown as 28x28 tiles: those with the largest gradient
HEATMAP_SIDE = 128  # pixels on the long side of a matrix's heatmap, at most
OK_ERROR = 1e-4  # a gradient check passes below this relative error ...
# ... or below this absolute difference: a float64 loss is exact to ~1e-15, so a central
# difference over 2e-6 cannot resolve gradients smaller than ~1e-9 (a digit the model is sure of)
OK_DIFFERENCE = 1e-7
EPS = 1e-6  # the finite-difference step (float64)
_SYMBOLS = {"Add": "+", "Sub": "−", "Mul": "×", "Div": "÷", "Pow": "^", "Neg": "−x", "Exp": "exp",
            "Log": "log", "Sqrt": "sqrt", "Tanh": "tanh", "Sigmoid": "sigmoid", "ReLU": "relu"}
# per op: the symbols of its inputs, and d(output)/d(input) for each, in plain maths
RULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Add": (("x", "y"), ("d({0} + {1})/d{0} = 1", "d({0} + {1})/d{1} = 1")),
    "Sub": (("x", "y"), ("d({0} − {1})/d{0} = 1", "d({0} − {1})/d{1} = −1")),
    "Neg": (("x",), ("d(−{0})/d{0} = −1",)),
    "Mul": (("x", "y"), ("d({0}·{1})/d{0} = {1}", "d({0}·{1})/d{1} = {0}")),
    "Div": (("x", "y"), ("d({0}/{1})/d{0} = 1/{1}", "d({0}/{1})/d{1} = −{0}/{1}²")),
    "Pow": (("x", "y"), ("d({0}^{1})/d{0} = {1}·{0}^({1} − 1)", "d({0}^{1})/d{1} = {0}^{1}·ln {0}")),
    "Exp": (("x",), ("d exp({r0})/d{0} = exp({r0})",)),
    "Log": (("x",), ("d ln({r0})/d{0} = 1/{0}",)),
    "Sqrt": (("x",), ("d √{0}/d{0} = 1/(2√{0})",)),
    "Tanh": (("x",), ("d tanh({r0})/d{0} = 1 − tanh²({r0})",)),
    "Sigmoid": (("x",), ("d σ({r0})/d{0} = σ({r0})·(1 − σ({r0}))",)),
    "ReLU": (("x",), ("d relu({r0})/d{0} = 1 if {0} > 0 else 0",)),
    "MatMul": (("X", "W"), ("d(X@W)/dX = upstream @ Wᵀ", "d(X@W)/dW = Xᵀ @ upstream")),
    "Affine": (("x", "W", "b"), ("d(x@W + b)/dx = upstream @ Wᵀ",
                                 "d(x@W + b)/dW = xᵀ @ upstream: wᵢⱼ gets xᵢ × upstreamⱼ",
                                 "d(x@W + b)/db = 1: bⱼ gets upstreamⱼ (summed over the batch)")),
    "Sum": (("x",), ("d Σx/dxᵢ = 1: the upstream copied to every element",)),
    "Max": (("x",), ("d max(x)/dxᵢ = 1 for the largest element (shared among ties), else 0",)),
    "Reshape": (("x",), ("the same numbers: the upstream reshaped back to x's shape",)),
    "Transpose": (("x",), ("the upstream transposed back",)),
    "BroadcastTo": (("x",), ("the upstream summed over the axes the broadcast stretched",)),
    "Cast": (("x",), ("d x/dx = 1: the upstream cast back to x's dtype",)),
    "GetItem": (("x",), ("1 at the entries picked, 0 elsewhere: the upstream put back in place",)),
    "ScatterAdd": (("x",), ("the upstream read at the entries x was placed at",)),
    "LogSoftmax": (("z",), ("d log softmax(z)ᵢ/dzⱼ = [i = j] − softmax(z)ⱼ",)),
    "Softmax": (("z",), ("d pᵢ/dzⱼ = pᵢ·([i = j] − pⱼ), with p = softmax(z)",)),
    "CrossEntropy": (("z",), ("d loss/dz = (softmax(z) − onehot(label)) / N: the probabilities, "
                              "minus 1 at the label",)),
    "Margin": (("z",), ("d margin/dz_target = 1, d margin/dzⱼ = −softmax(the other logits)ⱼ",)),
}


def explore_digit(model: Module, digit: np.ndarray, label: int | None = None,
                  per_parameter: int = 3) -> dict[str, Any]:
    """One 28x28 digit through `model` to its cross-entropy against `label` (None: the
    prediction), traced: everything the explorer shows. The model is run in eval mode and
    left as it was: the trace keeps its gradients to itself, and the gradient check runs
    on a float64 copy."""
    was_training = model.training
    model.eval()
    try:
        dtype = model.parameters()[0].dtype
        x = Tensor(np.asarray(digit, dtype).reshape(1, -1), requires_grad=True, name="pixels")
        logits = model(x)
        with no_grad():
            probs = logits.softmax(axis=1).data[0]
        target = int(probs.argmax()) if label is None else int(label)
        loss = cross_entropy(logits, [target])
        loss.name = "loss"
        t = trace(loss, model)
        checks = check_parameters(model, lambda m: cross_entropy(
            m(Tensor(x.data.astype(np.float64))), [target]), per_parameter=per_parameter)
    finally:
        model.train(was_training)
    nodes = [_node(n) for n in t.nodes]
    for n, out in zip(t.nodes, nodes):
        if n.op == "Affine" and len(n.inputs) == 3:
            out["terms"] = _terms(t, n)
    nodes[t.output]["note"] = f"label {target}"
    labels = {path: m.scope_label() for path, m in model.named_modules()}
    _name_layers(t, nodes, labels)
    params = {n.param: n.id for n in t.nodes if n.param}
    badges: dict[str, dict[str, Any]] = {}
    for row in checks:
        badge = badges.setdefault(row.parameter, {"param": row.parameter, "node": params[row.parameter],
                                                  "layer": row.layer, "rows": []})
        badge["rows"].append({"index": list(row.index), "analytic": row.analytic,
                              "numerical": row.numerical, "relative_error": row.relative_error})
    return _finish(t, nodes, _clusters(t, {p: s for p, s in labels.items() if s}),
                   list(badges.values()), source="digit", loss=loss.data[()], probs=probs,
                   prediction=int(probs.argmax()), label=target, expression=None, values=None)


def explore_expression(text: Any, values: Any) -> dict[str, Any]:
    """A scalar expression of named numbers (`values`), computed and traced in float64."""
    expr = parse(text)
    numbers = checked_values(expr, values)
    built = build(expr, numbers)
    with np.errstate(all="ignore"):  # a gradient that is not finite is refused by name
        t = trace(built.output)
    _check_finite(t)
    nodes = [_node(n) for n in t.nodes]
    for n in nodes:
        n["title"] = n["symbol"] = n["name"] or n["title"]
    nodes[t.output]["symbol"] = "out"  # d out / d(a * b) reads better than the whole text twice
    badges = [_expression_badge(expr, numbers, name, t.nodes[i])
              for i, name in ((n.id, n.name) for n in t.nodes if n.op is None and n.requires_grad)
              if name is not None]
    data = _finish(t, nodes, [], badges, source="expression", loss=None, probs=None,
                   prediction=None, label=None, expression=expr.text, values=numbers)
    _add_local_rules(data, built)
    return data


def update_expression(text: Any, values: Any, lr: float) -> dict[str, Any]:
    """One SGD step on the expression's names (each moves against its gradient by lr times
    it), through the engine's backward and optimizer: the values and the output before and
    after."""
    expr = parse(text)
    numbers = checked_values(expr, values)
    built = build(expr, numbers)
    with np.errstate(all="ignore"):  # what is not finite is refused by name below
        built.output.backward()
    for name, leaf in built.leaves.items():
        if leaf.grad is not None and not np.isfinite(leaf.grad.data).all():
            raise ExpressionError(f"the gradient of {expr.text} with respect to {name} is "
                                  f"{leaf.grad.item()} for these values; choose other values")
    SGD(list(built.leaves.values()), lr=lr).step()
    after = {name: leaf.item() for name, leaf in built.leaves.items()}
    try:
        if not all(np.isfinite(v) for v in after.values()):
            raise ExpressionError("the values are not all finite")
        with np.errstate(all="ignore"):
            result = evaluate(expr, after)
    except ExpressionError as e:
        raise ExpressionError(f"a step of lr {lr} moves the values to {after}, where {e}; "
                              f"try a smaller lr") from None
    return {"lr": lr, "values_before": numbers, "values_after": after,
            "before": built.output.item(), "after": result}


def rule_text(op: str, position: int, names: tuple[str, ...] | None = None) -> str:
    """d(op's output)/d(input `position`), in plain maths, with the inputs called `names`
    (default: the rule's own symbols, x, y, W, ...)."""
    symbols, rules = RULES[op]
    raw = names or symbols
    wrapped = [f"({n})" if " " in n else n for n in raw]  # d(a * b), but tanh(a * b)
    return rules[position].format(*wrapped, **{f"r{i}": n for i, n in enumerate(raw)})


# ----------------------------------------------------------------------------- nodes


def _kind(n: Node) -> str:
    if n.param is not None:
        return "parameter"
    if n.op is not None:
        return "op"
    return "input" if n.requires_grad else "constant"


def _scalar(a: np.ndarray | None) -> Any:
    """The number of a one-element array (its own dtype, so JSON writes it exactly), else None."""
    return None if a is None or a.size != 1 else a.reshape(-1)[0]


def _stats(a: np.ndarray | None) -> dict[str, Any] | None:
    if a is None:
        return None
    return {"min": a.min(), "max": a.max(), "norm": _norm(a)}


def _norm(a: np.ndarray) -> float:
    """The Euclidean norm, in the array's own dtype (a summary to read, not a gradient)."""
    return float(np.linalg.norm(a.reshape(-1)))


def _node(n: Node) -> dict[str, Any]:
    """What the page needs of one tensor: numbers when small, pictures when large."""
    value_stats, grad_stats = _stats(n.value), _stats(n.grad)
    kind = _kind(n)
    label = (_SYMBOLS.get(n.op or "", n.op) if n.value.size == 1 else n.op) if n.op is not None \
        else (n.name or n.param or "tensor")
    out: dict[str, Any] = {
        "id": n.id, "op": n.op, "name": n.name, "param": n.param, "shape": list(n.shape),
        "dtype": n.dtype, "inputs": n.inputs, "module": n.module, "kind": kind, "label": label,
        "title": n.param or n.name or f"{n.op} {_shape_text(n.shape)}",
        "symbol": n.param or n.name or n.op,
        "value": _scalar(n.value), "grad": _scalar(n.grad),
        "value_norm": value_stats["norm"] if value_stats else None,
        "grad_norm": grad_stats["norm"] if grad_stats else None,
        "stats": {"value": value_stats, "grad": grad_stats}}
    if 1 < n.value.size <= SMALL:
        out["values"] = n.value.reshape(-1)
        if n.grad is not None:
            out["grads"] = n.grad.reshape(-1)
    out["picture"] = _pictures(n)
    return out


def _pictures(n: Node) -> dict[str, Any] | None:
    """What of the tensor's value and gradient a picture shows, and how: a digit (28×28), a
    grid of neurons, the 784 weights of the units with the largest gradient as 28×28 tiles, or
    a heatmap averaged over blocks. Arrays, coloured by `explorer_draw.drawn`; `signed` says
    whether the value has negative entries (the gradient always may)."""
    v, g, size = n.value, n.grad, n.value.size
    signed = bool(v.size) and float(v.min()) < 0
    if size <= 16:  # ten logits read better as numbers
        return None
    if size == 784 and max(v.shape) == 784:
        return {"kind": "digit", "signed": signed, "value": v.reshape(SIDE, SIDE),
                "grad": None if g is None else g.reshape(SIDE, SIDE)}
    if v.ndim == 1 or (v.ndim == 2 and v.shape[0] == 1):
        rows, cols = grid_shape(size)
        return {"kind": "grid", "rows": rows, "cols": cols, "signed": signed, "value": v.reshape(-1),
                "grad": None if g is None else g.reshape(-1)}
    if v.ndim == 2 and v.shape[0] == 784:
        ranked = np.linalg.norm(g if g is not None else v, axis=0)
        units = [int(u) for u in np.argsort(-ranked, kind="stable")[:TILES]]
        return {"kind": "tiles", "units": units, "signed": signed, "value": v[:, units],
                "grad": None if g is None else g[:, units]}
    if v.ndim == 2:
        f = max(1, math.ceil(max(v.shape) / HEATMAP_SIDE))
        return {"kind": "heatmap", "block": f, "signed": signed, "value": block_mean(v, f),
                "grad": None if g is None else block_mean(g, f)}
    return None


def grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols) of the grid of squares showing n neurons: twice as wide as tall."""
    cols = max(1, math.ceil(math.sqrt(2 * n)))
    return math.ceil(n / cols), cols


def block_mean(m: np.ndarray, f: int) -> np.ndarray:
    """A matrix averaged over f×f blocks (the last ones partial), so a heatmap of it fits."""
    if f == 1:
        return m
    h, w = math.ceil(m.shape[0] / f) * f, math.ceil(m.shape[1] / f) * f
    padded = np.full((h, w), np.nan)
    padded[:m.shape[0], :m.shape[1]] = m
    return np.nanmean(padded.reshape(h // f, f, w // f, f), axis=(1, 3))


def _terms(t: Trace, n: Node) -> dict[str, Any]:
    """Each neuron's sum z_j = Σ_i x_i w_ij + b_j, by its TERMS largest terms: x_i, w_ij, their
    product, and the weight's gradient (the engine's); the page shows them when a neuron is
    clicked. Only the inputs that are not 0 give terms (most pixels, and the units ReLU
    turned off, are 0). For one digit (a batch of one)."""
    x, w = (t.nodes[i] for i in n.inputs[:2])
    live = np.flatnonzero(x.value[0])
    products = w.value[live].T * x.value[0][live]  # (out, live): every term of every neuron
    k = min(TERMS, len(live))
    size = np.abs(products)
    top = np.argpartition(size, len(live) - k, axis=1)[:, len(live) - k:] if k else \
        np.zeros((products.shape[0], 0), np.intp)
    order = np.argsort(-np.take_along_axis(size, top, 1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, 1)  # (out, k): neuron j's largest terms first
    index = live[top]
    cols = np.arange(w.value.shape[1])[:, None]
    return {"index": index, "x": x.value[0][index], "w": w.value[index, cols],
            "product": np.take_along_axis(products, top, 1),
            "wgrad": None if w.grad is None else w.grad[index, cols],
            "nonzero": len(live), "inputs": int(x.value.shape[1]),
            "x_node": x.id, "w_node": w.id, "b_node": n.inputs[2]}


def _name_layers(t: Trace, nodes: list[dict[str, Any]], labels: dict[str, str | None]) -> None:
    """Titles a person can follow: z1 = the sums of the first layer, a1 = relu(z1), ...,
    the logits, the loss."""
    affine = [i for i in t.forward_order if t.nodes[i].op == "Affine"]
    k = 0
    for i in t.forward_order:
        n = t.nodes[i]
        layer = labels.get(n.module or "") or "a layer"
        if n.op == "Affine":
            k += 1
            what = "the logits" if i == affine[-1] else "the sums"
            nodes[i].update(title=f"z{k}, {what} of {layer}", symbol=f"z{k}")
        elif n.op == "ReLU" and k:
            nodes[i].update(title=f"a{k} = relu(z{k})", symbol=f"a{k}")
        elif n.op == "CrossEntropy":
            nodes[i].update(title="loss", symbol="loss")


def _clusters(t: Trace, labels: dict[str, str]) -> list[dict[str, Any]]:
    """One cluster per module that holds nodes: its label, its parent cluster, the nodes it
    holds itself (`own`) and with its sub-modules (`nodes`)."""
    def parent(path: str) -> str | None:
        above = [q for q in labels if q != path and (q == "" or path.startswith(q + "."))]
        return max(above, key=len) if above else None

    def home(module: str | None) -> str | None:
        while module is not None and module not in labels:
            module = module.rpartition(".")[0] if module else None
        return module

    own: dict[str, list[int]] = defaultdict(list)
    for n in t.nodes:
        if (h := home(n.module)) is not None:
            own[h].append(n.id)
    holding: set[str] = set()
    for path in own:
        at: str | None = path
        while at is not None:
            holding.add(at)
            at = parent(at)
    paths = sorted(holding, key=lambda p: (p.count(".") + (p != ""), p))
    index = {p: i for i, p in enumerate(paths)}
    clusters: list[dict[str, Any]] = []
    for p in paths:
        up = parent(p)
        depth = 0 if up is None else clusters[index[up]]["depth"] + 1
        clusters.append({"id": index[p], "module": p, "label": labels[p], "depth": depth,
                         "parent": None if up is None else index[up], "own": own[p], "nodes": []})
    for c in clusters:
        up_index: int | None = c["id"]
        while up_index is not None:
            clusters[up_index]["nodes"].extend(c["own"])
            up_index = clusters[up_index]["parent"]
    return clusters


# ----------------------------------------------------------------------------- steps and checks


def _finish(t: Trace, nodes: list[dict[str, Any]], clusters: list[dict[str, Any]],
            badges: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The whole answer: nodes, the walk's steps and gradient checks (no pictures yet)."""
    for badge in badges:
        for r in badge["rows"]:
            r["agree"] = r["relative_error"] < OK_ERROR or abs(r["analytic"] - r["numerical"]) < OK_DIFFERENCE
        badge["worst"] = max((r["relative_error"] for r in badge["rows"]), default=0.0)
        badge["ok"] = bool(badge["rows"]) and all(r["agree"] for r in badge["rows"])
        badge["tiny"] = badge["ok"] and badge["worst"] >= OK_ERROR  # agree only within the floor
        nodes[badge["node"]]["gradcheck"] = badge
    return {**extra, "nodes": nodes, "output": t.output, "forward_order": t.forward_order,
            "backward_steps": [_step(t, s.node, s.upstream, s.to_inputs) for s in t.backward_steps],
            "clusters": clusters, "gradcheck": badges}


def _step(t: Trace, node: int, upstream: np.ndarray,
          to_inputs: list[tuple[int, np.ndarray]]) -> dict[str, Any]:
    """One step of the walk: the upstream gradient, the op's rules, and what each input got.
    The gradients' positions among the op's inputs are matched in order (an input used
    twice, as in a*a, gets two entries)."""
    n = t.nodes[node]
    op = n.op or ""
    sent, positions = [], iter(enumerate(n.inputs))
    names = _rule_names(t, n)
    for i, g in to_inputs:
        position = next(p for p, j in positions if j == i)
        sent.append({"node": i, "position": position, "grad": _scalar(g),
                     "grad_norm": _norm(g),
                     "rule": rule_text(op, position, names) if op in RULES else None})
    rules = [rule_text(op, p, names) for p in range(len(n.inputs))] if op in RULES else []
    return {"node": node, "op": op, "upstream": _scalar(upstream),
            "upstream_norm": _norm(upstream),
            "rule": "\n".join(rules) if rules else f"(no rule text for {op})",
            "to_inputs": sent}


def _rule_names(t: Trace, n: Node) -> tuple[str, ...] | None:
    """The inputs' own names for a rule between numbers (a, b, a * b, ...), when short; else
    None, and the rule keeps its symbols."""
    if n.op not in RULES or n.value.size != 1:
        return None
    names = []
    for i in n.inputs:
        name = t.nodes[i].name or ""
        if not name or len(name) > 14:
            return None
        names.append(name)
    return tuple(names)


def _add_local_rules(data: dict[str, Any], built: Built) -> None:
    """For a graph of numbers, each step's local derivative d(output)/d(input) as the
    engine's own backward rule gives it for an upstream of 1 (so upstream × local is the
    gradient sent, the chain rule)."""
    tensors = walk(built.output)  # the trace's nodes, in the same order
    with no_grad():
        for step in data["backward_steps"]:
            out = tensors[step["node"]]
            ctx = out._ctx
            assert ctx is not None
            rule = type(ctx).backward(ctx, out, Tensor(np.ones_like(out.data)))
            local = rule if isinstance(rule, tuple) else (rule,)
            for sent in step["to_inputs"]:
                g = local[sent["position"]]
                sent["local"] = None if g is None else _scalar(g.data)


def _check_finite(t: Trace) -> None:
    """Refuse values whose gradient is not a finite number, naming the step that made it."""
    for step in t.backward_steps:
        for i, g in step.to_inputs:
            if not np.isfinite(g).all():
                raise ExpressionError(
                    f"the gradient that {t.nodes[step.node].name} sends to {t.nodes[i].name} is "
                    f"{g.reshape(-1)[0]} for these values (sqrt and log are steep near 0, / near a "
                    f"zero divisor); choose other values")


def _expression_badge(expr: Expression, values: dict[str, float], name: str,
                      node: Node) -> dict[str, Any]:
    """The engine's gradient of one name against a central finite difference in float64."""
    poked = np.array([values[name]])
    analytic = float(node.grad) if node.grad is not None else 0.0
    try:
        numerical = central_difference(lambda: evaluate(expr, {**values, name: float(poked[0])}),
                                       poked, 0, EPS)
    except ExpressionError:  # not finite a step away: no finite difference to compare with
        return {"param": name, "node": node.id, "layer": None, "rows": []}
    scale = max(abs(analytic), abs(numerical))
    return {"param": name, "node": node.id, "layer": None,
            "rows": [{"index": [], "analytic": analytic, "numerical": numerical,
                      "relative_error": abs(analytic - numerical) / scale if scale else 0.0}]}


def _shape_text(shape: tuple[int, ...]) -> str:
    return "scalar" if not shape else str(shape)
