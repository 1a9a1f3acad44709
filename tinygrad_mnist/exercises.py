"""Exercises: write an op's backward yourself, and let the engine grade it (demos/exercises.ipynb).

`check(name, fn)` runs your op on several shapes (broadcasting and edge values included),
compares its gradients with the engine's own in float64, then with finite differences
(`gradcheck`) and second derivatives (`gradgradcheck`) where those make sense. A wrong answer
is never an exception: the returned `CheckResult` says which input and element is off, the
expected and given values, and a hint found by testing your numbers against the usual
mistakes (a sign, a factor of 2, a missing transpose, a forgotten sum over broadcast axes...).
`list()` names the exercises in order; the answers are in demos/exercise_solutions.py.

This module is the public API and the grader (running an answer, then diagnosing what is wrong
with it); the exercises themselves, their cases, references and known mistakes, are in
`exercise_book`.
"""
from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from . import Function, GradcheckError, Tensor, grad, gradcheck, gradgradcheck
from . import exercise_book as book

__all__ = ["CheckResult", "check", "list"]

_RTOL, _ATOL = 1e-6, 1e-9  # both sides are float64: a right answer agrees to ~1e-15


@dataclass(frozen=True)
class CheckResult:
    """What `check` found: truthy when the answer is right; `message` says why in plain words
    (and is what a notebook shows); `hint` names the likely mistake ("" when none is known)."""

    name: str
    passed: bool
    message: str
    hint: str = ""

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return self.message

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # IPython shows the message itself
        printer.text(self.message)


@dataclass(frozen=True)
class _Problem:
    detail: str
    hint: str = ""
    blank: bool = False  # the learner has not written anything yet


class _Stop(Exception):
    """Raised from inside the engine's backward pass when the learner's backward misbehaves."""

    def __init__(self, problem: _Problem):
        super().__init__(problem.detail)
        self.problem = problem


class _BadShape(Exception):
    def __init__(self, index: int):
        super().__init__(index)
        self.index = index


