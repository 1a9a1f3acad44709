"""draw_graph: structure read back from the DOT source, real rendering with `dot`, and errors."""
from __future__ import annotations

import html
import importlib.util
import math
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import graphviz
import numpy as np
import pytest

from tinygrad_mnist import Tensor, name_scope
from tinygrad_mnist.graph import GraphvizNotFound, draw_graph, render_to, retain_grads

DEMO = Path(__file__).resolve().parent.parent / "demos" / "visualize_graph.py"

# ----------------------------------------------------------------------------- DOT parsing

NODE = re.compile(r"^\s*(\w+) \[label=(<.*>|\"(?:[^\"\\]|\\.)*\")(.*)\]$")
EDGE = re.compile(r"^\s*(\w+) -> (\w+)")
ATTR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s\]]+)')
CLUSTER_LABEL = re.compile(r"^\s*graph \[.*label=<<B>(.*)</B>>")


@dataclass
class Node:
    lines: list[str]  # the label's text, one entry per line
    attrs: dict[str, str]
    clusters: tuple[str, ...]  # labels of the clusters it sits in, outermost first


@dataclass
class Graph:
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)
    clusters: list[tuple[str, ...]] = field(default_factory=list)

    def by_first_line(self, text: str) -> str:
        [name] = [k for k, n in self.nodes.items() if n.lines[0] == text]
        return name

    def ops(self) -> dict[str, Node]:
        return {k: n for k, n in self.nodes.items() if n.attrs["shape"] == "ellipse"}

    def tensors(self) -> dict[str, Node]:
        return {k: n for k, n in self.nodes.items() if n.attrs["shape"] == "box"}


def parse(source: str) -> Graph:
    """Nodes (with label text and cluster path), edges and clusters of draw_graph's DOT source."""
    g, stack = Graph(), []
    for line in source.splitlines():
        if line.strip().startswith("subgraph cluster_"):
            stack.append(None)
        elif line.strip() == "}" and stack:
            stack.pop()
        elif (m := CLUSTER_LABEL.match(line)) and stack:
            stack[-1] = html.unescape(m.group(1))
            g.clusters.append(tuple(stack))
        elif (m := NODE.match(line)) and m.group(1) not in ("graph", "node", "edge"):
            label = m.group(2)
            if label.startswith("<"):
                text = re.sub(r"<[^>]*>", "\n", label[1:-1].replace("<BR/>", "\n"))
                lines = [html.unescape(s) for s in text.split("\n") if s]
            else:
                lines = label[1:-1].split("\\n")
            attrs = {k: v.strip('"') for k, v in ATTR.findall(m.group(3))}
            g.nodes[m.group(1)] = Node(lines, attrs, tuple(stack))
        elif m := EDGE.match(line):
            g.edges.append((m.group(1), m.group(2)))
    return g


def fmt(x: float) -> str:
    return f"{x:.4g}"


def expression(retain_graph: bool = False) -> Tensor:
    """e = tanh(a*b + a) after backward, with a = 2 and b = -3."""
    a = Tensor(2.0, requires_grad=True, name="a")
    b = Tensor(-3.0, requires_grad=True, name="b")
    e = (a * b + a).tanh()
    e.name = "e"
    retain_grads(e)  # intermediates' gradients are freed unless kept for the picture
    e.backward(retain_graph=retain_graph)
    return e


# ----------------------------------------------------------------------------- structure


def test_expression_nodes_edges_values_and_grads():
    e = expression()
    g = parse(draw_graph(e).source)
    assert len(g.nodes) == 8 and len(g.edges) == 8
    assert sorted(n.lines[0] for n in g.ops().values()) == ["Add", "Mul", "Tanh"]
    assert len(g.tensors()) == 5

    t = math.tanh(-4.0)
    da = (1 - t * t) * (-3.0 + 1.0)  # d tanh(ab + a)/da = (1 - tanh²)(b + 1)
    db = (1 - t * t) * 2.0
    a, b, out = (g.by_first_line(s) for s in ("a", "b", "e"))
    assert g.nodes[a].lines == ["a", "scalar float32", "data = 2", f"grad = {fmt(da)}"]
    assert g.nodes[b].lines == ["b", "scalar float32", "data = -3", f"grad = {fmt(db)}"]
    assert g.nodes[out].lines == ["e", "scalar float32", f"data = {fmt(t)}", "grad = 1"]
    unnamed = {n.lines[1]: k for k, n in g.tensors().items() if n.lines[0] == "scalar float32"}
    ab, ab_plus_a = unnamed["data = -6"], unnamed["data = -4"]
    mul, add, tanh = (g.by_first_line(s) for s in ("Mul", "Add", "Tanh"))
    assert sorted(g.edges) == sorted([(a, mul), (b, mul), (mul, ab), (ab, add), (a, add),
                                      (add, ab_plus_a), (ab_plus_a, tanh), (tanh, out)])


