"""The training loop: seeded minibatch training with validation, checkpoints and resume.

A run directory holds everything a run produces (RUN_FILES): `checkpoint.npz` (weights and
optimizer state after the last completed epoch), `metrics.json` / `metrics.csv`,
`summary.json`, the pictures, and `interrupted.npz` when a run was stopped. Shuffling and
dropout draw from generators seeded by (seed, epoch), so a resumed run repeats an
uninterrupted one number for number.

Ctrl-C (SIGINT) and SIGTERM stop the loop between two steps, never inside one: the weights,
optimizer state and the epoch's position go to `interrupted.npz`, and --resume continues from
the next step with the same numbers. A second signal stops at once.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import signal
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from .augment import epoch_shifts, shift
from .data import MNIST, load_mnist
from .files import atomic_write, remove_stale_temps
from .nn import MLP, Dropout, Module, cross_entropy
from .optim import SGD, Adam, CosineLR, Optimizer, StepLR
from .tensor import Tensor, no_grad

CHECKPOINT = "checkpoint.npz"
INTERRUPTED = "interrupted.npz"
PICTURES = ("digits.png", "augmented.png", "explanation.png", "learning_curves.png",
            "predictions.png", "confusion_matrix.png", "confident_mistakes.png",
            "first_layer_weights.png")
RUN_FILES = (CHECKPOINT, INTERRUPTED, "metrics.json", "metrics.csv", "summary.json", *PICTURES,
             "report.html")
MAX_SHIFT = 4
FORMAT = "tinygrad_mnist-checkpoint-1"
HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


@dataclass
class TrainConfig:
    """Everything that decides a run's numbers (and is stored in its checkpoint)."""

    hidden: tuple[int, ...] = (512, 256)
    epochs: int = 25
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
    shift: int = 2  # move each training digit by up to this many pixels each way (0: off)

    def __post_init__(self) -> None:
        self.hidden = tuple(self.hidden)

        def is_int(v: Any) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return is_int(v) or (isinstance(v, (float, np.floating)) and math.isfinite(v))

        checks = [(all(is_int(h) and h >= 1 for h in self.hidden),
                   "hidden sizes must be positive integers"),
                  (is_int(self.epochs) and self.epochs >= 1, "epochs must be an integer >= 1"),
                  (is_int(self.batch_size) and self.batch_size >= 1,
                   "batch_size must be an integer >= 1"),
                  (self.optimizer in ("sgd", "adam"), "optimizer must be 'sgd' or 'adam'"),
                  (is_num(self.lr) and self.lr > 0, "lr must be a finite number > 0"),
                  (is_num(self.momentum) and 0 <= self.momentum < 1, "momentum must be in [0, 1)"),
                  (is_num(self.weight_decay) and self.weight_decay >= 0,
                   "weight_decay must be a finite number >= 0"),
                  (self.schedule in ("cosine", "step", "none"),
                   "schedule must be 'cosine', 'step' or 'none'"),
                  (is_num(self.dropout) and 0 <= self.dropout < 1, "dropout must be in [0, 1)"),
                  (is_int(self.seed) and self.seed >= 0, "seed must be an integer >= 0"),
                  (is_int(self.val_size) and 0 <= self.val_size < 60_000,
                   "val_size must be an integer in [0, 60000)"),
                  (self.train_limit is None or (is_int(self.train_limit) and self.train_limit >= 1),
                   "train_limit must be None or an integer >= 1"),
                  # MNIST centres each digit's 20-pixel box in 28: a shift over 4 cuts off ink
                  (is_int(self.shift) and 0 <= self.shift <= MAX_SHIFT,
                   f"shift must be an integer in [0, {MAX_SHIFT}]")]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"bad training config: {message} (got {self})")
        # plain Python numbers (not NumPy scalars), so that the config is JSON in checkpoints
        self.hidden = tuple(int(h) for h in self.hidden)
        for name in ("epochs", "batch_size", "seed", "val_size"):
            setattr(self, name, int(getattr(self, name)))
        for name in ("lr", "momentum", "weight_decay", "dropout"):
            setattr(self, name, float(getattr(self, name)))
        if self.train_limit is not None:
            self.train_limit = int(self.train_limit)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class CheckpointError(ValueError):
    """A file is not a readable tinygrad_mnist checkpoint."""


