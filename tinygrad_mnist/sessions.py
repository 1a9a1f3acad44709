"""What every page's routes share: each browser's own copy of the model, MNIST (loaded once,
when first needed), and how many requests may run the engine at once.
"""
from __future__ import annotations

import copy
import math
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from flask import Response, current_app, session

from .api_input import InputError
from .data import MNIST, load_mnist
from .nn import MLP

MNIST_RETRY = 5.0  # seconds between two tries to load MNIST while it is missing
TEACH_LR = 0.01  # one step of 0.1 on a single digit overshoots: most digits then get its label


class Sessions:
    """Each browser's own copy of the model, made when it first changes it (at most `limit`,
    the least recently used dropped). Browsers that never changed theirs share the base
    model, which is only ever read, so they need no lock; a copy has its own lock, which a
    reader and a writer of that one copy take in turn."""

    def __init__(self, base: MLP, limit: int) -> None:
        self.base, self.limit = base, limit
        self._copies: OrderedDict[str, tuple[MLP, threading.Lock]] = OrderedDict()
        self._lock = threading.Lock()  # guards the dictionary, never held while computing

    @contextmanager
    def reading(self, sid: str | None) -> Iterator[MLP]:
        """The browser's model, for as long as the block runs."""
        with self._lock:
            own = self._copies.get(sid or "")
            if own is not None:
                self._copies.move_to_end(sid or "")
        if own is None:
            yield self.base
        else:
            with own[1]:
                yield own[0]

    @contextmanager
    def writing(self, sid: str) -> Iterator[MLP]:
        """The browser's own copy (made now if it has none), locked for the block."""
        with self._lock:
            own = self._copies.get(sid)
            if own is not None:
                self._copies.move_to_end(sid)
        if own is None:  # copied outside the lock, which other browsers' requests need
            fresh = (copy.deepcopy(self.base), threading.Lock())
            with self._lock:  # (unless this browser's other request made one meanwhile)
                own = self._copies.setdefault(sid, fresh)
                self._copies.move_to_end(sid)
                while len(self._copies) > self.limit:
                    self._copies.popitem(last=False)
        with own[1]:
            yield own[0]

    def replace(self, sid: str, model: MLP) -> None:
        """Make `model` (a copy no one else holds) this browser's model."""
        model.eval()
        with self._lock:
            self._copies[sid] = (model, threading.Lock())
            self._copies.move_to_end(sid)
            while len(self._copies) > self.limit:
                self._copies.popitem(last=False)

    def has_own(self, sid: str | None) -> bool:
        """Whether this browser has its own copy of the model (it taught, or used a trained one)."""
        with self._lock:
            return (sid or "") in self._copies

    def reset(self, sid: str | None) -> None:
        """Forget this browser's own copy: it uses the served model again."""
        with self._lock:
            self._copies.pop(sid or "", None)

    def __len__(self) -> int:
        return len(self._copies)


@dataclass
class Pages:
    """What every page's routes share, kept in `app.extensions["tinygrad_mnist"]`.

    `computing` lets as many POST requests (which run the engine) be handled at once as there
    are cores: more would only take turns for Python's interpreter lock (the GIL) and slow
    each other down. The other threads stay free for pages, files and event streams."""

    sessions: Sessions
    lr: float
    data_dir: str | Path | None = None
    computing: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(cores()))
    _mnist: MNIST | None = field(default=None, repr=False)
    _mnist_error: str = field(default="", repr=False)
    _mnist_tried: float = field(default=-math.inf, repr=False)
    _mnist_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def mnist(self) -> MNIST:
        """MNIST, loaded once, on first use, from `serve --data-dir` (else $TINYGRAD_MNIST_DATA,
        else the user cache; never downloaded by a request); an InputError saying how to get
        it when it is not there. Tried again every MNIST_RETRY seconds, so that data fetched
        while the server runs is found without a restart."""
        with self._mnist_lock:
            if self._mnist is None and time.monotonic() - self._mnist_tried >= MNIST_RETRY:
                self._mnist_tried = time.monotonic()
                try:
                    self._mnist = load_mnist(self.data_dir, download=False,
                                             data_dir_name="--data-dir")
                except (OSError, ValueError) as e:
                    self._mnist_error = (f"MNIST is not available to this server ({e}); run "
                                         f"`tinygrad-mnist train` once (it downloads it), or "
                                         f"start it with `serve --data-dir DIR`")
        if self._mnist is None:
            raise InputError(self._mnist_error)
        return self._mnist

    def has_mnist(self) -> bool:
        try:
            self.mnist()
        except InputError:
            return False
        return True


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2


def pages() -> Pages:
    """What the pages share, for the app handling this request."""
    return current_app.extensions["tinygrad_mnist"]


def session_id() -> str:
    """This browser's id, in Flask's signed session cookie (made on first need)."""
    if "id" not in session:
        session["id"] = secrets.token_hex(16)
    return session["id"]


def note_own_copy(response: Response) -> Response:
    """Keep the session cookie's "own" (this browser has its own copy of the model) true to
    the sessions, a dropped copy included: worker processes read it to know which requests
    they may answer from the served model (workers.py)."""
    sid = session.get("id")
    if sid is not None:
        own = pages().sessions.has_own(sid)
        if session.get("own", False) != own:
            session["own"] = own
    return response
