"""What keeps `tinygrad-mnist serve` safe on a network, tried as a new user and a hostile page
would: foreign Host and Origin headers, cross-site posts, bodies and headers over the limits,
stalled clients, broken requests, and messages that name what was wrong. Each check failed
on the server before this one (Werkzeug's development server, one engine lock).

Most run through Flask's test client; the ones about the connection itself run a real
waitress server on a free port, in a thread.
"""
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from tinygrad_mnist.nn import MLP
from tinygrad_mnist.server import IDLE_TIMEOUT, MAX_BODY, THREADS, create_app, make_server

PIXELS = np.zeros((28, 28)).tolist()


@pytest.fixture
def app():
    return create_app(MLP([784, 16, 10], seed=0), allowed_hosts=("class.example",))


@pytest.fixture
def client(app):
    return app.test_client()


# ----------------------------------------------------------------------------- cross-site

def test_a_post_from_another_origin_is_refused_and_changes_nothing(client, app):
    for origin in ("http://evil.example", "null", "http://localhost:9999"):
        r = client.post("/api/teach", json={"pixels": PIXELS, "label": 3},
                        headers={"Origin": origin})
        assert r.status_code == 403 and origin in r.json["error"], r.json
    assert len(app.extensions["tinygrad_mnist"].sessions) == 0  # no model copy was made
    same = client.post("/api/predict", json={"pixels": PIXELS},
                       headers={"Origin": "http://localhost"})
    assert same.status_code == 200  # the page's own origin


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
def test_the_api_takes_only_json(client, app, content_type):
    """A form or text/plain POST is what another site can send without asking (no preflight):
    it must not reach the engine, nor make a session's model copy."""
    headers = {} if content_type is None else {"Content-Type": content_type}
    r = client.post("/api/teach", data=json.dumps({"pixels": PIXELS, "label": 3}),
                    headers=headers)
    assert r.status_code == 415 and "application/json" in r.json["error"]
    assert len(app.extensions["tinygrad_mnist"].sessions) == 0


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.2"])
def test_a_foreign_host_header_is_refused(client, host):
    """DNS rebinding: a page on evil.example whose name now points at 127.0.0.1."""
    r = client.get("/", headers={"Host": host})
    assert r.status_code == 400 and host in r.json["error"] and "--allow-host" in r.json["error"]
    assert client.post("/api/predict", json={"pixels": PIXELS},
                       headers={"Host": host}).status_code == 400


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000",
                                  "class.example:8000"])
def test_local_names_and_allowed_hosts_are_served(client, host):
    assert client.get("/", headers={"Host": host}).status_code == 200


def test_every_answer_carries_the_security_headers(client):
    for r in (client.get("/"), client.get("/static/page.js"), client.get("/api/nothing"),
              client.post("/api/predict", json={"pixels": PIXELS}),
              client.post("/api/predict", data="x", content_type="text/plain")):
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp


# ----------------------------------------------------------------------------- broken requests

def test_a_body_shorter_than_its_content_length_is_named(client):
    r = client.post("/api/predict", content_type="application/json", environ_overrides={
        "CONTENT_LENGTH": "100", "wsgi.input": io.BytesIO(b'{"pixels": 1}')})
    assert r.status_code == 400
    assert r.json["error"] == "the request body ended before its Content-Length of 100 bytes"


