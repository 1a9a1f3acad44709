"""A run directory's files and the rules around them: which files a run owns, refusing to
start over an earlier run, where --resume continues and what a changed flag does there,
what is saved when a run is stopped, and the metrics files written each epoch.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import Checkpoint, EpochState, load_checkpoint, save_checkpoint
from .config import TrainConfig, lr_schedule
from .files import atomic_write
from .nn import Module
from .optim import Optimizer

CHECKPOINT = "checkpoint.npz"
INTERRUPTED = "interrupted.npz"
# the pictures a finished run gets (drawn by report.draw_pictures), by name
PICTURES = {"digits": "digits.png", "augmented": "augmented.png",
            "explanation": "explanation.png", "curves": "learning_curves.png",
            "predictions": "predictions.png", "confusion": "confusion_matrix.png",
            "mistakes": "confident_mistakes.png", "weights": "first_layer_weights.png"}
RUN_FILES = (CHECKPOINT, INTERRUPTED, "metrics.json", "metrics.csv", "summary.json",
             *PICTURES.values(), "report.html")


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

def refuse_existing_run(run_dir: Path) -> None:
    """Refuse a directory that holds any of RUN_FILES, saying how to continue or replace it."""
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    if not found:
        return
    how = ("pass --resume to continue it, --overwrite to delete it and start again"
           if CHECKPOINT in found or INTERRUPTED in found
           else "pass --overwrite to delete it and start again")
    raise FileExistsError(f"{run_dir} already holds a run ({', '.join(found)}); {how}, or "
                          f"choose another --run-dir")


def check_resume(saved: Checkpoint, source: Path, config: TrainConfig, run_dir: Path,
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


def saved_so_far(run_dir: Path, done: int) -> str:
    """What is on disk to continue from: a true sentence whether or not an epoch was saved."""
    if done == 0 and (run_dir / INTERRUPTED).exists():
        return f"no epoch was completed; --resume continues from {run_dir / INTERRUPTED}"
    if done == 0:
        return f"no epoch was completed, so there is no {CHECKPOINT} to --resume"
    return f"{run_dir / CHECKPOINT} holds the last completed epoch ({done})"


def lower_lr_advice(resumed: bool) -> str:
    """What to do about a run whose loss became NaN or infinite."""
    if resumed:
        return ("a resumed run keeps its learning rate: start a new run with a smaller --lr "
                "(--overwrite or another --run-dir)")
    return "try a smaller --lr"


def save_interrupted(run_dir: Path, model: Module, optimizer: Optimizer, config: TrainConfig,
                     history: list[dict], stopped: EpochState | None,
                     log: Callable[[str], Any]) -> None:
    """Save a stopped run's place (into INTERRUPTED, unless it stopped right at an epoch's
    end) and say in one line what --resume will do."""
    if stopped is None:  # stopped right after an epoch was saved: the checkpoint is all there is
        log(f"\ninterrupted after epoch {len(history)}: {saved_so_far(run_dir, len(history))} — "
            f"continue with --resume")
        return
    partial = run_dir / INTERRUPTED
    save_checkpoint(partial, model, optimizer, config, len(history), history, partial=stopped)
    done = (f"{run_dir / CHECKPOINT} holds the last completed epoch ({len(history)})" if history
            else "no epoch was completed yet")
    log(f"\ninterrupted during epoch {stopped.epoch} after step {stopped.step}: saved to "
        f"{partial} ({done}); --resume continues from step {stopped.step + 1}, with the same "
        f"numbers as an uninterrupted run")


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    """metrics.json and metrics.csv: one row per completed epoch."""
    atomic_write(run_dir / "metrics.json", json.dumps(history, indent=2).encode())
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    atomic_write(run_dir / "metrics.csv", text.getvalue().encode())


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2).encode())
