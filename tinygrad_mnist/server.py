"""The local pages and their JSON API, for one person or a whole class at once.

Flask routes the requests (one Blueprint per page: draw_page.py, and the pages built on it);
waitress serves them: a production WSGI server in pure Python that reads each request whole
before a worker thread sees it, so a slow or stalled client holds no thread, and its
connection is closed after `IDLE_TIMEOUT` seconds.

Safe on a network: only the Host names this server answers to are served (no DNS rebinding);
a request from a page of another origin is refused (403), and the API takes only
`application/json`, which a browser never sends cross-site without asking first; bodies and
headers are bounded; every answer carries security headers; every error, the server layer's
own included, is one line of JSON.

In parallel: the engine's grad mode is per thread, so requests run side by side, as many
computing at once as there are cores (sessions.py). The base model is only ever read; a
browser that changes its model (by teaching it) gets its own copy, with its own lock. `serve`
runs a process per core on one listening socket: the main one holds every state, and worker
processes answer the drawing's predictions from the served model and pass the rest on to it
(workers.py). What a request may hold is checked in api_input.py; every number comes from
the engine's own forward and backward.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import signal
import socket
import sys
import threading
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from flask import Flask, Response, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import ClientDisconnected, HTTPException, RequestEntityTooLarge, SecurityError

from .api_input import InputError
from .checkpoint import load_checkpoint
from .draw_page import draw_page
from .graph_page import graph_page
from .nn import MLP
from .sessions import TEACH_LR, Pages, Sessions, cores, note_own_copy
from .train_page import train_page
from .workers import Workers, exit_with_main, pass_on

MAX_BODY = 1 << 20  # bytes of one request
MAX_HEADER = 16 << 10  # bytes of one request's line and headers (a URL too long is refused)
IDLE_TIMEOUT = 10  # seconds a connection may send nothing (waitress checks every 2 s)
THREADS = 8  # waitress's worker threads: each runs one request at a time
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
_log = logging.getLogger(__name__)


class FastJSON(DefaultJSONProvider):
    """Replies in JSON written by orjson: they are mostly long lists of floats, which it writes
    several times faster than the standard library, and NumPy arrays as they are."""

    options = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj, option=self.options).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        body = orjson.dumps(self._prepare_response_obj(args, kwargs), option=self.options)
        return Response(body, mimetype="application/json")


def create_app(model: MLP, lr: float = TEACH_LR, max_sessions: int = 32,
               allowed_hosts: tuple[str, ...] = (), data_dir: str | Path | None = None,
               secret_key: bytes | None = None, main_port: int | None = None) -> Flask:
    """The app serving the pages for `model` (put in eval mode; its weights are never
    changed); `lr` is the step size of one teach. It answers to localhost, 127.0.0.1 and
    [::1] and to the `allowed_hosts` names (`serve --host` and `--allow-host`).
    `secret_key` signs the session cookie (random unless given: every process of one server
    shares it). With `main_port` the app is a worker process's: it passes every request it
    does not answer from the served model on to the main process listening there."""
    if not (isinstance(lr, (int, float)) and lr > 0) or max_sessions < 1:
        raise ValueError(f"need lr > 0 and max_sessions >= 1, got lr={lr}, max_sessions={max_sessions}")
    app = Flask(__name__)
    app.json = FastJSON(app)
    hosts = [*LOCAL_HOSTS, *(f"[{h}]" if ":" in h else h for h in allowed_hosts)]
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY, SECRET_KEY=secret_key or secrets.token_bytes(32),
                      SESSION_COOKIE_SAMESITE="Strict", TRUSTED_HOSTS=hosts)
    model.eval()
    app.extensions["tinygrad_mnist"] = Pages(Sessions(model, max_sessions), lr, data_dir)
    for page in (draw_page, graph_page, train_page):
        app.register_blueprint(page)
    app.wsgi_app = _one_per_core(app.wsgi_app, app.extensions["tinygrad_mnist"].computing,  # type: ignore[method-assign]
                                 worker=main_port is not None)
    app.before_request(_refuse_cross_site)
    if main_port is None:
        app.after_request(note_own_copy)
    else:
        app.before_request(partial(pass_on, main_port))
    app.after_request(_security_headers)

    @app.errorhandler(InputError)
    def bad_input(e: InputError) -> tuple[Response, int]:
        return jsonify({"error": str(e)}), 400

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> tuple[Response, int]:
        return jsonify({"error": _http_message(e, hosts)}), e.code or 500

    @app.errorhandler(Exception)
    def server_error(e: Exception) -> tuple[Response, int]:
        _log.exception("unexpected error while serving %s", request.path)
        return jsonify({"error": "internal error; the server log has the details"}), 500

    return app


def _one_per_core(wsgi_app: Any, computing: threading.BoundedSemaphore, worker: bool) -> Any:
    """The app, handling at most one computing POST per core at a time (see Pages.computing).
    The live run's controls only wait for its trainer thread, so they take no lane; nor does
    what a worker process passes on to the main one (all but predictions)."""
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "POST" or path.startswith("/api/train/") or \
                (worker and path != "/api/predict"):
            return wsgi_app(environ, start_response)
        with computing:
            return wsgi_app(environ, start_response)
    return app


def _http_message(e: HTTPException, hosts: list[str]) -> str:
    if isinstance(e, SecurityError):  # Flask's TRUSTED_HOSTS check
        host = request.environ.get("HTTP_HOST", "")
        return (f"this server does not answer to the Host {host!r}; it answers to "
                f"{', '.join(hosts)} (add a name with `serve --allow-host NAME`)")
    if isinstance(e, RequestEntityTooLarge):
        return f"the request body is over the {MAX_BODY // 1024} KB limit"
    if isinstance(e, ClientDisconnected):
        return (f"the request body ended before its Content-Length of "
                f"{request.content_length} bytes")
    return f"{e.code} {e.name}" + (f": {e.description}" if e.code in (403, 415) else "")


def _refuse_cross_site() -> None:
    """A page of another origin may not use the API: its requests carry a foreign Origin
    (403), and a POST must be application/json (415), which browsers never send cross-site
    without a preflight this server does not grant."""
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        from werkzeug.exceptions import Forbidden
        raise Forbidden(f"requests from the origin {origin!r} are refused; this server serves "
                        f"only its own pages")
    if request.method == "POST" and request.mimetype != "application/json":
        from werkzeug.exceptions import UnsupportedMediaType
        raise UnsupportedMediaType(f"the API takes Content-Type: application/json, got "
                                   f"{request.content_type or 'none'!r}")


def _security_headers(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


# --------------------------------------------------------------------------- serving

def answered_hosts(host: str, allow_host: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The names a server bound to `host` answers to, besides localhost: the bound address,
    and for all interfaces (0.0.0.0, ::) this machine's own name and addresses, so that the
    URL it prints works from other machines; plus `allow_host`."""
    names = [host, *allow_host]
    if host in ("0.0.0.0", "::", ""):
        name = socket.gethostname()
        names = [*allow_host, name, socket.getfqdn()]
        try:
            names += socket.gethostbyname_ex(name)[2]
        except OSError:
            pass
        try:  # the address other machines reach (the name may map to 127.0.1.1 only);
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # nothing is sent
                probe.connect(("192.0.2.1", 9))
                names.append(probe.getsockname()[0])
        except OSError:  # no network
            pass
    return tuple(dict.fromkeys(n for n in names if n and n not in ("0.0.0.0", "::")))


