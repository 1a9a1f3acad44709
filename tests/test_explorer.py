"""The graph explorer's computing side: the safe expression parser, and the data the page shows,
held to the engine's own backward bit for bit and to TensorFlow's GradientTape."""
import ast
import copy
import inspect

import numpy as np
import orjson
import pytest

from tinygrad_mnist import Tensor, ops
from tinygrad_mnist.config import TrainConfig, build_model
from tinygrad_mnist.explorer import (
    RULES,
    SMALL,
    TERMS,
    explore_digit,
    explore_expression,
    rule_text,
    update_expression,
)
from tinygrad_mnist.explorer_draw import drawn
from tinygrad_mnist.expression import (
    MAX_DEPTH,
    MAX_LENGTH,
    ExpressionError,
    build,
    checked_values,
    evaluate,
    parse,
)
from tinygrad_mnist.nn import MLP, cross_entropy
from tinygrad_mnist.tensor import Function
from tinygrad_mnist.trace import trace

VALUES = {"a": 2.0, "b": -3.0, "c": 10.0}

# ----------------------------------------------------------------------------- the parser

REFUSED = [  # (expression, values, what the one-line message must say)
    ("foo(a)", {"a": 1}, "unknown function foo; the functions are exp log tanh relu sigmoid sqrt"),
    ("__import__('os')", {}, "unknown function __import__"),
    ("a.real", {"a": 1}, "an attribute (x.y) is not allowed"),
    ("(a).__class__", {"a": 1}, "an attribute (x.y) is not allowed"),
    ("a[0]", {"a": 1}, "indexing (x[i]) is not allowed"),
    ("lambda: a", {"a": 1}, "lambda is not allowed"),
    ("a < b", {"a": 1, "b": 2}, "a comparison is not allowed"),
    ("a if b else c", VALUES, "if/else is not allowed"),
    ("a % b", {"a": 1, "b": 2}, "the operator % is not allowed"),
    ("a @ b", {"a": 1, "b": 2}, "the operator @ is not allowed"),
    ("+a", {"a": 1}, "the operator unary + is not allowed"),
    ("'a' * 3", {}, "'a' is not allowed"),
    ("True * a", {"a": 1}, "True is not allowed"),
    ("exp(a, b)", {"a": 1, "b": 2}, "exp takes exactly one argument"),
    ("exp(x=a)", {"a": 1}, "exp takes exactly one argument"),
    ("exp", {}, "exp is a function: call it, as in exp(a)"),
    ("_a * 2", {"_a": 1}, "the name _a is not allowed"),
    ("a ** 101", {"a": 1}, "the exponent of a ** 101 is 101; exponents may be at most 100"),
    ("a ** -b", {"a": 2, "b": 150}, "the exponent of a ** (-b) is -150"),
    ("1e999 * a", {"a": 1}, "is too large for a float"),
    ("a" * (MAX_LENGTH + 1), {}, f"the expression is {MAX_LENGTH + 1} characters long; at most 500"),
    ("-" * MAX_DEPTH + "a", {"a": 1}, f"nests {MAX_DEPTH + 1} operations deep; at most 50"),
    ("(" * 210 + "a" + ")" * 210, {"a": 1}, "nests deeper than 50 levels"),
    ("a b", {"a": 1, "b": 2}, "the expression is not valid: invalid syntax"),
    ("  ", {}, "the expression is empty"),
    ("a\x00", {"a": 1}, "the expression contains a null character"),
    (42, {}, "the expression must be a string, got int"),
    ("a * b", {"a": 1}, "no value for b: give every name of the expression a number"),
    ("a * 2", {"a": 1, "z": 3}, "z has a value but is not in the expression (its names: a)"),
    ("a * 2", {"a": float("nan")}, "the value of a is nan; it must be a finite number"),
    ("a * 2", {"a": float("inf")}, "the value of a is inf; it must be a finite number"),
    ("a * 2", {"a": True}, "the value of a must be a number, got bool"),
    ("a * 2", {"a": "2"}, "the value of a must be a number, got str"),
    ("a * 2", [1], '"values" must be an object of name: number'),
    ("log(a)", {"a": -1}, "log(a) is nan for these values; choose values where every step is a finite"),
    ("a / b", {"a": 1, "b": 0}, "a / b is inf for these values"),
    ("sqrt(a)", {"a": 0}, "the gradient that sqrt(a) sends to a is inf for these values"),
    ("2 * 3", {}, "the expression uses no name, so nothing has a gradient"),
]