def test_diamond_draws_the_shared_tensor_once():
    a = Tensor(2.0, requires_grad=True, name="a")
    b = a * 2
    b.name = "b"
    e = (b + 1) * (b * 3)
    g = parse(draw_graph(e).source)
    # tensors: a, 2, b, 1, b+1, 3, b*3, e; ops: Mul, Add, Mul, Mul
    assert len(g.tensors()) == 8 and len(g.ops()) == 4
    assert len(g.edges) == 4 * 2 + 4
    b_node = g.by_first_line("b")
    assert sum(s == b_node for s, _ in g.edges) == 2 and sum(d == b_node for _, d in g.edges) == 1


def test_same_tensor_twice_in_one_op_gives_two_edges():
    a = Tensor(3.0, requires_grad=True, name="a")
    g = parse(draw_graph(a * a).source)
    assert len(g.nodes) == 3
    assert g.edges.count((g.by_first_line("a"), g.by_first_line("Mul"))) == 2


def test_broadcasting_shows_all_shapes_small_values_and_large_grad_norms():
    x = Tensor(np.arange(3, dtype=np.float32).reshape(3, 1), requires_grad=True, name="x")
    y = Tensor(np.ones((1, 4), np.float32), requires_grad=True, name="y")
    z = x + y
    z.name = "z"
    z.retain_grad()
    z.backward(np.ones((3, 4), np.float32))
    g = parse(draw_graph(z).source)
    assert g.nodes[g.by_first_line("x")].lines == ["x", "(3, 1) float32", "data = [[0], [1], [2]]",
                                                   "grad = [[4], [4], [4]]"]
    assert g.nodes[g.by_first_line("y")].lines == ["y", "(1, 4) float32", "data = [[1, 1, 1, 1]]",
                                                   "grad = [[3, 3, 3, 3]]"]
    # 12 elements: too many to list, so no data and the gradient's norm
    assert g.nodes[g.by_first_line("z")].lines == ["z", "(3, 4) float32",
                                                   f"‖grad‖ = {fmt(12 ** 0.5)}"]


def test_parameters_intermediates_and_constants_have_three_styles():
    w = Tensor([1.0, 2.0], requires_grad=True, name="w")
    x = Tensor([3.0, 4.0], name="x")  # a data batch: no grad, still drawn
    out = (w * x * 0.5).sum()
    out.name = "out"
    g = parse(draw_graph(out).source)
    style = {k: (n.attrs["style"], n.attrs.get("fillcolor")) for k, n in g.tensors().items()}
    param, data = g.by_first_line("w"), g.by_first_line("x")
    const = next(k for k, n in g.tensors().items() if "data = 0.5" in n.lines)
    inter = [k for k, n in g.tensors().items() if k not in (param, data, const)]
    assert len(inter) == 3  # w*x, *0.5, sum
    assert style[data] == style[const] and "dashed" in style[const][0]
    assert len({style[param], style[const], style[inter[0]]}) == 3
    assert all(style[k] == style[inter[0]] for k in inter)
    assert "bold" in style[param][0] and g.nodes[param].attrs["penwidth"] == "2"
    assert g.nodes[data].lines == ["x", "(2,) float32", "data = [3, 4]"]


def test_flags_hide_values_and_grads():
    e = expression()
    def lines(**kw):
        return [s for n in parse(draw_graph(e, **kw).source).nodes.values() for s in n.lines]
    assert sum(s.startswith("data") for s in lines()) == 5
    assert sum(s.startswith("grad") for s in lines()) == 5
    assert not any(s.startswith("data") for s in lines(show_values=False))
    assert sum(s.startswith("grad") for s in lines(show_values=False)) == 5
    assert not any(s.startswith("grad") for s in lines(show_grads=False))
    before = (Tensor(2.0, requires_grad=True) * 3).tanh()
    assert not any("grad" in s for n in parse(draw_graph(before).source).nodes.values()
                   for s in n.lines)


def test_rankdir():
    e = expression()
    assert "rankdir=LR" in draw_graph(e).source
    assert "rankdir=TB" in draw_graph(e, rankdir="TB").source
    with pytest.raises(ValueError, match="LR, TB"):
        draw_graph(e, rankdir="XY")