def one_address(host: str) -> str:
    """The one address to bind for `host`: a name such as localhost may resolve to several
    (127.0.0.1 and ::1), and waitress would then bind each with a server of another kind."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise OSError(f"cannot serve on {host!r}: no such host name ({e.strerror})") from None
    found.sort(key=lambda info: info[0] != socket.AF_INET)  # IPv4 first, as browsers try it
    return str(found[0][4][0])


def make_server(app: Flask, host: str = "127.0.0.1", port: int = 8000,
                sockets: list[socket.socket] | None = None) -> Any:
    """A waitress server for `app`, bound (to `host` and `port`, or serving the listening
    `sockets` given) and not yet running (`.run()`; `.close()` stops it): bounded request
    sizes, idle connections closed, the server's own errors in JSON."""
    from waitress.channel import HTTPChannel
    from waitress.server import create_server
    from waitress.task import ErrorTask

    class JSONErrorTask(ErrorTask):
        """waitress's own refusals (headers too large, a body over the limit, a malformed
        request) as one line of JSON, like every error of the app."""

        def execute(self) -> None:
            e = self.request.error
            body = json.dumps({"error": f"{e.reason}: {e.body}"}).encode()
            self.status = f"{e.code} {e.reason}"
            self.response_headers.extend([("Content-Type", "application/json"),
                                          *SECURITY_HEADERS.items()])
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class Channel(HTTPChannel):
        error_task_class = JSONErrorTask

    where: dict[str, Any] = {"sockets": sockets} if sockets else {"host": one_address(host), "port": port}
    server = create_server(app, **where, threads=THREADS, ident="tinygrad-mnist",
                           channel_timeout=IDLE_TIMEOUT, cleanup_interval=2,
                           max_request_body_size=MAX_BODY,
                           max_request_header_size=MAX_HEADER, asyncore_use_poll=True,
                           clear_untrusted_proxy_headers=True)
    server.channel_class = Channel
    return server