def _sum_to(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """`a` summed over the axes that broadcasting stretched `shape` along; None if it cannot
    have come from `shape` by broadcasting."""
    lead = a.ndim - len(shape)
    if lead < 0 or any(s not in (1, n) for s, n in zip(shape, a.shape[lead:])):
        return None
    a = a.sum(axis=tuple(range(lead)))
    return a.sum(axis=tuple(i for i, s in enumerate(shape) if s == 1), keepdims=True)


# --------------------------------------------------------------------------- grading an op


def _check_op(ex: book.OpExercise, fn: Any) -> CheckResult:
    if not (isinstance(fn, type) and issubclass(fn, Function)):
        return _failed(ex.name, _Problem(
            f"check({ex.name!r}, ...) takes your Function class itself (the class, not an instance "
            f"or a result), got {fn!r}."))
    for k, case in enumerate(ex.cases, 1):
        with np.errstate(all="ignore"):  # an overflow in the learner's code is diagnosed, not warned
            problem = _first_order(ex, fn, case, seed=k)
            if problem is None and case.numeric:
                problem = _numerical(fn, ex.inputs, case)
        if problem is not None:
            return _failed(ex.name, problem, f"in case {k} of {len(ex.cases)}: {case.what}")
    cases = "".join(f"\n  - {case.what}" + ("" if case.numeric else " (against the engine only: finite "
                    "differences straddle the kink)") for case in ex.cases)
    return CheckResult(ex.name, True,
                       f"✔ {ex.name}: right. Your gradients match the engine's on all {len(ex.cases)} "
                       f"cases, and finite differences (gradcheck) and second derivatives "
                       f"(gradgradcheck) agree where they apply:{cases}")


def _leaves(arrays: Sequence[np.ndarray], names: Sequence[str]) -> tuple[Tensor, ...]:
    return tuple(Tensor(a.copy(), requires_grad=True, name=n) for a, n in zip(arrays, names))


def _first_order(ex: book.OpExercise, fn: type[Function], case: book.Case, seed: int) -> _Problem | None:
    """Run the learner's op once and compare its gradients, element by element, with the engine's
    for the same output gradient g."""
    xs = _leaves(case.inputs, ex.inputs)
    returned: dict[int, np.ndarray] = {}  # each input's gradient as backward returned it
    spy = cast(type[Function], type(fn.__name__, (fn,), {
        "backward": _spying(fn, ex, [x.shape for x in xs], returned)}))
    try:
        out = spy.apply(*xs, **case.options)
    except Exception as e:
        return _raised("Your forward", e, "the forward comes with the blank: keep it as it was")
    ref = ex.reference(*xs, **case.options)
    if out.shape != ref.shape or not np.allclose(out.data, ref.data, rtol=1e-9, atol=1e-12):
        return _Problem(f"Your forward's output differs from {ex.formula} (shape {out.shape}, "
                        f"expected {ref.shape}).",
                        "the forward comes with the blank: keep it as it was (or is this the class of "
                        "another exercise?)")
    g = np.random.default_rng(seed).standard_normal(out.shape) if out.ndim else np.array(0.7)
    expected = book.grad_arrays(grad(ref, xs, grad_output=g, retain_graph=True))
    unseeded = book.grad_arrays(grad(ref, xs, grad_output=np.ones(out.shape)))  # what forgetting g gives
    try:
        given = grad(out, xs, grad_output=g)
    except _Stop as stop:
        return stop.problem
    except _BadShape as bad:
        i = bad.index
        return _shape_problem(ex.inputs[i], returned[i], xs[i].shape, expected[i], out.shape,
                              ex.shape_hint)
    except Exception as e:  # the engine refused what backward returned
        return _raised("The backward pass", e, ex.shape_hint)
    for i, (name, a) in enumerate(zip(ex.inputs, given)):
        if a is None:  # backward returned None for it; the spy lets a None pass only here
            return _Problem(f"Your backward returned None as the gradient of {name}, which needs one.")
        if not _close(a.data, expected[i]):
            known = [(hint, _sum_to(np.asarray(w, dtype=np.float64), xs[i].shape))
                     for hint, w in _mistakes(ex, case, g, out.data, i)]
            return _value_problem(name, a.data, expected[i],
                                  [(h, w) for h, w in known if w is not None], unseeded[i])
    return None



def _mistakes(ex: book.OpExercise, case: book.Case, g: np.ndarray, out: np.ndarray,
              i: int) -> Sequence[tuple[str, np.ndarray]]:
    """What each known mistake would give as input i's gradient on this case."""
    found: builtins.list[tuple[str, Any]] = []
    for hint, wrong in ex.mistakes:
        try:
            grads = wrong(g, out, *case.inputs, **case.options)
        except ValueError:  # that mistake cannot even run on these shapes
            continue
        if grads[i] is not None:
            found.append((hint, grads[i]))
    return found


def _spying(fn: type[Function], ex: book.OpExercise, shapes: Sequence[tuple[int, ...]],
            returned: dict[int, np.ndarray]) -> Callable[..., Any]:
    """The learner's backward, with what it returns checked before the engine uses it, so a
    blank, an exception or a malformed result becomes a plain message instead of a crash."""

    def backward(ctx: Function, out: Tensor, g: Tensor) -> Any:
        try:
            result = fn.backward(ctx, out, g)
        except NotImplementedError as e:
            raise _Stop(_Problem(f"your backward still raises NotImplementedError({str(e)!r}): fill in the "
                                 f"blank, run its cell, then this check again.", blank=True)) from None
        except Exception as e:
            raise _Stop(_raised("Your backward", e, ex.shape_hint)) from None
        if result is None:
            raise _Stop(_Problem("Your backward returned None.",
                                 "return the gradients, one per input (a forgotten `return`?)"))
        if isinstance(result, builtins.list):
            raise _Stop(_Problem("Your backward returned a list.",
                                 "return a tuple, one gradient per input: the engine reads a list as "
                                 "a single gradient"))
        grads = result if isinstance(result, tuple) else (result,)
        if len(grads) != len(shapes):
            raise _Stop(_Problem(f"Your backward returned {len(grads)} gradient(s) for {len(shapes)} "
                                 f"input(s) ({', '.join(ex.inputs)}).",
                                 "return one gradient per input, in order, as a tuple"))
        for i, (gi, shape) in enumerate(zip(grads, shapes)):
            if gi is None:
                continue
            if not isinstance(gi, Tensor):
                kind = f"{type(gi).__module__}.{type(gi).__qualname__}".removeprefix("builtins.")
                raise _Stop(_Problem(f"Your backward returned a {kind} as the gradient of "
                                     f"{ex.inputs[i]}, not a Tensor.",
                                     "compute it with Tensor operations on g, out and the saved "
                                     "Tensors (or wrap an array: Tensor(array))"))
            returned[i] = gi.data
            if gi.shape != shape and (ex.exact_shape or _sum_to(gi.data, shape) is None):
                raise _BadShape(i)
        return result

    return backward


def _numerical(fn: type[Function], names: Sequence[str], case: book.Case) -> _Problem | None:
    """gradcheck and gradgradcheck of the learner's op: the first is the final word on the first
    derivatives; the second catches a backward the engine cannot differentiate again."""

    def op(*xs: Tensor) -> Tensor:
        return fn.apply(*xs, **case.options)

    xs = _leaves(case.inputs, names)
    try:
        gradcheck(op, xs)
    except GradcheckError as e:
        return _Problem(f"gradcheck (finite differences) disagrees: {e}.")
    except Exception as e:
        return _raised("Your op, under gradcheck,", e, "")
    try:
        gradgradcheck(op, xs)
    except Exception as e:
        detail = f"gradgradcheck: {e}" if isinstance(e, GradcheckError) else f"{type(e).__name__}: {e}"
        return _Problem(f"The first derivatives are right, but differentiating your gradient once "
                        f"more is not ({detail}).",
                        "build the gradient from Tensor operations on g, out and the saved Tensors: "
                        "NumPy on .data (or a Tensor made from it) is a constant to the engine, so "
                        "the second derivative through it is lost")
    return None


# --------------------------------------------------------------------------- diagnosis


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=_RTOL, atol=_ATOL))