class Interrupted(KeyboardInterrupt):
    """Training was stopped by a signal (SIGINT = Ctrl-C, or SIGTERM); `signum` says which, so
    the command can exit with 128 + signum as shells expect (130, 143)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def check_model_size(sizes: Sequence[int], batch_size: int = 128) -> None:
    """Refuse, before anything is allocated, an MLP that cannot fit in this machine's memory.

    The estimate counts float32 weights, gradients, two optimizer buffers and the two copies a
    checkpoint save makes, plus a few activations per layer for one batch.
    """
    params = sum((a + 1) * b for a, b in pairwise(sizes))
    need = 4 * (6 * params + 4 * batch_size * sum(sizes))
    have = _physical_memory()
    if need > have:
        raise ValueError(f"an MLP {'-'.join(map(str, sizes))} has {params:,} parameters and needs "
                         f"about {_gigabytes(need)} of memory; this machine has {_gigabytes(have)}. "
                         f"Choose smaller --hidden sizes")


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX: assume a large desktop
        return 64 << 30


def _gigabytes(n: int) -> str:
    return f"{n / 2 ** 30:,.1f} GB"


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


def resume_config(run_dir: str | os.PathLike, **changes: Any) -> TrainConfig:
    """The config of the run in `run_dir` (see `resume_point`), with `changes` applied (the
    flags a user gave with --resume; `train` then says what each change does, or refuses it)."""
    return dataclasses.replace(resume_point(run_dir)[1].config, **changes)


def resume_point(run_dir: str | os.PathLike) -> tuple[Path, Checkpoint]:
    """Where --resume continues: `interrupted.npz` (a stopped epoch, continued from its next
    step) unless `checkpoint.npz` is further along, else `checkpoint.npz`."""
    run_dir = Path(run_dir)
    found = [(p, load_checkpoint(p)) for p in (run_dir / CHECKPOINT, run_dir / INTERRUPTED)
             if p.exists()]
    if not found:
        raise FileNotFoundError(f"--resume: no checkpoint at {run_dir / CHECKPOINT}")
    return max(found, key=lambda f: f[1].epoch + 0.5 * (f[1].partial is not None))


def train(config: TrainConfig, run_dir: str | os.PathLike, data: MNIST | None = None,
          data_dir: str | os.PathLike | None = None, resume: bool = False,
          overwrite: bool = False, progress: bool = True, plots: bool = True,
          log: Callable[[str], Any] = print, data_dir_name: str = "data_dir") -> dict[str, Any]:
    """Train, validating and checkpointing each epoch; returns the summary (test accuracy...).

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
        _check_resume(saved, source, config, run_dir, log)
    elif not overwrite:
        _refuse_existing_run(run_dir)
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
            raise TrainingDiverged(f"{e}; {_kept(run_dir, len(history))}; "
                                   f"{_advice(saved is not None)}") from None
        except KeyboardInterrupt:  # a second signal, or one raised inside a step: no save
            log(f"\ninterrupted during epoch {epoch + 1}; {_kept(run_dir, len(history))}")
            raise
    if stop.signum:
        _save_interrupted(run_dir, model, optimizer, config, history, stopped, log)
        raise Interrupted(stop.signum)

    test_loss, test_acc = evaluate(model, data.test_x, data.test_y)
    summary = {"test_loss": test_loss, "test_acc": test_acc, "epochs": config.epochs,
               "train_seconds": sum(r["seconds"] for r in history),
               "val_acc": history[-1]["val_acc"] if history else None,
               "config": dataclasses.asdict(config)}
    atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2).encode())
    log(f"test accuracy {100 * test_acc:.2f}% (loss {test_loss:.4f}) after {config.epochs} "
        f"epochs, {summary['train_seconds']:.1f}s of training")
    if plots:
        from .report import write_report
        pictures = draw_pictures(model, data, history, run_dir, config)
        summary["pictures"] = [str(p) for p in pictures.values()]
        log(f"pictures in {run_dir}")
        log(f"report: {write_report(run_dir, data=data, pictures=pictures)}")
    return summary


def _refuse_existing_run(run_dir: Path) -> None:
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    if not found:
        return
    how = ("pass --resume to continue it, --overwrite to delete it and start again"
           if CHECKPOINT in found or INTERRUPTED in found
           else "pass --overwrite to delete it and start again")
    raise FileExistsError(f"{run_dir} already holds a run ({', '.join(found)}); {how}, or "
                          f"choose another --run-dir")


