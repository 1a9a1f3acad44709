"""tinygrad_mnist: a small, exact reverse-mode autodiff engine over NumPy, and an MNIST MLP on it."""
from .grad_mode import is_grad_enabled, name_scope, no_grad, set_grad_enabled
from .gradcheck import GradcheckError, gradcheck, gradgradcheck
from .graph import GraphvizNotFound, draw_graph, retain_grads
from .tensor import Function, Tensor, grad
from .trace import trace

__all__ = ["Tensor", "Function", "grad", "no_grad", "set_grad_enabled", "is_grad_enabled",
           "name_scope",
           "gradcheck", "gradgradcheck", "GradcheckError", "draw_graph", "retain_grads",
           "GraphvizNotFound", "trace"]
__version__ = "0.1.0"