def _raised(who: str, e: Exception, shape_hint: str) -> _Problem:
    text = str(e)
    if isinstance(e, ValueError) and "unpack" in text:
        hint = "does the forward ctx.save(...) everything that backward takes from ctx.saved?"
    elif isinstance(e, ValueError) and any(w in text for w in ("shape", "matmul", "broadcast")):
        hint = shape_hint or "the shapes inside your code do not line up"
    else:
        hint = ""
    return _Problem(f"{who} raised {type(e).__name__}: {text}", hint)


def _value_problem(name: str, given: np.ndarray, expected: np.ndarray,
                   known: Sequence[tuple[str, np.ndarray]], unseeded: np.ndarray | None) -> _Problem:
    bad = ~np.isclose(given, expected, rtol=_RTOL, atol=_ATOL)
    at = tuple(int(i) for i in np.argwhere(bad)[0])
    where = f"at element {at} ({int(bad.sum())} of {bad.size} elements are off)" if at else \
        "(a single number)"
    return _Problem(f"The gradient of {name} is wrong {where}: expected {expected[at]:.6g}, "
                    f"got {given[at]:.6g}.", _diagnose(given, expected, known, unseeded))


def _diagnose(given: np.ndarray, expected: np.ndarray, known: Sequence[tuple[str, np.ndarray]],
              unseeded: np.ndarray | None) -> str:
    """Name the mistake whose gradient matches the given one: the exercise's own known mistakes
    first, then the ones any rule can make."""
    if not np.isfinite(given).all():
        return ("your gradient has inf or NaN where the right one is finite: an overflow (exp of a "
                "large number: subtract the largest first) or a division by zero")
    square = given.ndim == 2 and given.shape[0] == given.shape[1]
    guesses = [*known,
               ("the chain rule: multiply by g, the gradient arriving from the output (yours is the "
                "local derivative alone)", unseeded),
               ("a sign: yours is the negative of the right gradient", -expected),
               ("a factor of 2: yours is twice the right gradient", 2 * expected),
               ("a factor of 2: yours is half the right gradient", expected / 2),
               ("a missing transpose: yours is the transpose of the right gradient (or a product's "
                "factors are in the wrong order)", expected.T if square else None)]
    for hint, wrong in guesses:
        if wrong is not None and _close(given, wrong):
            return hint
    nonzero = np.abs(expected) > 1e-6
    if nonzero.any():
        ratio = float(given[nonzero][0] / expected[nonzero][0])
        if ratio != 0 and _close(given, ratio * expected):
            return (f"a constant factor: yours is {ratio:.4g} times the right gradient (a mean's 1/N, "
                    f"or a term counted twice?)")
    if not given.any():
        return "your gradient is all zeros"
    return ("none of the usual mistakes (a sign, a factor of 2, a transpose, the chain rule's g) "
            "matches: compare your formula with the maths, term by term")


def _shape_problem(name: str, given: np.ndarray, shape: tuple[int, ...], expected: np.ndarray,
                   out_shape: tuple[int, ...] | None, shape_hint: str) -> _Problem:
    detail = f"The gradient of {name} has shape {given.shape}, but {name} has shape {shape}."
    summed = _sum_to(given, shape)
    if summed is not None and _close(summed, expected):
        lead = given.ndim - len(shape)
        ones = tuple(lead + i for i, n in enumerate(shape) if n == 1 and given.shape[lead + i] != 1)
        axes = ", ".join(map(str, (*range(lead), *ones)))
        hint = (f"sum over the broadcast axes: {name} was broadcast to {given.shape}, and every copy "
                f"of an element sends back its gradient: add them up over axis {axes}"
                + (" (keepdims=True there, where it has size 1)" if ones else ""))
    elif given.size == expected.size and _close(given.reshape(shape), expected):
        hint = "the numbers are right, the shape is not: keep summed axes as size 1 (keepdims=True)"
    elif given.ndim == 2 and given.T.shape == shape:
        hint = ("a missing transpose: yours is the transpose of the right gradient" if
                _close(given.T, expected) else "its shape is reversed: a missing transpose?")
    elif given.shape == out_shape:
        hint = f"that is the output's shape, but a gradient has its input's shape: {shape_hint}".rstrip(": ")
    else:
        hint = shape_hint or "each input's gradient has that input's shape"
    return _Problem(detail, hint)