def mlp(group: bool = True) -> graphviz.Digraph:
    rng = np.random.default_rng(0)
    x = Tensor(rng.random((2, 2), dtype=np.float32), name="x")
    W1 = Tensor(rng.random((2, 3), dtype=np.float32), requires_grad=True, name="W1")
    b1 = Tensor(np.zeros(3, np.float32), requires_grad=True, name="b1")
    W2 = Tensor(rng.random((3, 1), dtype=np.float32), requires_grad=True, name="W2")
    shared = Tensor(1.0, requires_grad=True, name="shared")  # used in both layers
    with name_scope("MLP"):
        with name_scope("Linear(2→3)"):
            h = x @ W1 + b1 * shared
        h = h.relu()
        with name_scope("Linear(3→1)"):
            y = (h @ W2) * shared
    loss = y.sum()
    loss.name = "loss"
    loss.backward()
    return draw_graph(loss, group_scopes=group)


def test_name_scopes_become_nested_clusters():
    g = parse(mlp().source)
    lin1, lin2 = ("MLP", "Linear(2→3)"), ("MLP", "Linear(3→1)")
    assert sorted(g.clusters) == [("MLP",), lin1, lin2]
    where = {n.lines[0]: n.clusters for n in g.nodes.values()}
    ops = {k: n.clusters for k, n in g.ops().items()}
    assert sorted((g.nodes[k].lines[0], c) for k, c in ops.items()) == sorted([
        ("MatMul", lin1), ("Mul", lin1), ("Add", lin1), ("ReLU", ("MLP",)),
        ("MatMul", lin2), ("Mul", lin2), ("Sum", ())])
    assert where["W1"] == where["b1"] == lin1 and where["W2"] == lin2
    assert where["shared"] == ("MLP",)  # its users' common scope
    assert where["x"] == () and where["loss"] == ()
    for op, c in ops.items():  # an op's output tensor is boxed with it
        [out] = [d for s, d in g.edges if s == op]
        assert g.nodes[out].clusters == c


def test_group_scopes_false_draws_no_clusters():
    source = mlp(group=False).source
    assert "subgraph" not in source
    assert len(parse(source).nodes) == len(parse(mlp().source).nodes)


def test_a_graph_freed_by_backward_still_draws():
    freed = expression()
    kept = expression(retain_graph=True)
    assert freed._ctx.saved is None and kept._ctx.saved is not None
    assert draw_graph(freed).source == draw_graph(kept).source


def test_labels_are_html_escaped():
    a = Tensor(1.0, requires_grad=True, name="x<1> & y")
    with name_scope("<scope & co>"):
        out = a * 2
    dot = draw_graph(out)
    assert "x&lt;1&gt; &amp; y" in dot.source and "&lt;scope &amp; co&gt;" in dot.source
    g = parse(dot.source)
    assert g.clusters == [("<scope & co>",)] and g.by_first_line("x<1> & y")


def test_deep_chain_is_walked_without_recursion():
    a = Tensor(1.0, requires_grad=True, name="a")
    x = a
    for _ in range(3000):
        x = x + a
    g = parse(draw_graph(x, max_nodes=None, show_values=False).source)
    assert len(g.ops()) == 3000 and len(g.tensors()) == 3001 and len(g.edges) == 9000


# ----------------------------------------------------------------------------- max_nodes


def test_ten_thousand_ops_give_a_small_summary():
    a = Tensor(1.0, requires_grad=True, name="a")
    x = a
    for _ in range(5000):
        x = x * 0.5 + a
    dot = draw_graph(x)
    # tensors: a, 5000 constants 0.5, 10,000 op outputs; plus 10,000 op nodes
    [(name, node)] = parse(dot.source).nodes.items()
    text = " ".join(node.lines)
    for part in ("graph too large to draw: 25,001 nodes", "10,000 ops: 5,000 Mul, 5,000 Add",
                 "max_nodes=500", "max_nodes=None"):
        assert part in text
    assert len(dot.source) < 1000


def test_max_nodes_is_inclusive():
    e = expression()  # 8 nodes
    assert len(parse(draw_graph(e, max_nodes=8).source).nodes) == 8
    [node] = parse(draw_graph(e, max_nodes=7).source).nodes.values()
    assert "8 nodes (3 ops: 1 Mul, 1 Add, 1 Tanh) > max_nodes=7" in node.lines[0]


# ----------------------------------------------------------------------------- rendering


