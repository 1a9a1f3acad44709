"""The training loop: seeded minibatch training with validation, checkpoints and resume.

A run directory holds everything a run produces: `checkpoint.npz` (weights and optimizer
state after the last completed epoch), `metrics.json` / `metrics.csv`, `summary.json`, and
the pictures. Shuffling and dropout draw from generators seeded by (seed, epoch), so a
resumed run repeats an uninterrupted one number for number.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .data import MNIST, load_mnist
from .files import atomic_write
from .nn import MLP, Dropout, Module, cross_entropy
from .optim import SGD, Adam, CosineLR, Optimizer, StepLR
from .tensor import Tensor, no_grad

CHECKPOINT = "checkpoint.npz"


@dataclass
class TrainConfig:
    """Everything that decides a run's numbers (and is stored in its checkpoint)."""

    hidden: tuple[int, ...] = (512, 256)
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"  # "sgd" (Nesterov momentum) or "adam"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # "cosine", "step" (x0.1 every third of the run) or "none"
    dropout: float = 0.0
    seed: int = 0
    val_size: int = 5000
    train_limit: int | None = None  # train on the first N examples only (quick runs, tests)

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        checks = [(self.epochs >= 1, "epochs must be >= 1"),
                  (self.batch_size >= 1, "batch_size must be >= 1"),
                  (self.lr > 0, "lr must be > 0"),
                  (self.optimizer in ("sgd", "adam"), "optimizer must be 'sgd' or 'adam'"),
                  (self.schedule in ("cosine", "step", "none"),
                   "schedule must be 'cosine', 'step' or 'none'"),
                  (all(h >= 1 for h in self.hidden), "hidden sizes must be positive"),
                  (self.train_limit is None or self.train_limit >= 1, "train_limit must be >= 1")]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"bad training config: {message} (got {self})")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class CheckpointError(ValueError):
    """A file is not a readable tinygrad_mnist checkpoint."""


def build_model(config: TrainConfig) -> MLP:
    return MLP([784, *config.hidden, 10], dropout=config.dropout, seed=config.seed)


def build_optimizer(config: TrainConfig, model: Module) -> Optimizer:
    if config.optimizer == "adam":
        return Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
               nesterov=config.momentum > 0, weight_decay=config.weight_decay)


def lr_schedule(config: TrainConfig) -> Callable[[float], float]:
    """Learning rate at a point of the run, in (fractional, 0-based) epochs: cosine decays
    every step, so even a one-epoch run ends with a small, settling learning rate."""
    if config.schedule == "cosine":
        return CosineLR(config.lr, config.epochs)
    if config.schedule == "step":
        return StepLR(config.lr, step_size=max(1, math.ceil(config.epochs / 3)), gamma=0.1)
    return lambda epoch: config.lr