def _check_resume(saved: Checkpoint, source: Path, config: TrainConfig, run_dir: Path,
                  log: Callable[[str], Any]) -> None:
    """Refuse settings that differ from the checkpoint's; say what a new --epochs does."""
    old = saved.config
    diffs = [f"--{f.name.replace('_', '-')} {_flag_text(getattr(config, f.name))} (the "
             f"checkpoint has {_flag_text(getattr(old, f.name))})"
             for f in dataclasses.fields(TrainConfig)
             if f.name != "epochs" and getattr(config, f.name) != getattr(old, f.name)]
    if diffs:
        raise ValueError(f"--resume continues the run with the checkpoint's settings; these "
                         f"differ: {'; '.join(diffs)}. Drop them, or start a new run with them "
                         f"(--overwrite or another --run-dir). Only --epochs may change")
    if config.epochs < saved.epoch:
        raise ValueError(f"--epochs {config.epochs} is fewer than the {saved.epoch} epochs "
                         f"{source} already holds")
    if saved.partial is not None and config.epochs < saved.partial.epoch:
        raise ValueError(f"--epochs {config.epochs} ends before epoch {saved.partial.epoch}, "
                         f"inside which {source} stopped; resume with --epochs "
                         f"{saved.partial.epoch} or more")
    at = saved.partial
    log(f"resuming {source} " + (f"in epoch {at.epoch} after step {at.step}" if at else
                                 f"after epoch {saved.epoch}") + f" of {config.epochs}")
    if config.epochs != old.epochs:
        log(_new_epochs_effect(old, config, saved.epoch, at is not None))
    if source.name == CHECKPOINT and (run_dir / INTERRUPTED).exists():
        log(f"{run_dir / INTERRUPTED} is older than {source} and not used; it is removed when "
            f"the next epoch is saved")


def _new_epochs_effect(old: TrainConfig, new: TrainConfig, done: int, inside: bool) -> str:
    """What resuming with another --epochs does to the learning-rate schedule, in one line."""
    if new.schedule == "none":
        return (f"--epochs {new.epochs} differs from the checkpoint's {old.epochs}: the learning "
                f"rate is constant (--schedule none), so the result equals a straight "
                f"{new.epochs}-epoch run")
    before, after = lr_schedule(old), lr_schedule(new)
    upto = done + inside  # resuming inside an epoch: it used the old schedule so far
    steps_done = np.linspace(0, upto, 64 * upto, endpoint=False)  # points of the epochs done
    same_past = all(before(t) == after(t) for t in steps_done)
    text = (f"--epochs {new.epochs} differs from the checkpoint's {old.epochs}: the "
            f"{new.schedule} learning-rate schedule is recomputed for {new.epochs} epochs")
    if before(done) != after(done) and not inside:
        text += (f", so epoch {done + 1} starts at lr {after(done):.4g} (the {old.epochs}-epoch "
                 f"schedule is at {before(done):.4g} there)")
    if same_past:
        return text + f"; it gave the same rates so far, so the result equals a straight " \
                      f"{new.epochs}-epoch run"
    return text + f"; the result differs from a straight {new.epochs}-epoch run"