def svg_groups(path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for el in ET.parse(path).getroot().iter("{http://www.w3.org/2000/svg}g"):
        counts[el.get("class")] = counts.get(el.get("class"), 0) + 1
    return counts


def test_svg_has_one_group_per_node_edge_and_cluster(dot_binary, tmp_path):
    dot = mlp()
    path = render_to(dot, tmp_path / "mlp.svg")
    g = parse(dot.source)
    counts = svg_groups(path)
    # 5 leaves (x, W1, b1, W2, shared), 7 ops and their 7 outputs; 12 inputs + 7 outputs wired
    assert counts["node"] == len(g.nodes) == 19 and counts["edge"] == len(g.edges) == 19
    assert counts["cluster"] == 3
    assert (tmp_path / "mlp.gv").read_text(encoding="utf-8") == dot.source
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.gv", "mlp.svg"]  # no temp files


def test_draw_graph_path_renders_png_and_pdf(dot_binary, tmp_path):
    e = expression()
    draw_graph(e, path=tmp_path / "e.png")
    png = (tmp_path / "e.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    draw_graph(e, path=str(tmp_path / "sub" / "e.PDF"))
    assert (tmp_path / "sub" / "e.PDF").read_bytes().startswith(b"%PDF")
    assert (tmp_path / "sub" / "e.gv").exists()


def test_demo_writes_its_pictures(dot_binary, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("visualize_graph", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    demo.main(["--out-dir", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{stem}.{ext}" for stem in ("expression", "mlp_loss") for ext in ("gv", "png", "svg")]
    assert svg_groups(tmp_path / "mlp_loss.svg")["cluster"] == 3
    assert str(tmp_path / "mlp_loss") in capsys.readouterr().out


@pytest.fixture
def no_dot(tmp_path, monkeypatch):
    """A PATH on which the Graphviz `dot` program cannot be found."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def test_source_formats_need_no_dot_binary(no_dot, tmp_path):
    e = expression()
    for name in ("e.gv", "e.dot"):
        dot = draw_graph(e, path=tmp_path / name)
        assert (tmp_path / name).read_text(encoding="utf-8") == dot.source


def test_missing_dot_binary_says_how_to_install_and_keeps_the_source(no_dot, tmp_path):
    e = expression()
    with pytest.raises(GraphvizNotFound) as info:
        draw_graph(e, path=tmp_path / "e.svg")
    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert "apt-get install graphviz" in message and "brew install graphviz" in message
    assert str(tmp_path / "e.gv") in message
    assert (tmp_path / "e.gv").read_text(encoding="utf-8").startswith("digraph")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.gv", "empty-bin"]


# ----------------------------------------------------------------------------- bad arguments


def test_bad_arguments():
    e = expression()
    with pytest.raises(TypeError, match="needs a Tensor, got float"):
        draw_graph(1.0)
    with pytest.raises(ValueError, match=r"\.svg, \.png, \.pdf, \.gv, \.dot"):
        draw_graph(e, path="picture.jpg")


def test_retain_grads_keeps_every_gradient_and_only_until_asked():
    a = Tensor(2.0, requires_grad=True, name="a")
    h = a * 3.0
    out = h.tanh()
    out.backward()
    assert h.grad is None and out.grad is None  # freed once used, as in PyTorch
    out = (a * 3.0).tanh()
    retain_grads(out)
    out.backward()
    g = parse(draw_graph(out).source)
    assert sum(any(s.startswith("grad") for s in n.lines) for n in g.tensors().values()) == 3
    assert out.grad.item() == 1.0


def test_dot_source_is_the_same_in_every_process():
    """Nested clusters used to follow set order, which changes with Python's hash seed."""
    code = ("import numpy as np\n"
            "from tinygrad_mnist import Tensor, draw_graph\n"
            "from tinygrad_mnist.nn import MLP, cross_entropy\n"
            "m = MLP([784, 16, 16, 10], seed=0)\n"
            "x = Tensor(np.zeros((2, 784), np.float32))\n"
            "print(draw_graph(cross_entropy(m(x), np.array([1, 2]))).source)\n")
    sources = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout
               for seed in (1, 2, 3)}
    assert len(sources) == 1 and "cluster_" in sources.pop()


def test_two_layers_with_the_same_label_are_two_boxes():
    """784-..-3-3-3-..: Linear(3→3) twice. Each module call opens its own scope, so the
    picture has a box per layer, not one box holding both."""
    from tinygrad_mnist.nn import MLP, cross_entropy
    model = MLP([4, 3, 3, 3, 2], seed=0)
    loss = cross_entropy(model(Tensor(np.ones((2, 4), np.float32))), [0, 1])
    source = draw_graph(loss).source
    assert source.count("<B>Linear(3→3)</B>") == 2 and source.count("<B>Linear(4→3)</B>") == 1
    assert source == draw_graph(loss).source  # the same DOT source every time