@no_grad()
def predict_proba(model: Module, x: np.ndarray, batch_size: int = 2000) -> np.ndarray:
    """Class probabilities (N, 10), in eval mode and without recording a graph."""
    was_training = model.training
    model.eval()
    probs = [model(Tensor(x[i:i + batch_size])).softmax(axis=1).data
             for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return np.concatenate(probs) if probs else np.zeros((0, 10), np.float32)


def evaluate(model: Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the model on (x, y)."""
    probs = predict_proba(model, x)
    picked = probs[np.arange(len(y)), y].astype(np.float64)
    loss = float(-np.log(np.maximum(picked, 1e-12)).mean())
    return loss, float((probs.argmax(axis=1) == y).mean())


def train(config: TrainConfig, run_dir: str | os.PathLike, data: MNIST | None = None,
          data_dir: str | os.PathLike | None = None, resume: bool = False,
          progress: bool = True, plots: bool = True, log: Callable[[str], Any] = print
          ) -> dict[str, Any]:
    """Train, validating and checkpointing each epoch; returns the summary (test accuracy...)."""
    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINT
    model, optimizer, start_epoch, history = build_model(config), None, 0, []
    if resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        saved = load_checkpoint(ckpt_path)
        if dataclasses.replace(saved.config, epochs=config.epochs) != config:
            log(f"resuming with the checkpoint's settings: {saved.config}")
        config = dataclasses.replace(saved.config, epochs=max(config.epochs, saved.config.epochs))
        model = saved.model
        optimizer = build_optimizer(config, model)
        optimizer.load_state_dict(saved.optimizer_state)
        start_epoch, history = saved.epoch, saved.history
    elif ckpt_path.exists():
        raise FileExistsError(f"{run_dir} already holds a checkpoint; pass --resume to continue "
                              f"it, or choose another --run-dir")
    optimizer = optimizer or build_optimizer(config, model)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = data or load_mnist(data_dir, val_size=config.val_size, seed=config.seed)
    train_x, train_y = data.train_x[:config.train_limit], data.train_y[:config.train_limit]
    schedule = lr_schedule(config)
    log(f"training MLP {model.sizes} on {len(train_x)} examples "
        f"(validation {len(data.val_x)}, test {len(data.test_x)}); run dir {run_dir}")

    epoch = start_epoch
    try:
        for epoch in range(start_epoch, config.epochs):
            row = _train_epoch(model, optimizer, config, epoch, schedule, train_x, train_y,
                               progress)
            row["val_loss"], row["val_acc"] = evaluate(model, data.val_x, data.val_y) \
                if len(data.val_x) else (float("nan"), float("nan"))
            history.append(row)
            save_checkpoint(ckpt_path, model, optimizer, config, epoch + 1, history)
            write_metrics(run_dir, history)
            log(f"epoch {epoch + 1}/{config.epochs}  train loss {row['train_loss']:.4f} "
                f"acc {100 * row['train_acc']:.2f}%  val loss {row['val_loss']:.4f} "
                f"acc {100 * row['val_acc']:.2f}%  lr {row['lr']:.4g}  {row['seconds']:.1f}s")
    except KeyboardInterrupt:
        partial = run_dir / "interrupted.npz"
        save_checkpoint(partial, model, optimizer, config, epoch, history)
        log(f"\ninterrupted during epoch {epoch + 1}: weights so far saved to {partial}; "
            f"{ckpt_path} holds the last completed epoch ({epoch}) — continue with --resume")
        raise

    test_loss, test_acc = evaluate(model, data.test_x, data.test_y)
    summary = {"test_loss": test_loss, "test_acc": test_acc, "epochs": config.epochs,
               "train_seconds": sum(r["seconds"] for r in history),
               "val_acc": history[-1]["val_acc"] if history else None,
               "config": dataclasses.asdict(config)}
    atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2).encode())
    log(f"test accuracy {100 * test_acc:.2f}% (loss {test_loss:.4f}) after {config.epochs} "
        f"epochs, {summary['train_seconds']:.1f}s of training")
    if plots:
        summary["pictures"] = [str(p) for p in draw_pictures(model, data, history, run_dir)]
        log(f"pictures in {run_dir}")
        from .report import write_report
        log(f"report: {write_report(run_dir, data=data)}")
    return summary


def _train_epoch(model: Module, optimizer: Optimizer, config: TrainConfig, epoch: int,
                 schedule: Callable[[float], float], x: np.ndarray, y: np.ndarray,
                 progress: bool) -> dict[str, Any]:
    start = time.perf_counter()
    model.train()
    rng = np.random.default_rng([config.seed, epoch])
    for m in _dropouts(model):
        m.rng = np.random.default_rng([config.seed, epoch, 1])
    order = rng.permutation(len(x))
    batches = range(0, len(x), config.batch_size)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, unit="batch")
    loss_sum, correct, seen = 0.0, 0, 0
    for step, i in enumerate(bar if bar is not None else batches):
        idx = order[i:i + config.batch_size]
        optimizer.lr = schedule(epoch + step / len(batches))
        logits = model(Tensor(x[idx]))
        loss = cross_entropy(logits, y[idx])
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"loss became {value} at epoch {epoch + 1}, step {step + 1}; stopped. The last "
                f"good checkpoint (end of epoch {epoch}) is kept; try a smaller --lr")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_sum += value * len(idx)
        correct += int((logits.data.argmax(axis=1) == y[idx]).sum())
        seen += len(idx)
        if bar is not None and step % 20 == 0:
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{100 * correct / seen:.2f}%")
    if bar is not None:
        bar.close()
    return {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
            "lr": schedule(epoch), "seconds": time.perf_counter() - start}


def _dropouts(module: Module):
    for _, child in module.children():
        if isinstance(child, Dropout):
            yield child
        yield from _dropouts(child)


def draw_pictures(model: Module, data: MNIST, history: list[dict], run_dir: Path) -> list[Path]:
    """The pictures a person wants after training, as PNGs in the run directory."""
    from . import plots
    probs = predict_proba(model, data.test_x)
    preds = probs.argmax(axis=1)
    first = model.parameters()[0].data
    return [plots.plot_learning_curves(history, run_dir / "learning_curves.png"),
            plots.plot_predictions(data.test_x[:32], data.test_y[:32], preds[:32],
                                   run_dir / "predictions.png", probs=probs[:32].max(axis=1),
                                   title="test digits: true label and prediction"),
            plots.plot_confusion_matrix(data.test_y, preds, run_dir / "confusion_matrix.png"),
            plots.plot_confident_mistakes(data.test_x, data.test_y, probs,
                                          run_dir / "confident_mistakes.png"),
            plots.plot_first_layer_weights(first, run_dir / "first_layer_weights.png")]


# ----------------------------------------------------------------------------- files


@dataclass
class Checkpoint:
    model: MLP
    optimizer_state: dict[str, np.ndarray]
    config: TrainConfig
    epoch: int
    history: list[dict]


def save_checkpoint(path: str | os.PathLike, model: Module, optimizer: Optimizer,
                    config: TrainConfig, epoch: int, history: list[dict]) -> None:
    """Write weights, optimizer state and metadata as a plain .npz (no pickle), atomically."""
    meta = {"format": "tinygrad_mnist-checkpoint-1", "config": dataclasses.asdict(config),
            "epoch": epoch, "history": history}
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    arrays.update({f"optim/{k}": v for k, v in optimizer.state_dict().items()})
    arrays["meta"] = np.array(json.dumps(meta))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(Path(path), buffer.getvalue())


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        meta = json.loads(str(arrays.pop("meta")))
        if meta.get("format") != "tinygrad_mnist-checkpoint-1":
            raise ValueError(f"format is {meta.get('format')!r}")
        config = TrainConfig(**{k: v for k, v in meta["config"].items()})
        model = build_model(config)
        model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model/")})
    except Exception as e:  # any unreadable content is the same problem for the user
        raise CheckpointError(f"{path} is not a readable tinygrad_mnist checkpoint "
                              f"(an .npz written by `tinygrad-mnist train`): {e}") from None
    return Checkpoint(model, {k[6:]: v for k, v in arrays.items() if k.startswith("optim/")},
                      config, int(meta["epoch"]), meta["history"])


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    atomic_write(run_dir / "metrics.json", json.dumps(history, indent=2).encode())
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    atomic_write(run_dir / "metrics.csv", text.getvalue().encode())
