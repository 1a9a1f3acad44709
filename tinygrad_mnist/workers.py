"""Worker processes that serve whole requests beside the main server process, one per further core.

One Python process runs one thread at a time (the interpreter lock, GIL), and nearly all of a
prediction is Python and NumPy work: the HTTP, reading the drawing, running the network,
writing the reply. So `serve` runs a process per core, all accepting connections on the one
listening socket; whichever is free takes the next connection.

A worker answers what needs nothing but the served model: the pages' files and the drawing's
predictions for browsers that did not change their model. Everything that has a state lives
in the main process: each browser's own copy of the model, MNIST, the live training run. A
worker passes such a request on to it whole, over a private connection on 127.0.0.1, and
streams its answer back. Which browsers have their own copy the main process writes into
the session cookie (signed with a key all the processes share), so a worker knows without
asking.
"""
from __future__ import annotations

import http.client
import logging
import multiprocessing
import os
import socket
import threading
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any
from urllib.parse import quote

from flask import Response, jsonify, request, session

MAIN_TIMEOUT = 60.0  # seconds the main process may take to send the next bytes of an answer
# headers about one connection, not the request: each hop sets its own
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate"}
_log = logging.getLogger(__name__)


class WorkerFailed(RuntimeError):
    """A worker process could not start (the reason follows)."""


def answered_here() -> bool:
    """Whether a worker answers this request itself: the pages' files, and a prediction for
    a browser that uses the served model (every other request needs the main process)."""
    return request.path.startswith("/static/") or (
        request.method == "POST" and request.path == "/api/predict" and not session.get("own"))


def pass_on(main_port: int) -> Response | tuple[Response, int] | None:
    """In a worker, before a request is routed: None for one it answers itself, else the
    main process's answer to it, streamed (an event stream too) as it comes."""
    if answered_here():
        return None
    env = request.environ
    target = quote(env.get("PATH_INFO", "/").encode("latin-1")) + \
        (f"?{env['QUERY_STRING']}" if env.get("QUERY_STRING") else "")
    headers = {k: v for k, v in request.headers.items()
               if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"}
    main = http.client.HTTPConnection("127.0.0.1", main_port, timeout=MAIN_TIMEOUT)
    try:
        main.request(request.method, target, body=request.get_data(cache=False), headers=headers)
        reply = main.getresponse()
    except (OSError, http.client.HTTPException) as e:
        main.close()
        _log.error("the main server process did not answer %s %s: %s", request.method, target, e)
        return jsonify({"error": "the main server process is not answering; try again, or "
                                 "restart the server"}), 502

    def stream() -> Iterator[bytes]:
        try:
            while chunk := reply.read1(1 << 16):
                yield chunk
        finally:
            main.close()
    kept = [(k, v) for k, v in reply.getheaders() if k.lower() not in HOP_BY_HOP | {"server", "date"}]
    return Response(stream(), status=reply.status, headers=kept)


class Workers:
    """`n` processes running `target(listener, main_port, settings, pipe)`: each serves the
    listening socket and passes on what it does not answer to the main process's private
    port. A worker that dies is logged, and the others (and the main process) serve on; each
    exits when the main process goes, since its end of the pipe then closes."""

    def __init__(self, target: Callable[..., None], n: int, listener: socket.socket, main_port: int,
                 settings: dict[str, Any]):
        context = multiprocessing.get_context("spawn")  # a clean process: no threads copied
        self._all: list[tuple[Any, Connection]] = []
        self._closing = False
        for _ in range(n):
            ours, theirs = context.Pipe()
            process = context.Process(target=target, args=(listener, main_port, settings, theirs),
                                      daemon=True)
            process.start()
            theirs.close()
            self._all.append((process, ours))
            try:
                ready = ours.recv()  # its server is set up: it takes connections from now on
            except (EOFError, OSError):
                process.join(5)
                ready = f"it exited with code {process.exitcode}"
            if ready != "ready":
                self.close()
                raise WorkerFailed(f"a worker process could not start: {ready}")
        threading.Thread(target=self._watch, daemon=True, name="workers-watch").start()

    def alive(self) -> int:
        """How many workers are still serving."""
        return sum(process.is_alive() for process, _ in self._all)

    def _watch(self) -> None:
        waiting = {process.sentinel: process for process, _ in self._all}
        while waiting:
            for sentinel in wait(list(waiting)):
                process = waiting.pop(sentinel)
                process.join(timeout=5)  # its pipe closes before the exit code can be read
                if not self._closing:
                    _log.error("worker process %s exited with code %s; %d left, the main process "
                               "serves on", process.pid, process.exitcode, self.alive())

    def close(self) -> None:
        self._closing = True
        for process, pipe in self._all:
            pipe.close()
            process.terminate()
            process.join(timeout=5)


def exit_with_main(pipe: Connection) -> None:
    """In a worker: end this process when the main one goes (its end of `pipe` closes)."""
    def watch() -> None:
        try:
            pipe.recv()
        except (EOFError, OSError):
            pass
        os._exit(0)
    threading.Thread(target=watch, daemon=True, name="main-watch").start()