def _flag_text(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _kept(run_dir: Path, done: int) -> str:
    """What is on disk to continue from: a true sentence whether or not an epoch was saved."""
    if done == 0 and (run_dir / INTERRUPTED).exists():
        return f"no epoch was completed; --resume continues from {run_dir / INTERRUPTED}"
    if done == 0:
        return f"no epoch was completed, so there is no {CHECKPOINT} to --resume"
    return f"{run_dir / CHECKPOINT} holds the last completed epoch ({done})"


def _advice(resumed: bool) -> str:
    if resumed:
        return ("a resumed run keeps its learning rate: start a new run with a smaller --lr "
                "(--overwrite or another --run-dir)")
    return "try a smaller --lr"


def _check_finite(model: Module, epoch: int) -> None:
    """A step can leave inf/NaN weights after a finite loss; never save them as a checkpoint."""
    if not all(np.isfinite(p.data).all() for p in model.parameters()):
        raise TrainingDiverged(f"the weights became inf or nan in epoch {epoch + 1}; stopped")


def _save_interrupted(run_dir: Path, model: Module, optimizer: Optimizer, config: TrainConfig,
                      history: list[dict], stopped: EpochState | None,
                      log: Callable[[str], Any]) -> None:
    if stopped is None:  # stopped right after an epoch was saved: the checkpoint is all there is
        log(f"\ninterrupted after epoch {len(history)}: {_kept(run_dir, len(history))} — "
            f"continue with --resume")
        return
    partial = run_dir / INTERRUPTED
    save_checkpoint(partial, model, optimizer, config, len(history), history, partial=stopped)
    done = (f"{run_dir / CHECKPOINT} holds the last completed epoch ({len(history)})" if history
            else "no epoch was completed yet")
    log(f"\ninterrupted during epoch {stopped.epoch} after step {stopped.step}: saved to "
        f"{partial} ({done}); --resume continues from step {stopped.step + 1}, with the same "
        f"numbers as an uninterrupted run")


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


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of an epoch's examples: drawn from (seed, epoch) alone, so a resumed run
    repeats an uninterrupted one (dropout draws from [seed, epoch, 1], shifts [seed, epoch, 2])."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _train_epoch(model: Module, optimizer: Optimizer, config: TrainConfig, epoch: int,
                 schedule: Callable[[float], float], x: np.ndarray, y: np.ndarray,
                 progress: bool, stop: _StopRequest, resume_at: EpochState | None = None
                 ) -> dict[str, Any] | EpochState:
    """One epoch (from `resume_at` if given): its metrics row, or where it stopped when a
    signal asked it to."""
    start = time.perf_counter()
    model.train()
    dropouts = list(_dropouts(model))
    for m in dropouts:
        m.rng = np.random.default_rng([config.seed, epoch, 1])
    order = epoch_order(config.seed, epoch, len(x))
    shifts = epoch_shifts(config.seed, epoch, len(x), config.shift) if config.shift else None
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
        batch = x[idx] if shifts is None else shift(x[idx], shifts[i:i + config.batch_size])
        logits = model(Tensor(batch))
        loss = cross_entropy(logits, y[idx])
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingDiverged(f"loss became {value} at epoch {epoch + 1}, step {step + 1}; "
                                   f"stopped")
        optimizer.zero_grad()
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


def draw_pictures(model: Module, data: MNIST, history: list[dict], directory: Path,
                  config: TrainConfig) -> dict[str, Path]:
    """The pictures a person wants after training, as PNGs in `directory`, by name; the run's
    report embeds these same files."""
    from . import plots
    from .explain import explain
    probs = predict_proba(model, data.test_x)
    preds = probs.argmax(axis=1)
    wrong = np.flatnonzero(preds != data.test_y)
    mistake = int(wrong[0]) if len(wrong) else 0  # where learning happens; else the first digit
    pictures = {"digits": plots.plot_digits(data.train_x[:16], data.train_y[:16],
                                            directory / "digits.png")}
    if config.shift:
        examples, n = data.train_x[:8], len(data.train_x[:config.train_limit])
        moves = []
        for epoch in range(min(3, config.epochs)):  # the very shifts these digits got in training
            position = np.argsort(epoch_order(config.seed, epoch, n))[:8]
            moves.append(epoch_shifts(config.seed, epoch, n, config.shift)[position])
        pictures["augmented"] = plots.plot_augmented(
            examples, [shift(examples, m) for m in moves], moves, directory / "augmented.png")
    why = explain(model, data.test_x[mistake], label=int(data.test_y[mistake]))
    return {**pictures,
            "curves": plots.plot_learning_curves(history, directory / "learning_curves.png"),
            "predictions": plots.plot_predictions(
                data.test_x[:24], data.test_y[:24], preds[:24], directory / "predictions.png",
                probs=probs[:24].max(axis=1), title="test digits: true label and prediction"),
            "confusion": plots.plot_confusion_matrix(data.test_y, preds,
                                                     directory / "confusion_matrix.png"),
            "mistakes": plots.plot_confident_mistakes(data.test_x, data.test_y, probs,
                                                      directory / "confident_mistakes.png"),
            "explanation": plots.plot_explanation(why, directory / "explanation.png"),
            "weights": plots.plot_first_layer_weights(model.parameters()[0].data,
                                                      directory / "first_layer_weights.png")}


# ----------------------------------------------------------------------------- files


@dataclass
class EpochState:
    """Where a stopped epoch was (in interrupted.npz): enough to continue it number for number.
    The shuffling order is re-drawn from (seed, epoch); dropout's generators are restored."""

    epoch: int  # 1-based, as the user sees it
    step: int  # steps done in it
    loss_sum: float
    correct: int
    seen: int
    seconds: float
    dropout_rng: list[dict]  # bit_generator.state of each Dropout, in model order


