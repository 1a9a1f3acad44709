"""What a trained model says about a set of digits: probabilities, accuracy and loss, and the
first digit it gets wrong (where a person learns most about it)."""
from __future__ import annotations

import numpy as np

from .grad_mode import no_grad
from .nn import Module
from .tensor import Tensor


@no_grad()
def predict_proba(model: Module, x: np.ndarray, batch_size: int = 2000) -> np.ndarray:
    """Class probabilities (N, 10), in eval mode and without recording a graph. The model is
    only read (an eval-mode twin runs), so threads may share it; `x` is cast to its dtype."""
    twin = model.frozen().eval()
    dtype = model.parameters()[0].dtype
    probs = [twin(Tensor(np.asarray(x[i:i + batch_size], dtype))).softmax(axis=1).data
             for i in range(0, len(x), batch_size)]
    return np.concatenate(probs) if probs else np.zeros((0, 10), np.float32)


def evaluate(model: Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the model on (x, y)."""
    probs = predict_proba(model, x)
    picked = probs[np.arange(len(y)), y].astype(np.float64)
    loss = float(-np.log(np.maximum(picked, 1e-12)).mean())
    return loss, float((probs.argmax(axis=1) == y).mean())


def first_mistake(preds: np.ndarray, labels: np.ndarray) -> int:
    """The index of the first digit whose prediction is wrong; 0 when none is."""
    wrong = np.flatnonzero(np.asarray(preds) != np.asarray(labels))
    return int(wrong[0]) if len(wrong) else 0
