"""A scalar expression a person types, such as `tanh(a*b + c)`, built with the engine's own ops.

The text is parsed with `ast` and every node is checked against a whitelist (numbers, names,
`+ - * / **`, unary `-` and the functions exp log tanh relu sigmoid sqrt) before anything is
computed; nothing is ever eval'd or compiled. The checked tree is then walked with float64
Tensors, so its graph and gradients are the engine's, as in micrograd. Every refusal is an
ExpressionError whose message names what was wrong and what is allowed.
"""
from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .grad_mode import no_grad
from .tensor import Tensor

MAX_LENGTH = 500  # characters of the expression
MAX_DEPTH = 50  # operations nested inside each other
MAX_EXPONENT = 100  # |y| in x ** y
FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "exp": Tensor.exp, "log": Tensor.log, "tanh": Tensor.tanh, "relu": Tensor.relu,
    "sigmoid": Tensor.sigmoid, "sqrt": Tensor.sqrt}
_BINARY: dict[type, Callable[[Tensor, Tensor], Tensor]] = {
    ast.Add: Tensor.__add__, ast.Sub: Tensor.__sub__, ast.Mult: Tensor.__mul__,
    ast.Div: Tensor.__truediv__, ast.Pow: Tensor.__pow__}
ALLOWED = ("numbers, names, + - * / **, unary -, and the functions "
           + " ".join(FUNCTIONS))
# what a refused construct is called in the message
_CONSTRUCTS = {ast.Attribute: "an attribute (x.y)", ast.Subscript: "indexing (x[i])",
               ast.Compare: "a comparison", ast.BoolOp: "and/or", ast.IfExp: "if/else",
               ast.Lambda: "lambda", ast.NamedExpr: "an assignment (:=)",
               ast.JoinedStr: "an f-string", ast.List: "a list", ast.Tuple: "a tuple",
               ast.Dict: "a dict", ast.Set: "a set", ast.Starred: "a starred argument",
               ast.ListComp: "a comprehension", ast.GeneratorExp: "a generator",
               ast.Await: "await", ast.Yield: "yield"}
_OPERATOR_TEXT = {ast.Mod: "%", ast.FloorDiv: "//", ast.MatMult: "@", ast.LShift: "<<",
                  ast.RShift: ">>", ast.BitOr: "|", ast.BitXor: "^", ast.BitAnd: "&",
                  ast.UAdd: "unary +", ast.Not: "not", ast.Invert: "~"}


class ExpressionError(ValueError):
    """An expression or its values that cannot be used; the message says why."""


@dataclass(frozen=True)
class Expression:
    """A checked expression: its text, its tree and its names in order of first use."""

    text: str
    tree: ast.expr
    names: tuple[str, ...]


@dataclass
class Built:
    """The expression computed by the engine: its output and one float64 leaf per name."""

    output: Tensor
    leaves: dict[str, Tensor]


def parse(text: Any) -> Expression:
    """The expression in `text`, checked against the whitelist; ExpressionError if not allowed."""
    if not isinstance(text, str):
        raise ExpressionError(f"the expression must be a string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"the expression is {len(text)} characters long; at most "
                              f"{MAX_LENGTH} allowed")
    if not text.strip():
        raise ExpressionError(f"the expression is empty; write one such as tanh(a*b + c), "
                              f"with {ALLOWED}")
    if "\x00" in text:  # ast.parse raises ValueError, not SyntaxError, on it before 3.12
        raise ExpressionError("the expression contains a null character (\\x00); write "
                              "plain text such as tanh(a*b + c)")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:
        if "nested" in str(e.msg):  # Python's own limit on parentheses
            raise ExpressionError(f"the expression nests deeper than {MAX_DEPTH} levels") from None
        raise ExpressionError(f"the expression is not valid: {e.msg} (at character "
                              f"{e.offset or 0})") from None
    except (RecursionError, MemoryError):
        raise ExpressionError(f"the expression nests deeper than {MAX_DEPTH} levels") from None
    depth = _depth(tree)
    if depth > MAX_DEPTH:
        raise ExpressionError(f"the expression nests {depth} operations deep; at most {MAX_DEPTH} "
                              f"allowed (a chain such as a+b+c+… counts one level per operator)")
    names: dict[str, None] = {}
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        _check(node, names)
        # a call's function is checked by name in _check, not as a variable
        todo.extend(node.args if isinstance(node, ast.Call) else ast.iter_child_nodes(node))
    return Expression(text.strip(), tree, tuple(sorted(names, key=lambda n: _first_use(text, n))))