@dataclass
class Checkpoint:
    model: MLP
    optimizer_state: dict[str, np.ndarray]
    config: TrainConfig
    epoch: int  # completed epochs
    history: list[dict]
    partial: EpochState | None = None  # the stopped epoch, in interrupted.npz


def save_checkpoint(path: str | os.PathLike, model: Module, optimizer: Optimizer,
                    config: TrainConfig, epoch: int, history: list[dict],
                    partial: EpochState | None = None) -> None:
    """Write weights, optimizer state and metadata as a plain .npz (no pickle), atomically."""
    meta: dict[str, Any] = {"format": FORMAT, "config": dataclasses.asdict(config),
                            "epoch": epoch, "history": history}
    if partial is not None:
        meta["partial"] = dataclasses.asdict(partial)
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    arrays.update({f"optim/{k}": v for k, v in optimizer.state_dict().items()})
    arrays["meta"] = np.array(json.dumps(meta))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # NumPy's stub: a bool kwarg
    atomic_write(Path(path), buffer.getvalue())


MAX_META_BYTES = 64 << 20  # the JSON metadata; a 1000-epoch history is about 1 MB
_NPY_HEADER = 65_546  # the largest header an .npy file can have (version 1.0)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`, trusting nothing in it.

    Every member's size (from the zip headers) is checked against the shapes of the model its
    metadata describes before anything is read, and no member is ever unpickled, so a crafted
    file is refused without allocating more than the model needs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with zipfile.ZipFile(path) as z:
            members = {info.filename: info for info in z.infolist()}
            if "meta.npy" not in members:
                raise ValueError("it has no metadata (meta.npy)")
            text = _read_npy(z, members["meta.npy"], "U", max_bytes=MAX_META_BYTES)
            meta = _check_meta(json.loads(str(text[()])))
            config = TrainConfig(**{**meta["config"], "hidden": tuple(meta["config"]["hidden"])})
            check_model_size([784, *config.hidden, 10], config.batch_size)
            model = build_model(config)
            shapes = _expected_shapes(config, model)
            unexpected = sorted(set(members) - set(shapes) - {"meta.npy"})
            missing = sorted(n for n in shapes if n.startswith("model/") and n not in members)
            if unexpected or missing:
                raise ValueError(f"its arrays do not fit MLP {model.sizes}: missing {missing}, "
                                 f"unexpected {unexpected}")
            arrays = {name[:-4]: _read_npy(z, members[name], kind, shape)
                      for name, (shape, kind) in shapes.items() if name in members}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, TypeError, KeyError, OSError,
            EOFError, NotImplementedError, RecursionError) as e:  # RecursionError: [[[[... JSON
        raise CheckpointError(f"{path} is not a tinygrad_mnist checkpoint (an .npz written by "
                              f"`tinygrad-mnist train`), or it is damaged: {e}") from None
    optimizer_state = {k[6:]: v for k, v in arrays.items() if k.startswith("optim/")}
    try:
        model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model/")})
        build_optimizer(config, model).load_state_dict(optimizer_state)  # checked now, not at resume
    except ValueError as e:
        raise CheckpointError(f"{path} does not fit its own settings: {e}") from None
    partial = meta.get("partial")
    return Checkpoint(model, optimizer_state, config, meta["epoch"], meta["history"],
                      EpochState(**partial) if partial is not None else None)


def _expected_shapes(config: TrainConfig, model: Module) -> dict[str, tuple[tuple | None, str]]:
    """The .npz member names a checkpoint of this model may hold, with shape and dtype kind."""
    shapes: dict[str, tuple[tuple | None, str]] = {
        f"model/{name}.npy": (p.shape, "f") for name, p in model.named_parameters()}
    params = model.parameters()
    for key in build_optimizer(config, model)._state_keys:  # per parameter; "step" is a count
        shapes.update({f"optim/{key}.{i}.npy": ((), "iu") if key == "step" else (p.shape, "f")
                       for i, p in enumerate(params)})
    shapes["optim/steps.npy"] = ((), "iu")
    return shapes


