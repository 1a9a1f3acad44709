"""Grad mode and name scopes: whether ops are recorded for backward, and how they are labelled.

Both are per thread, as in PyTorch: a `no_grad` block in one thread (a server request, say)
must not stop another thread from recording its graph.
"""
from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any

# ContextVars, not a threading.local: each thread starts from the defaults, and reading one
# is cheaper (recording an op reads grad mode each time)
_grad_enabled: ContextVar[bool] = ContextVar("grad_enabled", default=True)
_scope: ContextVar[tuple[Scope, ...]] = ContextVar("scope", default=())


def is_grad_enabled() -> bool:
    return _grad_enabled.get()


class _Setting:
    """Sets a ContextVar for the length of a with-block, then restores it. One object may be
    entered again inside itself, or by several threads at once (a module-level `no_grad()`
    shared by a server's threads): each thread keeps its own stack of tokens."""

    def __init__(self) -> None:
        self._tokens: dict[int, list[Token]] = {}

    def _enter(self, var: ContextVar, value: Any) -> None:
        self._tokens.setdefault(threading.get_ident(), []).append(var.set(value))

    def _exit(self, var: ContextVar) -> None:
        mine = self._tokens[threading.get_ident()]
        var.reset(mine.pop())
        if not mine:
            del self._tokens[threading.get_ident()]


class set_grad_enabled(_Setting):
    """Context manager (and decorator) that turns graph recording on or off inside it, in
    this thread."""

    def __init__(self, mode: bool = True):
        super().__init__()
        self.mode = mode

    def __enter__(self) -> None:
        self._enter(_grad_enabled, self.mode)

    def __exit__(self, *exc: Any) -> None:
        self._exit(_grad_enabled)

    def __call__(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with set_grad_enabled(self.mode):
                return fn(*args, **kwargs)

        return wrapper


class no_grad(set_grad_enabled):
    """Nothing computed inside is recorded: for evaluation, optimizer steps, and backward itself."""

    def __init__(self) -> None:
        super().__init__(False)


class Scope(str):
    """One label of a recorded op's scope: the label itself (it compares and sorts as that
    string), and the object that opened it (`owner`: the nn.Module, for a module's call), so
    that two layers with the same label stay two boxes, and a trace can name the module."""

    owner: object

    def __new__(cls, label: str, owner: object = None) -> Scope:
        scope = super().__new__(cls, label)
        scope.owner = owner
        return scope


def push_scope(label: str, owner: object = None) -> Token:
    """Open a name scope in this thread without a context-manager object: nn.Module's call
    does it for every layer of every forward pass. `pop_scope(token)` closes it."""
    return _scope.set(_scope.get() + (Scope(label, owner),))


def pop_scope(token: Token) -> None:
    _scope.reset(token)


class name_scope(_Setting):
    """Label the ops recorded inside (nestable, per thread), so the graph picture can box them
    together, e.g. every op of one Linear layer in a cluster called "Linear(784→128)".
    `owner` (an nn.Module passes itself) tells apart two scopes with the same label."""

    def __init__(self, label: str, owner: object = None):
        super().__init__()
        self.label = Scope(label, owner)

    def __enter__(self) -> None:
        self._enter(_scope, _scope.get() + (self.label,))

    def __exit__(self, *exc: Any) -> None:
        self._exit(_scope)