def _failed(name: str, problem: _Problem, where: str = "") -> CheckResult:
    if problem.blank:
        return CheckResult(name, False, f"✘ {name}: not done yet: {problem.detail}")
    head = f"✘ {name}: not right yet" + (f", {where}" if where else "") + "."
    end = "" if problem.hint.endswith("?") else "."
    hint = f"\nHint: {problem.hint}{end}" if problem.hint else ""
    return CheckResult(name, False, f"{head}\n{problem.detail}{hint}", problem.hint)


# --------------------------------------------------------------------------- grading the MLP by hand


def _check_mlp(fn: Any) -> CheckResult:
    if not callable(fn):
        return _failed("mlp", _Problem(f"check('mlp', ...) takes your function "
                                       f"mlp_backward(x, labels, W1, b1, W2, b2), got {fn!r}."))
    for k, case in enumerate(book.MLP_CASES, 1):
        with np.errstate(all="ignore"):
            problem = _mlp_problem(fn, case)
        if problem is not None:
            return _failed("mlp", problem, f"in case {k} of {len(book.MLP_CASES)}: {case.what}")
    cases = "".join(f"\n  - {case.what}" for case in book.MLP_CASES)
    return CheckResult("mlp", True, f"✔ mlp: right. dW1, db1, dW2 and db2 match the engine's "
                                    f"backward on all {len(book.MLP_CASES)} cases:{cases}")


def _mlp_problem(fn: Callable[..., Any], case: book.MLPCase) -> _Problem | None:
    try:
        result = fn(case.x.copy(), case.labels.copy(), *(p.copy() for p in case.params))
    except NotImplementedError as e:
        return _Problem(f"your mlp_backward still raises NotImplementedError({str(e)!r}): fill in the "
                        f"blank, run its cell, then this check again.", blank=True)
    except Exception as e:
        return _raised("Your mlp_backward", e, book.MLP_SHAPES)
    if not isinstance(result, (tuple, builtins.list)) or len(result) != 4:
        got = f"{len(result)} values" if isinstance(result, (tuple, builtins.list)) else \
            f"a {type(result).__name__}"
        return _Problem(f"Your mlp_backward returned {got}.",
                        "return the four gradients as a tuple (dW1, db1, dW2, db2)")
    given = dict(zip(book.MLP_PARAMS, result))
    expected = book.mlp_engine(case)
    for name in ("W2", "b2", "W1", "b1"):  # in the order backprop reaches them
        g = np.asarray(given[name])
        if g.dtype.kind not in "biuf":  # None, or ragged lists: an object array
            return _Problem(f"Your gradient of {name} is {given[name]!r}, not an array of numbers.")
        g = g.astype(np.float64)
        shape = expected[name].shape
        if g.shape != shape:
            return _shape_problem(name, g, shape, expected[name], None, book.MLP_SHAPES)
        if not _close(g, expected[name]):
            known = [(hint, book.mlp_by_hand(case, **flags)[name]) for hint, flags in book.MLP_MISTAKES]
            return _value_problem(name, g, expected[name], known, None)
    return None


# --------------------------------------------------------------------------- the public API

_ABOUT = {**{ex.name: ex.about for ex in book.OPS}, "mlp": book.MLP_ABOUT}


def check(name: str, fn: Any) -> CheckResult:
    """Grade exercise `name`: `fn` is your Function class (your `mlp_backward` function for
    "mlp"). Never raises on a wrong or unfinished answer: the result explains it."""
    if name not in _ABOUT:
        raise ValueError(f"unknown exercise {name!r}; the exercises are: {', '.join(_ABOUT)}")
    if name == "mlp":
        return _check_mlp(fn)
    return _check_op(next(ex for ex in book.OPS if ex.name == name), fn)


def list() -> builtins.list[tuple[str, str]]:  # named as the issue asks; the builtin is builtins.list
    """The exercises in order, as (name, what it teaches)."""
    return builtins.list(_ABOUT.items())