def serve(checkpoint: str | Path, host: str = "127.0.0.1", port: int = 8000,
          max_sessions: int = 32, allow_host: tuple[str, ...] = (),
          data_dir: str | Path | None = None) -> None:
    """Load the checkpoint and serve the pages with waitress until Ctrl+C: this process and a
    worker process per further core, all on one listening socket (workers.py)."""
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535 (0 = any free port), got {port}")
    hosts = answered_hosts(host, allow_host)
    model = load_checkpoint(checkpoint).model  # create_app puts it in eval mode
    settings: dict[str, Any] = {"model": model, "max_sessions": max_sessions, "allowed_hosts": hosts,
                                "data_dir": data_dir, "secret_key": secrets.token_bytes(32)}
    address = one_address(host)
    listener = socket.create_server((address, port), backlog=1024,
                                    family=socket.AF_INET6 if ":" in address else socket.AF_INET)
    private = socket.create_server(("127.0.0.1", 0))  # the workers pass requests on here
    # Request threads mostly wait (for a socket, the main process): a shorter switch interval
    # than Python's default lets a woken one take the interpreter lock back sooner.
    sys.setswitchinterval(0.0005)
    try:
        server = make_server(create_app(**settings), sockets=[listener, private])
    except BaseException:
        listener.close()
        private.close()
        raise
    try:
        workers = Workers(_worker, cores() - 1, listener, private.getsockname()[1], settings)
    except BaseException:
        server.close()
        raise
    logging.getLogger("waitress").setLevel(logging.ERROR)  # not a line per queued request
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    url = f"http://{f'[{shown}]' if ':' in shown else shown}:{listener.getsockname()[1]}/"
    print(f"serving {checkpoint}: open {url} in a browser (Ctrl+C stops)", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        others = [h for h in hosts if h != host]
        print(f"warning: serving on {host}: other machines on the network can open this page "
              f"and use this server (there is no login). It answers to "
              f"{', '.join(['localhost', *others])}, port {listener.getsockname()[1]}; name "
              f"others with --allow-host", file=sys.stderr, flush=True)
    try:
        server.run()
    finally:
        server.close()
        workers.close()


def _worker(listener: socket.socket, main_port: int, settings: dict[str, Any],
            pipe: Connection) -> None:
    """A worker process's life (workers.py): serve `listener` until the main process goes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the main process's: it stops us
    try:
        server = make_server(create_app(**settings, main_port=main_port), sockets=[listener])
    except Exception as e:  # reported to the main process, which refuses to start
        pipe.send(f"{type(e).__name__}: {e}")
        return
    logging.getLogger("waitress").setLevel(logging.ERROR)
    sys.setswitchinterval(0.0005)
    pipe.send("ready")
    exit_with_main(pipe)
    server.run()
