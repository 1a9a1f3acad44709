"""The training loop: seeded minibatch training with validation, checkpoints and resume.

The data path is one walk per step: a batch of digits -> model -> cross-entropy loss ->
backward -> optimizer step. Around it, each epoch is validated, checkpointed and written to
the metrics files (run_dir.py says which files and when). Shuffling, dropout and distortions draw
from streams seeded by (seed, epoch) (seeding.py), so a resumed run repeats an uninterrupted
one number for number. Training draws nothing: pictures and the report are made from what
`train` returns (report.py).

Ctrl-C (SIGINT) and SIGTERM stop the loop between two steps, never inside one: the weights,
optimizer state and the epoch's position go to `interrupted.npz`, and --resume continues from
the next step with the same numbers. A second signal stops at once.
"""
from __future__ import annotations

import dataclasses
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .augment import distort, epoch_moves
from .checkpoint import EpochState, save_checkpoint
from .config import TrainConfig, build_model, build_optimizer, check_model_size, lr_schedule
from .data import MNIST, load_mnist
from .files import remove_stale_temps
from .nn import MLP, Dropout, Module, cross_entropy
from .optim import Optimizer
from .predict import evaluate
from .run_dir import (
    CHECKPOINT,
    INTERRUPTED,
    RUN_FILES,
    check_resume,
    lower_lr_advice,
    refuse_existing_run,
    resume_point,
    save_interrupted,
    saved_so_far,
    write_metrics,
    write_summary,
)
from .seeding import dropout_rng, epoch_order
from .tensor import Tensor


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Interrupted(KeyboardInterrupt):
    """Training was stopped by a signal (SIGINT = Ctrl-C, or SIGTERM); `signum` says which, so
    the command can exit with 128 + signum as shells expect (130, 143)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


@dataclass
class TrainResult:
    """What `train` returns: the summary it wrote to summary.json, and the trained model with
    its data and per-epoch metrics, for whatever presents the run (report.draw_pictures)."""

    summary: dict[str, Any]
    model: MLP
    data: MNIST
    history: list[dict]


def train(config: TrainConfig, run_dir: str | os.PathLike, data: MNIST | None = None,
          data_dir: str | os.PathLike | None = None, resume: bool = False,
          overwrite: bool = False, progress: bool = True,
          log: Callable[[str], Any] = print, data_dir_name: str = "data_dir") -> TrainResult:
    """Train, validating and checkpointing each epoch; the summary (test accuracy...) goes
    to summary.json and comes back in the result, with the model.

    A run directory that holds any of RUN_FILES is refused unless `resume` (continue from
    `resume_point`: every setting but `epochs` must match the saved one) or `overwrite` (delete
    the old run's files and start again).
    """
    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINT
    check_model_size([784, *config.hidden, 10], config.batch_size)
    saved = None
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other; choose one")
    if resume:
        source, saved = resume_point(run_dir)
        check_resume(saved, source, config, run_dir, log)
    elif not overwrite:
        refuse_existing_run(run_dir)
    remove_stale_temps(run_dir)
    data = data or load_mnist(data_dir, val_size=config.val_size, seed=config.seed,
                              data_dir_name=data_dir_name)
    if overwrite:
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)

    if saved is not None:
        model, start_epoch, history = saved.model, saved.epoch, saved.history
        optimizer = build_optimizer(config, model)
        optimizer.load_state_dict(saved.optimizer_state)
    else:
        model, start_epoch, history = build_model(config), 0, []
        optimizer = build_optimizer(config, model)
    train_x, train_y = data.train_x[:config.train_limit], data.train_y[:config.train_limit]
    schedule = lr_schedule(config)
    log(f"training MLP {model.sizes} on {len(train_x)} examples "
        f"(validation {len(data.val_x)}, test {len(data.test_x)}); run dir {run_dir}")

    epoch, stopped = start_epoch, None
    resume_at = saved.partial if saved is not None else None
    with _stop_between_steps() as stop, np.errstate(all="ignore"):
        # errstate: an overflow shows up as a non-finite loss, reported below in one line
        try:
            for epoch in range(start_epoch, config.epochs):
                row = _train_epoch(model, optimizer, config, epoch, schedule, train_x, train_y,
                                   progress, stop, resume_at if epoch == start_epoch else None)
                if isinstance(row, EpochState):
                    stopped = row
                    break
                _check_finite(model, epoch)
                row["val_loss"], row["val_acc"] = evaluate(model, data.val_x, data.val_y) \
                    if len(data.val_x) else (float("nan"), float("nan"))
                history.append(row)
                save_checkpoint(ckpt_path, model, optimizer, config, epoch + 1, history)
                (run_dir / INTERRUPTED).unlink(missing_ok=True)  # older than this checkpoint
                write_metrics(run_dir, history)
                log(f"epoch {epoch + 1}/{config.epochs}  train loss {row['train_loss']:.4f} "
                    f"acc {100 * row['train_acc']:.2f}%  val loss {row['val_loss']:.4f} "
                    f"acc {100 * row['val_acc']:.2f}%  lr {row['lr']:.4g}  {row['seconds']:.1f}s")
                if stop.signum:
                    break
        except TrainingDiverged as e:
            raise TrainingDiverged(f"{e}; {saved_so_far(run_dir, len(history))}; "
                                   f"{lower_lr_advice(saved is not None)}") from None
        except KeyboardInterrupt:  # a second signal, or one raised inside a step: no save
            log(f"\ninterrupted during epoch {epoch + 1}; {saved_so_far(run_dir, len(history))}")
            raise
    if stop.signum:
        save_interrupted(run_dir, model, optimizer, config, history, stopped, log)
        raise Interrupted(stop.signum)

    test_loss, test_acc = evaluate(model, data.test_x, data.test_y)
    summary = {"test_loss": test_loss, "test_acc": test_acc, "epochs": config.epochs,
               "train_seconds": sum(r["seconds"] for r in history),
               "val_acc": history[-1]["val_acc"] if history else None,
               "config": dataclasses.asdict(config)}
    write_summary(run_dir, summary)
    log(f"test accuracy {100 * test_acc:.2f}% (loss {test_loss:.4f}) after {config.epochs} "
        f"epochs, {summary['train_seconds']:.1f}s of training")
    return TrainResult(summary, model, data, history)


def _check_finite(model: Module, epoch: int) -> None:
    """A step can leave inf/NaN weights after a finite loss; never save them as a checkpoint."""
    if not all(np.isfinite(p.data).all() for p in model.parameters()):
        raise TrainingDiverged(f"the weights became inf or nan in epoch {epoch + 1}; stopped")


class _StopRequest:
    signum = 0


@contextmanager
def _stop_between_steps() -> Iterator[_StopRequest]:
    """Turn the first SIGINT/SIGTERM into a request that the loop honours between two steps
    (so weights and optimizer state are never half-updated when saved); a second one raises
    Interrupted at once. A signal the process ignores stays ignored, and outside the main
    thread signals cannot be caught: nothing changes."""
    stop = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.signum:
            raise Interrupted(signum)
        stop.signum = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)
           if signal.getsignal(s) is not signal.SIG_IGN}  # nohup, `cmd &`: stay ignored
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _train_epoch(model: Module, optimizer: Optimizer, config: TrainConfig, epoch: int,
                 schedule: Callable[[float], float], x: np.ndarray, y: np.ndarray,
                 progress: bool, stop: _StopRequest, resume_at: EpochState | None = None
                 ) -> dict[str, Any] | EpochState:
    """One epoch (from `resume_at` if given): its metrics row, or where it stopped when a
    signal asked it to."""
    start = time.perf_counter()
    model.train()
    dropouts = list(_dropouts(model))
    for layer, m in enumerate(dropouts):
        m.rng = dropout_rng(config.seed, epoch, layer)
    order = epoch_order(config.seed, epoch, len(x))
    moves = epoch_moves(config.augment, config.seed, epoch, len(x), config.shift)
    batches = range(0, len(x), config.batch_size)
    first, loss_sum, correct, seen, before = 0, 0.0, 0, 0, 0.0
    if resume_at is not None:
        if not 0 < resume_at.step < len(batches) or len(resume_at.dropout_rng) != len(dropouts):
            raise ValueError(f"{INTERRUPTED} stopped after step {resume_at.step} of epoch "
                             f"{epoch + 1}, which does not fit this run ({len(batches)} steps "
                             f"an epoch); resume from {CHECKPOINT} by deleting {INTERRUPTED}")
        first, loss_sum, correct = resume_at.step, resume_at.loss_sum, resume_at.correct
        seen, before = resume_at.seen, resume_at.seconds
        for m, state in zip(dropouts, resume_at.dropout_rng):
            m.rng.bit_generator.state = state
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(batches[first:], desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                   unit="batch", initial=first, total=len(batches))
    for step, i in enumerate(bar if bar is not None else batches[first:], start=first):
        idx = order[i:i + config.batch_size]
        optimizer.lr = schedule(epoch + step / len(batches))
        batch = x[idx] if moves is None else distort(x[idx], moves[i:i + config.batch_size],
                                                     config.augment)
        optimizer.zero_grad()  # first, as in PyTorch: the last step's gradients are freed early
        logits = model(Tensor(batch))
        loss = cross_entropy(logits, y[idx])
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingDiverged(f"loss became {value} at epoch {epoch + 1}, step {step + 1}; "
                                   f"stopped")
        loss.backward()
        optimizer.step()
        loss_sum += value * len(idx)
        correct += int((logits.data.argmax(axis=1) == y[idx]).sum())
        seen += len(idx)
        if bar is not None and step % 20 == 0:
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{100 * correct / seen:.2f}%")
        if stop.signum and step + 1 < len(batches):
            if bar is not None:
                bar.close()
            return EpochState(epoch + 1, step + 1, loss_sum, correct, seen,
                              before + time.perf_counter() - start,
                              [dict(m.rng.bit_generator.state) for m in dropouts])
    if bar is not None:
        bar.close()
    return {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
            "lr": schedule(epoch), "seconds": before + time.perf_counter() - start}


def _dropouts(module: Module) -> Iterator[Dropout]:
    for _, child in module.children():
        if isinstance(child, Dropout):
            yield child
        yield from _dropouts(child)