def _read_npy(z: zipfile.ZipFile, info: zipfile.ZipInfo, kinds: str, shape: tuple | None = None,
              max_bytes: int = 0) -> np.ndarray:
    """One .npy member of dtype kind `kinds`, and of `shape` if given (else at most
    `max_bytes`), bounded: its zip header's size, then its .npy header (dtype, shape), are
    checked before its data is read; zipfile never inflates past the size it declared."""
    if shape is not None:
        max_bytes = _NPY_HEADER + 8 * math.prod(shape)
    if info.file_size > max_bytes:
        raise ValueError(f"{info.filename} is {info.file_size:,} bytes unpacked; at most "
                         f"{max_bytes:,} expected" + (f" for shape {shape}" if shape else ""))
    with z.open(info) as f:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ValueError(f"{info.filename}: unsupported .npy version {version}")
        found, fortran, dtype = read_header(f)
        fits = dtype.kind == "U" if kinds == "U" else dtype.kind in kinds and dtype.itemsize <= 8
        if dtype.hasobject or not fits:
            raise ValueError(f"{info.filename} holds {dtype} values, expected "
                             f"{'text' if kinds == 'U' else 'numbers'} (objects are never unpickled)")
        if shape is not None and found != shape:
            raise ValueError(f"{info.filename} has shape {found}, the model expects {shape}")
        nbytes = math.prod(found) * dtype.itemsize
        if nbytes > max_bytes:
            raise ValueError(f"{info.filename} declares {nbytes:,} bytes, at most {max_bytes:,} "
                             f"expected")
        data = f.read(nbytes)
    if len(data) != nbytes:
        raise ValueError(f"{info.filename} is truncated")
    return np.frombuffer(data, dtype).reshape(found, order="F" if fortran else "C")


def _check_meta(meta: Any) -> dict[str, Any]:
    """The metadata with every field's type checked, so a hand-edited file fails here, at load
    time, and not in the middle of a resumed run."""
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not isinstance(meta, dict):
        raise TypeError("its metadata is not a JSON object")
    if meta.get("format") != FORMAT:
        raise ValueError(f"metadata format is {meta.get('format')!r}, expected {FORMAT!r}")
    config = meta.get("config")
    if isinstance(config, dict):
        config.setdefault("shift", 0)  # checkpoints from before augmentation trained without it
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if not isinstance(config, dict) or set(config) != fields:
        raise ValueError(f"metadata 'config' must be an object with the keys {sorted(fields)}")
    if not isinstance(config["hidden"], list) or not all(is_int(h) for h in config["hidden"]):
        raise ValueError(f"metadata config 'hidden' must be a list of integers, "
                         f"got {config['hidden']!r}")
    for name in ("optimizer", "schedule"):
        if not isinstance(config[name], str):
            raise TypeError(f"metadata config {name!r} must be a string, got {config[name]!r}")
    epoch: Any = meta.get("epoch")
    history = meta.get("history")
    if not is_int(config["epochs"]):
        raise ValueError(f"metadata config 'epochs' must be an integer, got {config['epochs']!r}")
    if not is_int(epoch) or not 0 <= epoch <= config["epochs"]:
        raise ValueError(f"metadata 'epoch' must be an integer in [0, epochs], got {epoch!r}")
    if not isinstance(history, list) or len(history) != epoch:
        raise ValueError(f"metadata 'history' must be a list of {epoch} rows (one per epoch), "
                         f"got {str(history)[:60]!r}")
    for i, row in enumerate(history):
        if not isinstance(row, dict) or set(row) != set(HISTORY_KEYS) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in row.values()):
            raise ValueError(f"metadata 'history' row {i} must map {list(HISTORY_KEYS)} to "
                             f"numbers, got {str(row)[:80]!r}")
    partial = meta.get("partial")
    if partial is not None:
        _check_partial(partial, epoch)
    return meta


def _check_partial(partial: Any, epoch: int) -> None:
    fields = [f.name for f in dataclasses.fields(EpochState)]
    if not isinstance(partial, dict) or list(partial) != fields:
        raise ValueError(f"metadata 'partial' must be an object with the keys {fields}")
    counts = [partial[k] for k in ("epoch", "step", "correct", "seen")]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts) or \
            partial["epoch"] != epoch + 1 or not all(
                isinstance(partial[k], (int, float)) for k in ("loss_sum", "seconds")):
        raise ValueError(f"metadata 'partial' holds bad values: {str(partial)[:80]!r}")
    if not isinstance(partial["dropout_rng"], list):
        raise TypeError("metadata 'partial' dropout_rng must be a list")
    for state in partial["dropout_rng"]:
        np.random.PCG64().state = state  # raises ValueError/TypeError/KeyError if malformed


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    atomic_write(run_dir / "metrics.json", json.dumps(history, indent=2).encode())
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    atomic_write(run_dir / "metrics.csv", text.getvalue().encode())
