"""Training in the page: a run in a background thread, its controls, and what it shows.

The run trains as `train` does: the same TrainConfig, model, optimizer and schedule, the same
shuffling, distortions and steps in the same order, so it reaches the same weights. Besides, it only
writes small snapshots: the numbers about 5 times a second, the first-layer tiles and the
predictions for 16 digits twice a second, accuracy on held-out digits every few hundred steps.
Pages read those (`EventStream`), so watching costs the training loop little. A run stops when
asked, after its epochs, after `max_seconds` (pauses included), or when no page has read it for
`reader_timeout` seconds.
"""
from __future__ import annotations

import base64
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .augment import distort, epoch_moves
from .checkpoint import EpochState, save_checkpoint
from .config import TrainConfig, build_model, build_optimizer, check_model_size, lr_schedule
from .data import MNIST
from .files import check_writable
from .nn import MLP, Dropout, Linear, cross_entropy
from .predict import evaluate, predict_proba
from .seeding import dropout_rng, epoch_order
from .tensor import Tensor

LN10 = math.log(10)  # the loss of a network that gives each of the 10 digits 1/10
MAX_EPOCHS, MAX_SECONDS, READER_TIMEOUT = 20, 600.0, 30.0
MAX_READERS, MAX_SAVES = 4, 5  # pages streaming one run (each holds a server thread); saves
PUBLISH_EVERY, PICTURES_EVERY, HEARTBEAT = 0.2, 0.5, 1.0  # seconds
N_TILES = N_DIGITS = 16
PROBE_DIGITS = 2000  # validation digits measured every few hundred steps
POINTS_PER_EPOCH = 100  # points of the curves, whatever the batch size
SMOOTHING = 0.95  # of the shown train loss and accuracy: an average over about 20 steps


class RunConflict(RuntimeError):
    """A run is going already, or a control does not fit the run's state (HTTP 409)."""


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} minutes" if seconds >= 60 else f"{seconds:g} s"


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=np.uint8).tobytes()).decode()


def tiles_b64(w: np.ndarray, scale: np.ndarray | float | None = None) -> str:
    """The columns of a (784, n) first-layer weight matrix as n 28x28 tiles of bytes, 128 = 0,
    each on its own scale (or all on `scale`): what the page colours blue-white-red."""
    w = np.asarray(w, np.float64).T
    if scale is None:
        scale = np.abs(w).max(axis=1, keepdims=True)
    return _b64(np.rint(128 + 127 * w / np.maximum(scale, 1e-12)))