def checked_values(expr: Expression, values: Any) -> dict[str, float]:
    """`values` as {name: float} for exactly the expression's names; ExpressionError if a name
    has no value, a value has no name, or a value is not a finite number."""
    if not isinstance(values, Mapping):
        raise ExpressionError(f'"values" must be an object of name: number, e.g. '
                              f'{{"a": 2, "b": -3}}, got {type(values).__name__}')
    missing = [n for n in expr.names if n not in values]
    if missing:
        raise ExpressionError(f"no value for {', '.join(missing)}: give every name of the "
                              f"expression a number in \"values\"")
    unused = [str(n) for n in values if n not in expr.names]
    if unused:
        raise ExpressionError(f"{', '.join(unused)[:80]} {'has' if len(unused) == 1 else 'have'} "
                              f"a value but {'is' if len(unused) == 1 else 'are'} not in the "
                              f"expression (its names: {', '.join(expr.names) or 'none'})")
    out = {}
    for name in expr.names:
        v = values[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ExpressionError(f"the value of {name} must be a number, got {type(v).__name__}")
        try:
            out[name] = float(v)
        except OverflowError:
            raise ExpressionError(f"the value of {name} is too large for a float") from None
        if not math.isfinite(out[name]):
            raise ExpressionError(f"the value of {name} is {out[name]}; it must be a finite number")
    return out


def build(expr: Expression, values: Mapping[str, float], requires_grad: bool = True) -> Built:
    """The expression computed with float64 Tensors (one leaf per name, named after it; each
    op's output named after its part of the text). ExpressionError where a step is not finite
    or an exponent is over MAX_EXPONENT."""
    if not expr.names:
        raise ExpressionError("the expression uses no name, so nothing has a gradient; use "
                              "names such as a and b and give their values")
    leaves = {n: Tensor(np.array(values[n], np.float64), requires_grad=requires_grad, name=n)
              for n in expr.names}
    with np.errstate(all="ignore"):  # a step that is not finite is refused by name below
        return Built(_compute(expr.tree, leaves), leaves)


def evaluate(expr: Expression, values: Mapping[str, float]) -> float:
    """The expression's value, recording nothing (for finite differences)."""
    with no_grad():
        return build(expr, values, requires_grad=False).output.item()


def _compute(node: ast.expr, leaves: dict[str, Tensor]) -> Tensor:
    """The tree computed bottom-up; recursion is bounded by MAX_DEPTH."""
    if isinstance(node, ast.Name):
        return leaves[node.id]
    if isinstance(node, ast.Constant):
        assert isinstance(node.value, (int, float))  # _check allowed nothing else
        out = Tensor(np.array(float(node.value), np.float64), name=ast.unparse(node))
    elif isinstance(node, ast.UnaryOp):
        out = -_compute(node.operand, leaves)
    elif isinstance(node, ast.Call):
        assert isinstance(node.func, ast.Name)  # _check allowed nothing else
        out = FUNCTIONS[node.func.id](_compute(node.args[0], leaves))
    else:
        assert isinstance(node, ast.BinOp)
        left, right = _compute(node.left, leaves), _compute(node.right, leaves)
        if isinstance(node.op, ast.Pow) and not abs(right.item()) <= MAX_EXPONENT:
            raise ExpressionError(f"the exponent of {ast.unparse(node)} is {right.item():g}; "
                                  f"exponents may be at most {MAX_EXPONENT} in size")
        out = _BINARY[type(node.op)](left, right)
    out.name = ast.unparse(node)
    if not np.isfinite(out.data).all():
        raise ExpressionError(f"{out.name} is {out.item()} for these values; choose values "
                              f"where every step is a finite number (log and sqrt need a "
                              f"positive input, / a non-zero divisor)")
    return out


def _check(node: ast.AST, names: dict[str, None]) -> None:
    """Refuse a node outside the whitelist; note the names used (functions are not names)."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ExpressionError(f"{str(node.value)[:20]!r} is not allowed; allowed: {ALLOWED}"
                                  if isinstance(node.value, str) else
                                  f"{node.value!r} is not allowed; allowed: {ALLOWED}")
        try:
            number = float(node.value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise ExpressionError(f"the number {ast.unparse(node)[:20]} is too large for a float")
    elif isinstance(node, ast.Name):
        if node.id.startswith("_"):
            raise ExpressionError(f"the name {node.id} is not allowed: names may not start "
                                  f"with _")
        if node.id in FUNCTIONS:
            raise ExpressionError(f"{node.id} is a function: call it, as in {node.id}(a)")
        names.setdefault(node.id)
    elif isinstance(node, ast.Call):
        _check_call(node)
    elif isinstance(node, ast.BinOp | ast.UnaryOp):
        allowed = _BINARY if isinstance(node, ast.BinOp) else {ast.USub: None}
        if type(node.op) not in allowed:
            raise ExpressionError(f"the operator {_OPERATOR_TEXT.get(type(node.op), '?')} is not "
                                  f"allowed; allowed: {ALLOWED}")
    elif not isinstance(node, ast.expr_context | ast.operator | ast.unaryop):
        what = _CONSTRUCTS.get(type(node), type(node).__name__)
        raise ExpressionError(f"{what} is not allowed in an expression; allowed: {ALLOWED}")


def _check_call(node: ast.Call) -> None:
    if not isinstance(node.func, ast.Name):
        raise ExpressionError(f"only the functions {' '.join(FUNCTIONS)} may be called, by "
                              f"name, as in tanh(a)")
    name = node.func.id
    if name not in FUNCTIONS:
        raise ExpressionError(f"unknown function {name[:40]}; the functions are "
                              f"{' '.join(FUNCTIONS)}")
    if len(node.args) != 1 or node.keywords or isinstance(node.args[0], ast.Starred):
        raise ExpressionError(f"{name} takes exactly one argument, as in {name}(a)")


def _first_use(text: str, name: str) -> int:
    """Where `name` first appears as a whole word in `text` (names in reading order)."""
    found = re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", text)
    return found.start() if found else len(text)


def _depth(tree: ast.AST) -> int:
    """How many expression nodes sit inside each other at most (iterative: any depth works)."""
    deepest, todo = 0, [(tree, 1)]
    while todo:
        node, depth = todo.pop()
        deepest = max(deepest, depth)
        todo.extend((child, depth + 1) for child in ast.iter_child_nodes(node)
                    if isinstance(child, ast.expr))
    return deepest
