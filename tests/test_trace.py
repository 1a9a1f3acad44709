"""trace(): the recorded graph and the engine's own backward walk, as data, equal to what ran."""
import copy

import numpy as np
import pytest

from tinygrad_mnist import Tensor, no_grad
from tinygrad_mnist.nn import MLP, cross_entropy
from tinygrad_mnist.trace import trace, walk, watching_backward


@pytest.fixture
def mlp_loss():
    model = MLP([6, 5, 4, 3], seed=0)
    x = Tensor(np.random.default_rng(0).random((2, 6), dtype=np.float32), name="pixels")
    return model, x, cross_entropy(model(x), [0, 2])


def test_nodes_name_their_op_inputs_module_and_parameter(mlp_loss):
    model, x, loss = mlp_loss
    t = trace(loss, model)
    by_op = [n.op for n in t.nodes if n.op]
    assert by_op == ["Affine", "ReLU", "Affine", "ReLU", "Affine", "CrossEntropy"]
    assert [t.nodes[i].op for i in t.forward_order] == by_op  # the order they were computed
    params = {n.param: n for n in t.nodes if n.param}
    assert set(params) == {name for name, _ in model.named_parameters()}
    first = t.nodes[t.forward_order[0]]
    assert first.module == "layers.0" and first.scope == ["MLP(6-5-4-3)", "Linear(6→5)"]
    assert [t.nodes[i].param or t.nodes[i].name for i in first.inputs] == \
        ["pixels", "layers.0.weight", "layers.0.bias"]
    assert params["layers.4.bias"].module == "layers.4" and t.nodes[t.output].op == "CrossEntropy"
    np.testing.assert_array_equal(first.value, model.layers[0](x).data)


def test_the_backward_steps_are_the_engines_walk_and_its_gradients_bit_for_bit(mlp_loss):
    model, x, loss = mlp_loss
    t = trace(loss, model)
    # the walk takes the newest op first: the reverse of the forward order
    assert [s.node for s in t.backward_steps] == t.forward_order[::-1]
    twin = copy.deepcopy(model)
    cross_entropy(twin(x), [0, 2]).backward()
    for (name, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        node = next(n for n in t.nodes if n.param == name)
        np.testing.assert_array_equal(node.grad, q.grad.data)  # bit for bit
        assert p.grad is None  # tracing stores no .grad
    for step in t.backward_steps:  # each gradient sent is what its input then received
        np.testing.assert_array_equal(step.upstream, t.nodes[step.node].grad)
        for i, g in step.to_inputs:
            if t.nodes[i].op is not None:
                np.testing.assert_array_equal(g, t.nodes[i].grad)


def test_a_scalar_expression_and_a_value_used_twice():
    a = Tensor(2.0, requires_grad=True, name="a", dtype=np.float64)
    b = Tensor(-3.0, requires_grad=True, name="b", dtype=np.float64)
    c = Tensor(10.0, requires_grad=True, name="c", dtype=np.float64)
    e = (a * b + c + a).tanh()
    t = trace(e)
    grads = {n.name: float(n.grad) for n in t.nodes if n.name}
    s = 1 - np.tanh(2 * -3 + 10 + 2) ** 2
    assert grads == pytest.approx({"a": s * (-3 + 1), "b": s * 2, "c": s})
    assert t.nodes[t.output].grad == 1.0 and len(t.backward_steps) == 4


def test_nothing_is_watched_outside_the_block_and_tracing_needs_no_grad(mlp_loss):
    model, x, loss = mlp_loss
    with watching_backward() as steps:
        pass
    loss.backward()
    assert steps == []
    with no_grad():
        y = model(x)
    t = trace(y, model)  # nothing recorded: one leaf, no steps
    assert len(t.nodes) == 1 and t.backward_steps == [] and t.forward_order == []


def test_walk_goes_deep_without_recursion():
    x = Tensor(np.ones(2), requires_grad=True)
    y = x
    for _ in range(20_000):
        y = y * 1.0
    assert len(walk(y)) == 40_001  # the tensors and the 20,000 constants