@pytest.mark.parametrize("text, values, message", REFUSED, ids=[str(r[0])[:24] for r in REFUSED])
def test_every_refusal_says_what_was_wrong_in_one_line(text, values, message):
    with pytest.raises(ExpressionError) as info:
        explore_expression(text, values)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_parser_never_runs_the_text(monkeypatch):
    """ast.parse only makes a tree (compile with PyCF_ONLY_AST); nothing is ever turned into
    code or run."""
    import builtins
    real_compile = builtins.compile

    def forbidden(*args, **kwargs):
        raise AssertionError("user text reached eval or exec")

    def tree_only(source, filename, mode, flags=0, *args, **kwargs):
        assert flags & ast.PyCF_ONLY_AST, "user text was compiled to code"
        return real_compile(source, filename, mode, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    monkeypatch.setattr(builtins, "compile", tree_only)
    assert explore_expression("tanh(a*b + c)", VALUES)["values"] == VALUES
    with pytest.raises(ExpressionError):
        parse("__import__('os').system('echo hacked')")
    monkeypatch.undo()


def test_limits_are_inclusive_and_names_come_in_reading_order():
    assert len(parse("-" * (MAX_DEPTH - 1) + "a").text) == MAX_DEPTH
    assert parse("a" * MAX_LENGTH).names == ("a" * MAX_LENGTH,)
    assert parse("c * exp(b) + a * c").names == ("c", "b", "a")
    assert evaluate(parse("a ** 100"), {"a": 1.0}) == 1.0


def test_an_expression_is_built_with_the_engines_ops_in_float64():
    expr = parse("sigmoid(a) * relu(b) - sqrt(c) / exp(a) + log(c) ** 2 - -a")
    built = build(expr, checked_values(expr, {"a": 0.5, "b": 2.0, "c": 3.0}))
    ops_used = {type(t._ctx).__name__ for t in _tensors(built.output)}
    assert ops_used == {"Sigmoid", "ReLU", "Mul", "Sqrt", "Exp", "Div", "Sub", "Log", "Pow", "Add", "Neg"}
    assert built.output.dtype == np.float64
    expected = (1 / (1 + np.exp(-0.5)) * 2 - np.sqrt(3) / np.exp(0.5) + np.log(3) ** 2 + 0.5)
    assert built.output.item() == pytest.approx(expected, rel=1e-14)
    assert built.output.name == ast.unparse(ast.parse(expr.text))


def _tensors(out):
    from tinygrad_mnist.trace import walk
    return [t for t in walk(out) if t._ctx is not None]


# ----------------------------------------------------------------------------- an expression


def test_expression_data_is_the_engines_backward_bit_for_bit():
    data = explore_expression("tanh(a*b + c)", VALUES)
    leaves = {k: Tensor(v, requires_grad=True, dtype=np.float64) for k, v in VALUES.items()}
    out = (leaves["a"] * leaves["b"] + leaves["c"]).tanh()
    t = trace(out)
    out.backward()
    by_name = {n["name"]: n for n in data["nodes"]}
    for name, leaf in leaves.items():
        assert by_name[name]["grad"] == leaf.grad.item()  # bit for bit
        assert by_name[name]["value"] == VALUES[name]
    assert by_name["tanh(a * b + c)"]["value"] == out.item()
    assert data["forward_order"] == t.forward_order
    assert [s["node"] for s in data["backward_steps"]] == [s.node for s in t.backward_steps]
    assert [data["nodes"][i]["op"] for i in data["forward_order"]] == ["Mul", "Add", "Tanh"]
    for step in data["backward_steps"]:  # upstream x local = sent, the chain rule
        assert step["upstream"] == data["nodes"][step["node"]]["grad"]
        for sent in step["to_inputs"]:
            assert sent["grad"] == pytest.approx(step["upstream"] * sent["local"], rel=1e-15)
    mul = data["backward_steps"][-1]
    assert [s["rule"] for s in mul["to_inputs"]] == ["d(a·b)/da = b", "d(a·b)/db = a"]
    assert [s["local"] for s in mul["to_inputs"]] == [-3.0, 2.0]
    assert data["loss"] is None and data["probs"] is None and data["values"] == VALUES
    assert all(b["ok"] and b["worst"] < 1e-6 for b in data["gradcheck"])
    assert [b["param"] for b in data["gradcheck"]] == ["a", "b", "c"]


def test_a_name_used_twice_gets_one_entry_per_use_and_the_sum():
    data = explore_expression("a * a + b", {"a": 3.0, "b": 1.0})
    mul = next(s for s in data["backward_steps"] if s["op"] == "Mul")
    sent = [(s["position"], s["grad"], s["local"]) for s in mul["to_inputs"]]
    assert sent == [(0, 3.0, 3.0), (1, 3.0, 3.0)]
    a = next(n for n in data["nodes"] if n["name"] == "a")
    assert a["grad"] == 6.0
    constant = explore_expression("a * 2", {"a": 1.5})
    assert [n["kind"] for n in constant["nodes"]] == ["input", "constant", "op"]
    assert [s["node"] for s in constant["backward_steps"][0]["to_inputs"]] == [0]  # none to the 2


def test_the_svg_has_every_node_and_edge_by_id_and_no_inline_style(dot_binary):
    data = drawn(explore_expression("tanh(a*b + c)", VALUES))
    svg = data["svg"]
    assert svg.startswith("<svg") and "style=" not in svg and "<script" not in svg
    for n in data["nodes"]:
        assert svg.count(f'data-node="{n["id"]}"') == 1
        for i in n["inputs"]:
            assert f'data-from="{i}" data-to="{n["id"]}"' in svg
    assert ">data 2</text>" in svg and ">grad &#45;0.004023</text>" in svg  # every node: data and grad


def test_update_moves_each_name_against_its_gradient():
    data = explore_expression("tanh(a*b + c)", VALUES)
    step = update_expression("tanh(a*b + c)", VALUES, lr=0.5)
    grads = {n["name"]: n["grad"] for n in data["nodes"] if n["kind"] == "input"}
    assert step["values_after"] == {k: VALUES[k] - 0.5 * grads[k] for k in VALUES}
    assert step["before"] == data["nodes"][data["output"]]["value"] and step["after"] < step["before"]


def test_an_update_that_is_not_finite_is_refused_by_name():
    with pytest.raises(ExpressionError, match="gradient of 1 / a with respect to a is -inf"):
        update_expression("1 / a", {"a": 1e-200}, lr=0.1)
    with pytest.raises(ExpressionError,
                       match=r"a step of lr 2.0 moves the values to \{'a': -1.0\}, where log\(a\) is nan"):
        update_expression("log(a)", {"a": 1.0}, lr=2.0)


# ----------------------------------------------------------------------------- a digit


@pytest.fixture(scope="module")
def mlp_data():
    model = MLP([784, 16, 12, 10], seed=0)
    ink = np.arange(784).reshape(28, 28) % 3 == 0  # a third of the pixels: terms skip the rest
    digit = np.random.default_rng(1).random((28, 28), dtype=np.float32) * ink
    before = {k: v.tobytes() for k, v in model.state_dict().items()}
    data = explore_digit(model, digit, 7)
    assert {k: v.tobytes() for k, v in model.state_dict().items()} == before  # never written
    assert all(p.grad is None for p in model.parameters()) and model.training
    return model, digit, data


def test_digit_data_is_the_engines_backward_bit_for_bit(mlp_data):
    model, digit, data = mlp_data
    twin = copy.deepcopy(model).eval()
    x = Tensor(digit.reshape(1, -1), requires_grad=True)
    logits = twin(x)
    loss = cross_entropy(logits, [7])
    logits.retain_grad()
    loss.backward()
    nodes = {n["param"] or n["name"] or n["op"]: n for n in data["nodes"]}
    assert data["loss"] == loss.data[()] and data["label"] == 7
    np.testing.assert_array_equal(data["probs"], logits.softmax(axis=1).data[0])
    np.testing.assert_array_equal(nodes["pixels"]["grads"], x.grad.data[0])
    logits_node = data["nodes"][data["nodes"][data["output"]]["inputs"][0]]
    np.testing.assert_array_equal(logits_node["grads"], logits.grad.data[0])
    for name, p in twin.named_parameters():
        n = nodes[name]
        assert n["grad_norm"] == float(np.linalg.norm(p.grad.data.reshape(-1)))
        if p.size <= SMALL:
            np.testing.assert_array_equal(n["grads"], p.grad.data.reshape(-1))
    assert [data["nodes"][i]["op"] for i in data["forward_order"]] == \
        ["Affine", "ReLU", "Affine", "ReLU", "Affine", "CrossEntropy"]
    assert [s["node"] for s in data["backward_steps"]] == data["forward_order"][::-1]  # the walk's order


def test_a_neurons_terms_are_its_largest_products_and_the_engines_weight_gradients(mlp_data):
    model, digit, data = mlp_data
    first = data["nodes"][data["forward_order"][0]]
    terms, x = first["terms"], digit.reshape(-1)
    w = model.layers[0].weight.data
    weight_grad = np.outer(x, data["nodes"][first["id"]]["grads"])  # batch of one: x_i * g_j, exact
    assert terms["nonzero"] == np.count_nonzero(x) and terms["inputs"] == 784
    for j in range(16):
        products = x * w[:, j]
        top = terms["index"][j]
        assert len(top) == TERMS and set(top) <= set(np.flatnonzero(x))
        np.testing.assert_array_equal(terms["product"][j], products[top])
        assert np.all(np.abs(products[top][:-1]) >= np.abs(products[top][1:]))
        assert np.abs(products[top][-1]) >= np.sort(np.abs(products))[-TERMS]
        np.testing.assert_array_equal(terms["wgrad"][j], weight_grad[top, j])


def test_pictures_clusters_and_titles(mlp_data):
    model, digit, data = mlp_data
    kinds = [(n["param"] or n["name"] or n["op"], (n["picture"] or {}).get("kind")) for n in data["nodes"]]
    assert kinds == [("pixels", "digit"), ("layers.0.weight", "tiles"), ("layers.0.bias", None),
                     ("Affine", None), ("ReLU", None), ("layers.2.weight", "heatmap"),
                     ("layers.2.bias", None), ("Affine", None), ("ReLU", None),
                     ("layers.4.weight", "heatmap"), ("layers.4.bias", None), ("Affine", None),
                     ("loss", None)]  # up to 16 numbers read better as numbers
    pixels = data["nodes"][0]
    np.testing.assert_array_equal(pixels["picture"]["value"], digit)  # computed: arrays
    tiles = data["nodes"][1]["picture"]
    np.testing.assert_array_equal(tiles["value"], model.layers[0].weight.data[:, tiles["units"]])
    shown = drawn(copy.deepcopy(data))["nodes"]  # drawn: PNGs
    assert shown[0]["picture"]["value"].startswith("data:image/png;base64,")
    assert shown[1]["picture"]["grad"].startswith("data:image/png;base64,")
    assert pixels["value"] is None and pixels["value_norm"] > 0 and len(pixels["values"]) == 784
    clusters = {c["label"]: c for c in data["clusters"]}
    assert set(clusters) == {"MLP(784-16-12-10)", "Linear(784→16)", "Linear(16→12)", "Linear(12→10)"}
    assert clusters["MLP(784-16-12-10)"]["parent"] is None
    assert len(clusters["Linear(784→16)"]["nodes"]) == 3 and len(clusters["MLP(784-16-12-10)"]["nodes"]) == 11
    titles = [data["nodes"][i]["title"] for i in data["forward_order"]]
    assert titles == ["z1, the sums of Linear(784→16)", "a1 = relu(z1)", "z2, the sums of Linear(16→12)",
                      "a2 = relu(z2)", "z3, the logits of Linear(12→10)", "loss"]
    assert [b["param"] for b in data["gradcheck"]] == [n for n, _ in MLP([784, 2, 2, 10]).named_parameters()]
    assert all(b["ok"] and len(b["rows"]) == 3 for b in data["gradcheck"])


def test_a_default_size_graph_stays_small_and_a_deep_one_is_drawn(dot_binary):
    model = build_model(TrainConfig())  # 784-512-256-10
    data = drawn(explore_digit(model, np.random.default_rng(0).random((28, 28), dtype=np.float32)))
    assert data["label"] == data["prediction"]  # no label: the prediction's
    size = len(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY))
    assert size < 1_000_000, f"{size:,} bytes of JSON for the default model"
    kinds = [(n["picture"] or {}).get("kind") for n in data["nodes"]]
    assert kinds.count("grid") == 6 and kinds.count("tiles") == 1 and kinds.count("heatmap") == 2
    deep = drawn(explore_digit(MLP([784, 64, 48, 32, 16, 10], seed=0), np.zeros((28, 28), np.float32), 3))
    assert len(deep["clusters"]) == 6 and deep["svg"].count('class="cluster"') == 6
    assert all(deep["svg"].count(f'data-node="{n["id"]}"') == 1 for n in deep["nodes"])
    assert deep["nodes"][deep["forward_order"][0]]["terms"]["nonzero"] == 0  # a blank digit: no terms