def test_the_engine_runs_requests_in_parallel(app, monkeypatch):
    """No global engine lock: two requests are inside the engine at the same time (a barrier
    that needs both would time out behind a lock), and both answer right."""
    import tinygrad_mnist.draw_page as draw_page
    barrier, real = threading.Barrier(2, timeout=10), draw_page.explain

    def explain(*args, **kwargs):
        barrier.wait()
        return real(*args, **kwargs)

    monkeypatch.setattr(draw_page, "explain", explain)
    codes = []
    threads = [threading.Thread(target=lambda: codes.append(app.test_client().post(
        "/api/predict", json={"pixels": PIXELS}).status_code)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200, 200]


def test_teaching_never_writes_the_base_model_and_sessions_have_their_own_locks(app):
    base = app.extensions["tinygrad_mnist"].sessions.base
    before = {k: v.copy() for k, v in base.state_dict().items()}

    def teacher(i):
        c = app.test_client()
        for _ in range(3):
            assert c.post("/api/teach", json={"pixels": PIXELS, "label": i % 10}).status_code == 200
            assert c.post("/api/predict", json={"pixels": PIXELS}).status_code == 200

    threads = [threading.Thread(target=teacher, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(v, before[k]) for k, v in base.state_dict().items())
    assert len(app.extensions["tinygrad_mnist"].sessions) == 6


# ----------------------------------------------------------------------------- a real server

@pytest.fixture
def real_server(app):
    server = make_server(app, "localhost", 0)  # a name: bound once, on 127.0.0.1
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield server.effective_port
    server.close()
    thread.join(timeout=10)


def raw(port, data: bytes, timeout=5.0) -> bytes:
    """Send raw bytes and read the whole answer. The server closes after a refusal, which may
    reset the connection once the answer is out (it did not read the rest of what was sent)."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


def answer(reply: bytes) -> tuple[int, dict, dict]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


def test_stalled_clients_hold_no_thread_and_are_closed(real_server):
    """Clients that promise 1000 bytes, send 12 and wait: more of them than worker threads,
    and still a real request is answered at once; each is closed within 15 s."""
    stalled = []
    for _ in range(THREADS + 4):
        s = socket.create_connection(("127.0.0.1", real_server), timeout=30)
        s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                  b"application/json\r\nContent-Length: 1000\r\n\r\n" + b'{"pixels": [')
        stalled.append(s)
    start = time.monotonic()
    request = urllib.request.Request(f"http://127.0.0.1:{real_server}/api/predict",
                                     data=json.dumps({"pixels": PIXELS}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as reply:
        assert reply.status == 200
    for s in stalled:
        assert s.recv(1024) == b""  # closed by the server, without an answer
        s.close()
    assert time.monotonic() - start < 15 and IDLE_TIMEOUT < 15


def test_the_servers_own_refusals_are_json_and_name_no_framework(real_server):
    port = real_server
    status, headers, body = answer(raw(port, b"GET /" + b"a" * 17_000 + b" HTTP/1.1\r\n"
                                       b"Host: localhost\r\n\r\n"))  # a URL too long
    assert status == 431 and "Request Header Fields Too Large" in body["error"]
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(2000))
    status, _, body = answer(raw(port, b"GET / HTTP/1.1\r\nHost: localhost\r\n" + many + b"\r\n"))
    assert status == 431 and list(body) == ["error"]
    chunk = b"%x\r\n" % (64 << 10) + b" " * (64 << 10) + b"\r\n"
    chunked = (b"POST /api/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + chunk * (MAX_BODY // (64 << 10) + 2)
               + b"0\r\n\r\n")
    status, headers, body = answer(raw(port, chunked))
    assert status == 413 and "exceeds max_body" in body["error"]
    assert headers["Content-Type"] == "application/json" and headers["X-Content-Type-Options"] == "nosniff"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
        server = page.headers["Server"]
    assert server == "tinygrad-mnist"  # no framework or Python version to look up


def test_a_foreign_host_is_refused_by_the_real_server(real_server):
    status, _, body = answer(raw(real_server, b"GET / HTTP/1.1\r\nHost: evil.example\r\n"
                                              b"Connection: close\r\n\r\n"))
    assert status == 400 and "evil.example" in body["error"]


# ----------------------------------------------------------------------------- the command

def cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "tinygrad_mnist.cli", *map(str, args)],
                          check=False, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})


def test_serve_mistakes_name_what_was_wrong_in_one_line(tmp_path):
    folder = tmp_path / "some_dir.npz"
    folder.mkdir()
    result = cli("serve", folder)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "is a directory; expected a checkpoint file" in result.stderr


def test_a_port_in_use_is_one_line(tmp_path):
    from tinygrad_mnist.checkpoint import save_checkpoint
    from tinygrad_mnist.config import TrainConfig, build_model, build_optimizer
    config = TrainConfig(hidden=(8,))
    model = build_model(config)
    save_checkpoint(tmp_path / "c.npz", model, build_optimizer(config, model), config, 0, [])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = cli("serve", tmp_path / "c.npz", "--port", busy.getsockname()[1])
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("tinygrad-mnist serve: error:") and "in use" in result.stderr


def test_urls_the_server_prints_work_from_the_network(tmp_path):
    """With --host 0.0.0.0 the machine's own name and addresses are answered to, so the URL
    a student types works; other names only with --allow-host."""
    from tinygrad_mnist.server import answered_hosts
    hosts = answered_hosts("0.0.0.0", ("class.example",))
    assert "class.example" in hosts and socket.gethostname() in hosts
    assert "0.0.0.0" not in hosts
    assert answered_hosts("192.168.1.5") == ("192.168.1.5",)


def test_error_replies_from_urllib_are_json(real_server):
    try:
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{real_server}/api/predict", data=b"x",
            headers={"Content-Type": "text/plain"}), timeout=5)
    except urllib.error.HTTPError as e:
        assert e.code == 415 and "application/json" in json.load(e)["error"]
    else:
        pytest.fail("a text/plain POST was accepted")


# ----------------------------------------------------------------------------- worker processes

def test_worker_processes_answer_as_the_server_would_and_survive_a_lost_worker():
    """`serve` answers the served model's predictions in worker processes (one per core) when
    requests come together: the same bytes as the server's own answer, the same clear error
    for a bad request; a worker that dies is not asked again, and its request (and every one
    after the last worker is gone) is answered by the server process."""
    from tinygrad_mnist.api_input import InputError
    from tinygrad_mnist.workers import Workers, answer
    model = MLP([784, 16, 10], seed=0).eval()
    workers = Workers(model, 2)
    try:
        body = json.dumps({"pixels": PIXELS}).encode()
        assert workers.ask_a_worker(body) == workers.predict(body) == answer(model, body)
        with pytest.raises(InputError, match='"pixels" must be 28 rows'):
            workers.ask_a_worker(b'{"pixels": 3}')
        app = create_app(model, workers=workers)
        r = app.test_client().post("/api/predict", data=body, content_type="application/json")
        assert r.status_code == 200 and r.data == answer(model, body)
        for lost in (1, 2):
            process = next(p for p, _ in workers._all if p.is_alive())
            process.kill()
            process.join()
            answers = [workers.ask_a_worker(body) for _ in range(3 - lost)]  # one reaches the dead one
            assert answers == [answer(model, body)] * (3 - lost) and workers.alive() == 2 - lost
        assert workers.ask_a_worker(body) == answer(model, body)  # none left: answered here
    finally:
        workers.close()


def test_a_worker_that_cannot_start_is_a_clear_error(monkeypatch):
    from tinygrad_mnist import workers as workers_module
    model = MLP([784, 16, 10], seed=0)
    model.eval = None  # the worker's first call fails: it reports why and the server does not start
    with pytest.raises(workers_module.WorkerFailed,
                       match="a worker process could not start: TypeError: 'NoneType'"):
        workers_module.Workers(model, 1)


def test_a_host_name_with_several_addresses_is_bound_once(monkeypatch):
    """On many machines localhost is both 127.0.0.1 and ::1; waitress would bind each, with a
    server object that has no port to print and no JSON errors. One address is bound."""
    from tinygrad_mnist.server import one_address
    both = [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 0, 0, 0)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0))]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: list(both))
    assert one_address("localhost") == "127.0.0.1" and one_address("::") == "::"
    monkeypatch.undo()
    with pytest.raises(OSError, match="cannot serve on 'no-such-host.invalid': no such host name"):
        one_address("no-such-host.invalid")