class LiveRun:
    """One training run in a background thread, its controls, and its snapshots.

    Only the trainer changes the model, inside `_model_lock`; copies and saves take that lock
    between two steps. `_cond` guards the state and the snapshots; the trainer takes it for a
    moment each step, never while computing."""

    def __init__(self, config: TrainConfig, data: MNIST, preset: str = "custom", owner: str = "",
                 reader_timeout: float = READER_TIMEOUT, max_seconds: float = MAX_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        check_model_size([784, *config.hidden, 10], config.batch_size)
        self.id, self.preset, self.owner, self.config = secrets.token_hex(4), preset, owner, config
        self.reader_timeout, self.max_seconds, self._clock = reader_timeout, max_seconds, clock
        self.model, self._schedule = build_model(config), lr_schedule(config)
        self.optimizer = build_optimizer(config, self.model)
        modules = [m for _, m in self.model.named_modules()]
        self._linears = [m for m in modules if isinstance(m, Linear)]
        self._dropouts = [m for m in modules if isinstance(m, Dropout)]
        self._data, self._x, self._y = data, data.train_x[:config.train_limit], \
            data.train_y[:config.train_limit]
        self.steps_per_epoch = math.ceil(len(self._x) / config.batch_size)
        self._record_every = max(1, self.steps_per_epoch // POINTS_PER_EPOCH)
        self._probe_every = max(300, 38_400 // config.batch_size)
        firsts = [int(np.argmax(data.val_y == d)) for d in range(10) if (data.val_y == d).any()]
        self._digits = [*firsts, *(i for i in range(len(data.val_y)) if i not in firsts)][:N_DIGITS]
        self._model_lock, self._cond = threading.Lock(), threading.Condition()
        self.state, self.reason = "starting", ""
        self.warning: str | None = None
        self.step = self.epoch = self.version = self.drawn = self.saves = self.readers = 0
        self.history: list[dict[str, float]] = []  # one row per epoch, as `train` keeps it
        self._position = (0, 0, 0.0, 0, 0, 0.0)  # epoch, step in it, loss sum, correct, seen, s
        self._want_pause = self._want_step = False
        self._stop_reason: str | None = None  # set: the trainer stops at its next turn
        self._step_result: dict[str, Any] | None = None
        self._ema = [0.0, 0.0, 0.0]  # loss, accuracy, and the weight they have so far
        # published: step, loss, accuracy, lr and each layer's gradient norm; step, validation
        # accuracy; the latest tiles and predictions (`drawn` of them); then what is not yet
        self.points: list[list[float]] = []
        self.val: list[list[float]] = []
        self.pictures: dict[str, Any] = {}
        self._new_points: list[list[float]] = []
        self._new_val: list[float] | None = None
        self._started, self._stamp = clock(), time.strftime("%Y%m%d-%H%M%S")
        self._last_read = self._started
        self._busy, self._rate = 0.0, (0, 0.0, 0.0)  # seconds spent training (not paused);
        # the step and busy seconds at the last publish, and steps per second since the one before
        self._next_publish = self._next_pictures = self._warned = 0.0
        self._thread = threading.Thread(target=self._run, name=f"live-training-{self.id}",
                                        daemon=True)

    def start(self) -> LiveRun:
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self.state in ("starting", "running", "paused")

    def pause(self, paused: bool = True, timeout: float = 10) -> dict[str, Any]:
        """Pause between two steps (once this returns, the step stays put), or resume."""
        with self._cond:
            self._check_alive("pause" if paused else "resume")
            self._want_pause = paused
            self._cond.notify_all()
            was = ("starting", "running") if paused else ("paused",)  # until the trainer acts
            self._cond.wait_for(lambda: self.state not in was, timeout)
        return self.status()

    def step_one(self, timeout: float = 30) -> dict[str, Any]:
        """Pause, then train on one batch; what the step did (`_capture`)."""
        with self._cond:
            self._check_alive("step")
            self._want_pause, self._want_step, self._step_result = True, True, None
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._step_result is not None or not self.alive, timeout)
            if self._step_result is None:
                raise RunConflict(f"the run ended before it could take a step ({self.reason})")
            return self._step_result

    def stop(self, reason: str = "stopped by you", timeout: float = 30) -> dict[str, Any]:
        """Stop between two steps and wait for the trainer to end."""
        with self._cond:
            if self.alive and self._stop_reason is None:
                self._stop_reason = reason
            self._cond.notify_all()
        return self.join(timeout)

    def join(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the trainer's thread to end; the run's status then."""
        if self._thread.is_alive():  # the trainer's thread ends (or the timeout passes)
            self._thread.join(timeout)
        return self.status()

    def copy_model(self) -> MLP:
        """A new model with the run's current weights, as they are between two steps."""
        copy = build_model(self.config)
        with self._model_lock:
            state = self.model.state_dict()
        try:
            copy.load_state_dict(state)  # refuses NaN and infinities
        except ValueError:
            raise RunConflict("the weights are not finite numbers (the run diverged): there is "
                              "no model to use or save") from None
        copy.eval()
        return copy

    def save(self, directory: str | Path) -> Path:
        """The run as a checkpoint (with where it is in its epoch), by `train`'s safe writer, in
        a new file, DIRECTORY/live-<start>-<run>/step-<N>.npz; never over an existing one."""
        self.copy_model()  # refuses weights that are not finite
        with self._model_lock:
            if self.saves >= MAX_SAVES:
                raise RunConflict(f"this run has saved {MAX_SAVES} checkpoints, the most one run may write")
            path = Path(directory) / f"live-{self._stamp}-{self.id}" / f"step-{self.step}.npz"
            try:
                check_writable(path, "npz", overwrite=False, flag="save")
            except FileExistsError:
                raise RunConflict(f"{path} exists already: this step is saved") from None
            epoch, step, loss_sum, correct, seen, seconds = self._position
            partial = EpochState(epoch + 1, step, loss_sum, correct, seen, seconds, [
                dict(m.rng.bit_generator.state) for m in self._dropouts]) if step else None
            save_checkpoint(path, self.model, self.optimizer, self.config, len(self.history),
                            self.history, partial)
            self.saves += 1
        return path

    def status(self) -> dict[str, Any]:
        """Which run, its state (and why it ended), and where it is: what every control replies."""
        return {"run": self.id, "state": self.state, "reason": self.reason, "step": self.step,
                "epoch": self.epoch, "epochs": self.config.epochs, "preset": self.preset}

    def _check_alive(self, what: str) -> None:
        if not self.alive:
            raise RunConflict(f"cannot {what}: the run has ended ({self.reason})")

    def _run(self) -> None:
        try:
            with np.errstate(all="ignore"):  # an overflow shows as a non-finite loss
                for epoch in range(self.config.epochs):
                    if not self._train_epoch(epoch):
                        break
                else:
                    self._stop_reason = f"finished its {self.config.epochs} epochs"
        except Exception as e:  # shown on the page; the server stays up
            self._stop_reason = f"failed: {type(e).__name__}: {e}"
        with self._cond:
            self.reason = self._stop_reason or "stopped"
            self.state = next((s for s in ("finished", "diverged", "failed")
                               if self.reason.startswith(s)), "stopped")
            self._publish()

    def _train_epoch(self, epoch: int) -> bool:
        """One epoch, step by step as `train` takes it; False when the run stops in it."""
        config, model, x, y = self.config, self.model, self._x, self._y
        model.train()
        for layer, m in enumerate(self._dropouts):
            m.rng = dropout_rng(config.seed, epoch, layer)
        order = epoch_order(config.seed, epoch, len(x))
        moves = epoch_moves(config.augment, config.seed, epoch, len(x), config.shift)
        starts = range(0, len(x), config.batch_size)
        loss_sum, correct, seen, seconds = 0.0, 0, 0, 0.0
        for step, i in enumerate(starts):
            turn = self._turn()
            if turn is None:
                return False
            begun = time.perf_counter()
            idx = order[i:i + config.batch_size]
            batch = x[idx] if moves is None else distort(x[idx], moves[i:i + config.batch_size],
                                                         config.augment)
            before = self._tiles() if turn == "capture" else None
            with self._model_lock:
                self.optimizer.lr = self._schedule(epoch + step / len(starts))
                self.optimizer.zero_grad()
                logits = model(Tensor(batch))
                loss = cross_entropy(logits, y[idx])
                value = loss.item()
                if not math.isfinite(value):
                    self._stop_reason = f"diverged: the loss became {value} at step {self.step + 1}"
                    self.warning = (f"The loss became {value} at step {self.step + 1}: the weights "
                                    f"overflowed. The learning rate ({config.lr:g}) is far too "
                                    f"high; the run stopped.")
                    return False
                loss.backward()
                self.optimizer.step()
                hits = int((logits.data.argmax(axis=1) == y[idx]).sum())
                loss_sum, correct, seen = loss_sum + value * len(idx), correct + hits, seen + len(idx)
                seconds += time.perf_counter() - begun
                self.step, self.epoch = self.step + 1, epoch + 1
                self._position = (epoch, step + 1, loss_sum, correct, seen, seconds)
                if step + 1 == len(starts):  # the epoch's row, as `train` writes it
                    val_loss, val_acc = evaluate(model, self._data.val_x, self._data.val_y) \
                        if len(self._data.val_x) else (math.nan, math.nan)
                    self.history.append({"epoch": epoch + 1, "train_loss": loss_sum / seen,
                                         "train_acc": correct / seen, "val_loss": val_loss,
                                         "val_acc": val_acc, "lr": self._schedule(epoch),
                                         "seconds": seconds})
                    self._position = (epoch + 1, 0, 0.0, 0, 0, 0.0)
            self._after_step(value, hits / len(idx), turn, before, batch, y[idx], logits.data)
            self._busy += time.perf_counter() - begun
        return True

    def _turn(self) -> str | None:
        """Wait while paused; then "run", "capture" (one step asked for) or None (stop)."""
        with self._cond:
            while True:
                now = self._clock()
                if self._stop_reason is None and now - self._started > self.max_seconds:
                    self._stop_reason = f"stopped at its time limit, {_duration(self.max_seconds)}"
                if self._stop_reason is None and now - self._last_read > self.reader_timeout:
                    self._stop_reason = f"stopped: no page watched it for {_duration(self.reader_timeout)}"
                if self._stop_reason is not None:
                    return None
                if self._want_step:
                    self._want_step = False
                    return "capture"
                if not self._want_pause:
                    if self.state != "running":
                        self.state, self._next_publish = "running", 0.0
                        self._cond.notify_all()
                    return "run"
                if self.state != "paused":
                    self.state = "paused"
                    self._publish()
                self._cond.wait(0.25)

    def _tiles(self) -> np.ndarray:
        """The first layer's weights into its first N_TILES units, (784, n)."""
        return self._linears[0].weight.data[:, :N_TILES].copy()

    def _after_step(self, loss: float, accuracy: float, turn: str, before: np.ndarray | None,
                    batch: np.ndarray, labels: np.ndarray, logits: np.ndarray) -> None:
        """The smoothed curves, a warning if due, and now and then what pages read."""
        ema = self._ema
        for k, v in enumerate((loss, accuracy, 1.0)):
            ema[k] = SMOOTHING * ema[k] + (1 - SMOOTHING) * v
        if self.step % self._record_every == 0 or turn == "capture":
            norms = [float(np.linalg.norm(m.weight.grad.data)) if m.weight.grad is not None
                     else 0.0 for m in self._linears]
            smooth = ema[0] / ema[2]
            self._new_points.append([self.step, *(float(f"{v:.4g}") for v in (
                smooth, ema[1] / ema[2], self.optimizer.lr, *norms))])
            self._judge(smooth, norms)
        if self.step % self.steps_per_epoch == 0 and self.history:  # all of validation
            self._new_val = [self.step, round(self.history[-1]["val_acc"], 4)]
        elif self.step % self._probe_every == 0 and len(self._data.val_x):
            acc = evaluate(self.model, self._data.val_x[:PROBE_DIGITS],
                           self._data.val_y[:PROBE_DIGITS])[1]
            self._new_val = [self.step, round(acc, 4)]
        now = self._clock()
        if turn == "capture":
            assert before is not None
            self._capture(before, batch, labels, logits, loss)
        if now >= self._next_pictures or turn == "capture":
            self._next_pictures = now + PICTURES_EVERY
            self._draw_pictures()
        if now >= self._next_publish or turn == "capture":
            self._next_publish = now + PUBLISH_EVERY
            with self._cond:
                self._publish()

    def _judge(self, loss: float, norms: list[float]) -> None:
        """Flag a learning rate too high (dead ReLUs; a loss far above ln 10, where networks
        start) or too low (the loss still near ln 10 after 300 steps, gradients flowing)."""
        lr = f"learning rate {self.config.lr:g}"
        warning = (
            f"No gradient reaches the weights any more: the ReLUs output 0 for every digit "
            f"(\"dead\"), so nothing can learn again, and the loss sits near 2.30 = ln 10 (now "
            f"{loss:.3f}), the loss of guessing 1/10 for every digit. Steps this large ({lr}) "
            f"killed them: lower it." if self.step >= 50 and min(norms) < 1e-12 else
            f"The loss ({loss:.3g}) is far above 2.30 = ln 10, worse than guessing 1/10 for every "
            f"digit: each step overshoots. The {lr} is too high." if self.step >= 10
            and loss > LN10 + 1 else
            f"The loss is still about 2.30 = ln 10 ({loss:.3f}), guessing, after {self.step} "
            f"steps, though gradients flow: steps this small ({lr}) may get nowhere; try a "
            f"larger one." if self.step >= 300 and abs(loss - LN10) < 0.3 else None)
        if warning is not None:
            self.warning, self._warned = warning, self._clock()
        elif self._clock() - self._warned > 3:  # a warning stays 3 s at least: pages see it
            self.warning = None

    def _draw_pictures(self) -> None:
        """The first-layer tiles, and the fixed digits' predictions (in eval mode)."""
        probs = predict_proba(self.model, self._data.val_x[self._digits])
        pictures = {"tiles": tiles_b64(self._tiles()), "predictions": probs.argmax(1).tolist(),
                    "confidence": np.round(probs.max(1), 3).tolist()}
        with self._cond:
            self.pictures, self.drawn = pictures, self.drawn + 1

    def _capture(self, before: np.ndarray, batch: np.ndarray, labels: np.ndarray,
                 logits: np.ndarray, loss: float) -> None:
        """What one asked-for step did: its batch (the first N_DIGITS shown), the loss on it
        before and after the update, and the tiles before, after, and their change."""
        after, shown = self._tiles(), slice(0, N_DIGITS)
        change = after - before
        result = {**self.status(), "loss": loss, "loss_after": evaluate(self.model, batch, labels)[0],
                  "batch_size": len(batch), "lr": self.optimizer.lr,
                  "images": _b64(np.rint(255 * batch[shown])), "labels": labels[shown].tolist(),
                  "before": logits[shown].argmax(1).tolist(),
                  "after": predict_proba(self.model, batch[shown]).argmax(1).tolist(),
                  "tiles_before": tiles_b64(before), "tiles_after": tiles_b64(after),
                  "tiles_change": tiles_b64(change, np.abs(change).max()),
                  "change_scale": float(np.abs(change).max()), "weight_scale": float(np.abs(after).max())}
        with self._cond:
            self.state = result["state"] = "paused"
            self._step_result = result

    def _publish(self) -> None:
        """Make the latest numbers what pages read (the caller holds `_cond`)."""
        self.points.extend(self._new_points)
        self._new_points.clear()
        if self._new_val is not None:
            self.val.append(self._new_val)
            self._new_val = None
        step, busy, _ = self._rate
        if self._busy > busy + 0.05:
            self._rate = (self.step, self._busy, (self.step - step) / (self._busy - busy))
        self.version += 1
        self._cond.notify_all()

    def snapshot(self, points: int = 0, val: int = 0, drawn: int = 0) -> dict[str, Any]:
        """An event: the numbers now, the points after the first `points` and `val`, the
        pictures if newer than the `drawn`-th (the caller holds `_cond`)."""
        last = self.points[-1] if self.points else [0, None, None, self.config.lr]
        event = {**self.status(), "loss": last[1], "accuracy": last[2], "lr": last[3],
                 "grad_norms": last[4:], "steps_per_second": round(self._rate[2], 1),
                 "seconds": round(self._clock() - self._started, 1), "warning": self.warning,
                 "points": self.points[points:], "val": self.val[val:]}
        if self.val:
            event["val_step"], event["val_accuracy"] = self.val[-1]
        if self.drawn > drawn:
            event.update(self.pictures)
        return event

    def first_event(self) -> dict[str, Any]:
        """What a page needs once: the settings, the layers and the fixed digits."""
        sizes, c = [784, *self.config.hidden, 10], self.config
        return {"settings": {"hidden": list(c.hidden), "lr": c.lr, "optimizer": c.optimizer,
                             "batch_size": c.batch_size, "epochs": c.epochs},
                "layers": [f"{a}→{b}" for a, b in zip(sizes, sizes[1:])],
                "steps_per_epoch": self.steps_per_epoch, "tile_units": min(N_TILES, sizes[1]),
                "digit_images": _b64(np.rint(255 * self._data.val_x[self._digits])),
                "digit_labels": self._data.val_y[self._digits].tolist()}


class EventStream:
    """One page's Server-Sent Events: a `data:` line of JSON when the snapshot changes (at most
    about 5 a second), a comment after a second of quiet, the end after the run's last event.
    Each read counts as the page being there; `close` (the server's, once it goes) frees its place."""

    def __init__(self, run: LiveRun):
        with run._cond:
            if run.readers >= MAX_READERS:
                raise RunConflict(f"{MAX_READERS} pages are watching this run already; close one")
            run.readers += 1
            run._last_read = run._clock()
        self.run, self._first, self._done, self._closed = run, True, False, False
        self._version = self._points = self._val = self._drawn = 0  # what this page has

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        run = self.run
        if self._done or self._closed:
            raise StopIteration
        with run._cond:
            run._last_read = run._clock()
            run._cond.wait_for(lambda: run.version != self._version or not run.alive, HEARTBEAT)
            run._last_read = run._clock()
            if run.version == self._version and run.alive:
                return b": waiting\n\n"
            event = run.snapshot(self._points, self._val, self._drawn)
            self._version, self._points, self._val = run.version, len(run.points), len(run.val)
            self._drawn, self._done = run.drawn, not run.alive
        if self._first:
            event.update(run.first_event())
            self._first = False
        event["done"] = self._done
        return b"data: " + orjson.dumps(event) + b"\n\n"

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with self.run._cond:
                self.run.readers -= 1