def test_a_sure_digits_tiny_gradients_pass_their_check_within_the_floor():
    model = MLP([784, 8, 10], seed=0)
    model.layers[-1].bias.data[3] = 60  # p(3) = 1 - 1e-26: gradients below what differences resolve
    data = explore_digit(model, np.full((28, 28), 0.5, np.float32), 3)
    assert all(b["ok"] and b["tiny"] for b in data["gradcheck"])
    data = explore_digit(model, np.full((28, 28), 0.5, np.float32), 4)  # sure, and wrong: large
    rows = [r for b in data["gradcheck"] for r in b["rows"]]
    assert all(b["ok"] for b in data["gradcheck"]) and all(r["agree"] for r in rows)
    assert max(r["relative_error"] for r in rows if abs(r["analytic"]) > 1e-3) < 1e-5


def test_the_computing_modules_draw_and_serve_nothing():
    from conftest import ROOT
    drawing = {"flask", "werkzeug", "matplotlib", "PIL", "graphviz", "explorer_draw"}
    for module, refused in (("explorer", drawing), ("expression", drawing),
                            ("explorer_draw", {"flask", "werkzeug", "matplotlib"})):
        tree = ast.parse((ROOT / "tinygrad_mnist" / f"{module}.py").read_text(encoding="utf-8"))
        imported = set()
        for n in ast.walk(tree):
            if isinstance(n, ast.Import):
                imported |= {a.name.split(".")[0] for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.module:
                imported.add(n.module.split(".")[0])
        assert imported and not imported & refused, (module, imported & refused)


# ----------------------------------------------------------------------------- the rules


def _applied(name):
    """The op `name` applied once, on float64 inputs that all need a gradient."""
    def leaf(*shape, low=0.5):
        rng = np.random.default_rng(len(shape))
        return Tensor(rng.uniform(low, 2.0, shape), requires_grad=True)
    x, y, m = leaf(3), leaf(3), leaf(2, 3)
    return {
        "Add": lambda: x + y, "Sub": lambda: x - y, "Neg": lambda: -x, "Mul": lambda: x * y,
        "Div": lambda: x / y, "Pow": lambda: x ** y, "MatMul": lambda: m @ leaf(3, 2),
        "Sum": lambda: x.sum(), "Max": lambda: x.max(), "Exp": x.exp, "Log": x.log, "Sqrt": x.sqrt,
        "ReLU": x.relu, "Tanh": x.tanh, "Sigmoid": x.sigmoid, "Reshape": lambda: m.reshape(-1),
        "Transpose": lambda: m.T, "BroadcastTo": lambda: x.broadcast_to((2, 3)),
        "Cast": lambda: x.astype(np.float32), "GetItem": lambda: x[0],
        "ScatterAdd": lambda: ops.ScatterAdd.apply(x, idx=1, shape=(2, 3)),
        "LogSoftmax": lambda: m.log_softmax(), "Softmax": lambda: m.softmax(),
        "Affine": lambda: ops.Affine.apply(m, leaf(3, 4), leaf(4)),
        "CrossEntropy": lambda: cross_entropy(m, [0, 2]),
        "Margin": lambda: ops.Margin.apply(m, target=1),
    }[name]()


OPS = sorted(name for name, cls in inspect.getmembers(ops, inspect.isclass)
             if issubclass(cls, Function) and cls is not Function)


@pytest.mark.parametrize("op", OPS)
def test_every_op_has_a_plain_rule_for_each_of_its_inputs(op):
    out = _applied(op)
    assert type(out._ctx).__name__ == op
    symbols, rules = RULES[op]
    assert len(rules) == len(symbols) == len(out._ctx.parents)
    for position in range(len(rules)):
        text = rule_text(op, position)
        assert text and "{" not in text


def test_rules_between_numbers_use_the_numbers_names():
    assert rule_text("Mul", 0, ("a", "b")) == "d(a·b)/da = b"
    assert rule_text("ReLU", 0) == "d relu(x)/dx = 1 if x > 0 else 0"
    data = explore_expression("tanh(a*b + c)", VALUES)
    rules = [s["rule"] for s in data["backward_steps"]]
    assert rules[0] == "d tanh(a * b + c)/d(a * b + c) = 1 − tanh²(a * b + c)"
    assert rules[1] == "d((a * b) + c)/d(a * b) = 1\nd((a * b) + c)/dc = 1"
    assert rule_text("Log", 0, ("a * b",)) == "d ln(a * b)/d(a * b) = 1/(a * b)"


# ----------------------------------------------------------------------------- TensorFlow


def test_the_numbers_agree_with_tensorflows_gradient_tape(tf, mlp_data):
    data = explore_expression("tanh(a*b + c) * sigmoid(a) - log(c) / b", VALUES)
    v = {k: tf.Variable(x, dtype=tf.float64) for k, x in VALUES.items()}
    with tf.GradientTape() as tape:
        out = tf.tanh(v["a"] * v["b"] + v["c"]) * tf.sigmoid(v["a"]) - tf.math.log(v["c"]) / v["b"]
    theirs = dict(zip(v, tape.gradient(out, list(v.values()))))
    ours = {n["name"]: n["grad"] for n in data["nodes"] if n["kind"] == "input"}
    for k in VALUES:
        assert ours[k] == pytest.approx(float(theirs[k]), rel=1e-12)

    model, digit, data = mlp_data
    layers = [m for m in model.layers if hasattr(m, "weight")]
    ws = [tf.Variable(m.weight.data) for m in layers]
    bs = [tf.Variable(m.bias.data) for m in layers]
    x = tf.constant(digit.reshape(1, -1))
    with tf.GradientTape() as tape:
        h = x
        for i, (w, b) in enumerate(zip(ws, bs)):
            h = h @ w + b
            if i < len(ws) - 1:
                h = tf.nn.relu(h)
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=[7], logits=h)[0]
    grads = tape.gradient(loss, ws + bs)
    assert data["loss"] == pytest.approx(float(loss), rel=1e-5)
    by_param = {n["param"]: n for n in data["nodes"] if n["param"]}
    names = [f"layers.{2 * i}.weight" for i in range(3)] + [f"layers.{2 * i}.bias" for i in range(3)]
    for name, g in zip(names, grads):
        assert by_param[name]["grad_norm"] == pytest.approx(float(tf.norm(g)), rel=1e-5)
    np.testing.assert_allclose(by_param["layers.4.bias"]["grads"], grads[-1].numpy(), rtol=1e-5, atol=1e-7)
