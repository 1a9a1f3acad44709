"""Worker processes, one per core, that answer the draw page's predictions from the served model.

Reading a drawing (decoding the PNG, cropping, scaling, centring it), running it through the
network and writing the reply are nearly all of a prediction's work. In the server's threads
that work would take turns for the one interpreter lock (the GIL) of the process; in worker
processes it runs on every core at once. Each worker gets a copy of the served model's
weights when it starts, and answers over its own pipe, one request at a time: the request's
thread sends the body and waits (its wait lets the GIL go), with no helper thread in between.
A request that comes alone, with no other in progress, is answered in the server process,
which saves the trip. A browser that taught its own copy of the model is answered by the
server process, where that copy lives.
"""
from __future__ import annotations

import logging
import multiprocessing
import queue
import threading
import traceback
from multiprocessing.connection import Connection
from typing import Any

import orjson

from .api_input import InputError, digit_from, floats, parse_json_object
from .explain import Explanation, explain
from .nn import Module

WORKER_TIMEOUT = 30.0  # seconds a worker may take to answer before it is taken as hung
_log = logging.getLogger(__name__)


class WorkerFailed(RuntimeError):
    """A worker process could not start, or failed while answering (its traceback follows)."""


class Workers:
    """`n` processes answering predictions for `model`, each over its own pipe (the server
    process itself answers a request that comes alone); `predict(body)` is the JSON reply, or
    raises InputError for a bad request. A worker that dies or hangs is stopped and not asked
    again; its request, and any after the last one is gone, are answered here."""

    def __init__(self, model: Module, n: int):
        self._model = model  # the served model itself: workers get a copy of these weights
        self._answering, self._lost, self._counting = 0, 0, threading.Lock()
        context = multiprocessing.get_context("spawn")  # a clean process: no threads copied
        self._idle: queue.Queue[tuple[Any, Connection]] = queue.Queue()
        self._all: list[tuple[Any, Connection]] = []
        for _ in range(n):
            ours, theirs = context.Pipe()
            process = context.Process(target=_answer, args=(model, theirs), daemon=True)
            process.start()
            theirs.close()
            self._all.append((process, ours))
            try:
                ready = ours.recv()  # set up: the first request does not wait for it
            except (EOFError, OSError):
                process.join(5)
                ready = f"it exited with code {process.exitcode}"
            if ready != "ready":
                self.close()
                raise WorkerFailed(f"a worker process could not start: {ready}")
            self._idle.put((process, ours))

    def alive(self) -> int:
        """How many workers are still answering."""
        return len(self._all) - self._lost

    def predict(self, body: bytes) -> bytes:
        with self._counting:
            alone = self._answering == 0 or self._lost == len(self._all)
            self._answering += 1
        try:
            if alone:  # the only request (or no worker left): answered here, without the trip
                return answer(self._model, body)
            return self.ask_a_worker(body)
        finally:
            with self._counting:
                self._answering -= 1

    def ask_a_worker(self, body: bytes) -> bytes:
        """The reply a worker process gives (waiting while every worker is busy); answered
        here if the worker is lost on the way, or none is left."""
        while True:
            try:
                process, pipe = self._idle.get(timeout=1.0)
                break
            except queue.Empty:
                if self._lost == len(self._all):
                    return answer(self._model, body)
        try:
            pipe.send_bytes(body)
            if not pipe.poll(WORKER_TIMEOUT):
                raise TimeoutError(f"no answer in {WORKER_TIMEOUT:g} s")
            reply = pipe.recv_bytes()
        except (EOFError, OSError) as e:  # it died or hangs: stopped, and not asked again
            process.terminate()
            with self._counting:
                self._lost += 1
            _log.error("worker process %s is lost (%s); %d left", process.pid, e, self.alive())
            return answer(self._model, body)
        self._idle.put((process, pipe))
        kind, reply = reply[:1], reply[1:]  # b"=" an answer, b"?" a bad request, b"!" a crash
        if kind == b"?":
            raise InputError(reply.decode())
        if kind != b"=":
            raise WorkerFailed(reply.decode())
        return reply

    def close(self) -> None:
        for process, pipe in self._all:
            pipe.close()
            process.terminate()
            process.join(timeout=5)


def _answer(model: Module, pipe: Connection) -> None:
    """A worker's life: answer each request body with `model` until the pipe closes."""
    try:
        model.eval()
        pipe.send("ready")
    except Exception as e:  # reported to the server, which refuses to start
        pipe.send(f"{type(e).__name__}: {e}")
        return
    while True:
        try:
            body = pipe.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            pipe.send_bytes(b"=" + answer(model, body))
        except InputError as e:
            pipe.send_bytes(b"?" + str(e).encode())
        except Exception:
            pipe.send_bytes(b"!" + traceback.format_exc().encode())


def answer(model: Module, body: bytes) -> bytes:
    """The JSON reply to a prediction request's body, or InputError."""
    reply = prediction_reply(explain(model, digit_from(parse_json_object(body))))
    return orjson.dumps(reply, option=orjson.OPT_SERIALIZE_NUMPY)


def prediction_reply(e: Explanation) -> dict[str, Any]:
    """The draw page's reply for a digit: what it draws, rounded."""
    return {"input": floats(e.input), "probs": floats(e.probs, 6), "prediction": int(e.prediction),
            "activations": [floats(layer.post) for layer in e.layers[:-1]],
            "saliency": floats(e.saliency, 6)}
