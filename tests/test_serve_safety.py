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
import signal
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

KEY = b"k" * 32  # the session cookie's key, which `serve` gives every process of one server


@pytest.fixture
def main_and_worker():
    """A main process's app on a real server (in a thread) and a worker's app passing on to it,
    as `serve` runs them in separate processes."""
    main = create_app(MLP([784, 16, 10], seed=0), secret_key=KEY)
    server = make_server(main, "127.0.0.1", 0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    worker = create_app(MLP([784, 16, 10], seed=0), secret_key=KEY, main_port=server.effective_port)
    yield main, worker, server
    server.close()
    thread.join(timeout=10)


def test_a_worker_answers_predictions_itself_and_passes_the_rest_to_the_main_process(main_and_worker):
    """What needs a state goes to the main process, whole, and its answer comes back (cookie
    included); a prediction from the served model is answered where it came in. The cookie
    says which browsers have their own copy, dropped copies included."""
    from tinygrad_mnist.explain import explain
    main, worker, server = main_and_worker
    sessions = main.extensions["tinygrad_mnist"].sessions
    browser = worker.test_client()
    digit = np.zeros((28, 28))
    digit[5:23, 13:16] = 1
    body = {"pixels": digit.tolist()}
    base = browser.post("/api/predict", json=body)
    assert base.status_code == 200 and len(sessions) == 0 and "Set-Cookie" not in base.headers

    taught = browser.post("/api/teach", json={**body, "label": 3})  # the main process's copy
    assert taught.status_code == 200 and len(sessions) == 1 and "Set-Cookie" in taught.headers
    own = next(iter(sessions._copies.values()))[0]
    mine = browser.post("/api/predict", json=body)  # the cookie sends it to that copy
    assert np.allclose(mine.json["probs"], explain(own, digit).probs, atol=1e-6)
    assert mine.json["probs"] != base.json["probs"]
    page = browser.get("/")
    assert page.status_code == 200 and b"<canvas" in page.data
    assert page.headers.getlist("X-Frame-Options") == ["DENY"] and "Server" not in page.headers

    sessions._copies.clear()  # dropped (least recently used): the next answer says so
    assert browser.post("/api/predict", json=body).json["probs"] == base.json["probs"]
    assert browser.post("/api/predict", json=body).json["probs"] == base.json["probs"]
    assert len(sessions) == 0

    assert browser.post("/api/teach", json=body, headers={"Origin": "http://evil.example"}
                        ).status_code == 403  # refused before it is passed on
    server.close()  # the main process is gone: predictions still come, the rest is a clear 502
    assert browser.post("/api/predict", json=body).json["probs"] == base.json["probs"]
    lost = browser.post("/api/teach", json={**body, "label": 3})
    assert lost.status_code == 502 and "main server process is not answering" in lost.json["error"]


def test_an_event_stream_through_a_worker_ends_when_its_page_goes(main_and_worker, mnist_dir):
    """The live run's events pass through a worker as they come; when the page's connection
    closes, the worker closes its own to the main process, which sees no reader and stops."""
    import http.client

    from tinygrad_mnist.train_page import READER_TIMEOUT_KEY, RUNS
    main, worker, _ = main_and_worker
    main.extensions["tinygrad_mnist"].data_dir = mnist_dir
    main.config[READER_TIMEOUT_KEY] = 1.0
    front = make_server(worker, "127.0.0.1", 0)
    thread = threading.Thread(target=front.run, daemon=True)
    thread.start()
    try:
        api = http.client.HTTPConnection("127.0.0.1", front.effective_port, timeout=30)
        api.request("POST", "/api/train/start", '{"preset": "default"}',
                    {"Content-Type": "application/json"})
        assert api.getresponse().status == 200
        api.close()
        page = socket.create_connection(("127.0.0.1", front.effective_port), timeout=30)
        page.sendall(b"GET /api/train/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        received = b""
        while received.count(b"data: ") < 2:
            received += page.recv(65536)
        assert received.startswith(b"HTTP/1.1 200") and b"text/event-stream" in received
        run = main.extensions[RUNS].current
        assert run.readers == 1
        page.close()
        assert run.join(20)["state"] == "stopped"
        assert run.reason == "stopped: no page watched it for 1 s" and run.readers == 0
    finally:
        front.close()
        thread.join(timeout=10)


def _children(pid: int) -> list[int]:
    """The worker processes of a `serve` (multiprocessing's resource tracker left out)."""
    found = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline", "rb") as f:
                spawned = b"spawn_main" in f.read()
        except OSError:
            continue
        if parent == pid and spawned:
            found.append(int(d))
    return found


def _serve(tmp_path):
    """`tinygrad-mnist serve` of a small model on a free port: (process, port)."""
    from tinygrad_mnist.checkpoint import save_checkpoint
    from tinygrad_mnist.config import TrainConfig, build_model, build_optimizer
    config = TrainConfig(hidden=(16,))
    model = build_model(config)
    save_checkpoint(tmp_path / "c.npz", model, build_optimizer(config, model), config, 0, [])
    proc = subprocess.Popen([sys.executable, "-m", "tinygrad_mnist.cli", "serve",
                             str(tmp_path / "c.npz"), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    return proc, int(proc.stdout.readline().split("127.0.0.1:")[1].split("/")[0])


def test_serve_runs_a_process_per_core_and_serves_on_without_a_lost_worker(tmp_path):
    """The real command: a worker per further core on one socket, browsers that taught keep
    their own model whichever process their connection reaches, and a worker killed leaves
    the others serving (and is logged)."""
    from concurrent.futures import ThreadPoolExecutor

    from tinygrad_mnist.sessions import cores
    proc, port = _serve(tmp_path)
    try:
        workers = _children(proc.pid)
        assert len(workers) == cores() - 1 >= 1  # CI has 2 cores

        def post(path, body, cookie=""):
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json", "Cookie": cookie})
            with urllib.request.urlopen(req, timeout=30) as reply:
                return json.load(reply), reply.headers.get("Set-Cookie", "").split(";")[0]

        body = {"pixels": np.eye(28).tolist()}
        with ThreadPoolExecutor(8) as pool:  # a fresh connection each: every process answers
            base = list(pool.map(lambda _: post("/api/predict", body)[0]["probs"], range(16)))
            assert base == [base[0]] * 16
            taught, cookie = post("/api/teach", {**body, "label": 3})
            after = taught["explanation"]["probs"]
            assert after != base[0]
            mine = list(pool.map(lambda _: post("/api/predict", body, cookie)[0]["probs"], range(16)))
            assert mine == [after] * 16
            os.kill(workers[0], signal.SIGKILL)
            time.sleep(0.5)
            again = list(pool.map(lambda _: post("/api/predict", body)[0]["probs"], range(16)))
            assert again == [base[0]] * 16
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=10)
    assert f"worker process {workers[0]} exited with code -9" in err


def test_workers_go_when_the_main_process_does(tmp_path):
    proc, _ = _serve(tmp_path)
    workers = _children(proc.pid)
    assert workers
    proc.kill()  # not even a chance to stop them
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{w}") for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(os.path.exists(f"/proc/{w}") for w in workers)


def test_a_worker_that_cannot_start_is_a_clear_error():
    from tinygrad_mnist.server import _worker
    from tinygrad_mnist.workers import WorkerFailed, Workers
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            pytest.raises(WorkerFailed, match="a worker process could not start: ValueError: need "
                                              "lr > 0 and max_sessions >= 1"):
        Workers(_worker, 1, listener, 1, {"model": MLP([784, 16, 10], seed=0), "max_sessions": 0})


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
