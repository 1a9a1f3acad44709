"""Latency, throughput and a soak of the pages' server: a running `tinygrad-mnist serve`.

    python -m benchmarks.serve_latency [--checkpoint FILE] [--requests 300] [--concurrency 1,8,32]
                                       [--threads 1] [--payload image|pixels] [--rounds 5]
                                       [--soak 120] [--sessions 32] [--out DIR]

Starts the server in a subprocess on 127.0.0.1 (a free port), sends --requests POST
/api/predict at each concurrency level from that many client threads (each on its own
keep-alive connection, as a browser keeps one), in --rounds parts with the levels taking
turns, and reports p50/p99 latency, requests per second and the error count. Then the soak:
--sessions browsers (each with its own session cookie) draw and teach for --soak seconds, one
request after another, a teach every fourth; the server's resident memory is read at the
start, middle and end.

Without --checkpoint it serves an untrained model of the default size (784-512-256-10): the
time per request does not depend on the weights. The payload is what the page sends (a
280x280 PNG of a drawn digit), or 28x28 "pixels". Clients run on the same machine (2 cores:
they take CPU from the server, alike at every level). Writes serve_latency.json and
serve_latency.md into --out.
"""
from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .train_speed import ROOT, THREAD_VARS, add_io_flags, write_results

# the targets for the default model
P50_TARGET_MS = 8.0  # at concurrency 1
SCALING_TARGET = 1.6  # requests/s at concurrency 8 over concurrency 1, on 2 cores


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="checkpoint to serve (default: an untrained 784-512-256-10 model)")
    p.add_argument("--requests", type=int, default=300, help="requests per concurrency level")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated client thread counts")
    p.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads of the server")
    p.add_argument("--payload", choices=["image", "pixels"], default="image")
    p.add_argument("--warmup", type=int, default=20, help="untimed requests first")
    p.add_argument("--rounds", type=int, default=5,
                   help="send each level's requests in this many parts, the levels taking turns")
    p.add_argument("--soak", type=float, default=120, help="seconds of the soak (0: none)")
    p.add_argument("--sessions", type=int, default=32, help="browsers drawing and teaching in the soak")
    add_io_flags(p, data=False)
    args = p.parse_args(argv)
    try:
        args.levels = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        p.error(f"--concurrency must be comma-separated integers, got {args.concurrency!r}")
    if min(args.requests, args.threads, args.sessions, args.rounds, *args.levels) < 1 \
            or args.rounds > args.requests:
        p.error("--requests, --threads, --sessions, --rounds and every --concurrency level must be "
                ">= 1, and --rounds at most --requests")
    return args


def default_checkpoint(folder: Path) -> Path:
    from tinygrad_mnist.checkpoint import save_checkpoint
    from tinygrad_mnist.config import TrainConfig, build_model, build_optimizer
    config = TrainConfig()
    model = build_model(config)
    path = folder / "checkpoint.npz"
    save_checkpoint(path, model, build_optimizer(config, model), config, 0, [])
    return path


def payload(kind: str, label: int | None = None) -> bytes:
    """A vertical stroke as the page draws it: black ink on white, 280x280."""
    extra = {} if label is None else {"label": label}
    if kind == "pixels":
        pixels = [[1.0 if 5 <= r < 23 and 13 <= c < 16 else 0.0 for c in range(28)]
                  for r in range(28)]
        return json.dumps({"pixels": pixels, **extra}).encode()
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (280, 280), "white")
    ImageDraw.Draw(img).line([(140, 40), (135, 240)], fill="black", width=22)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return json.dumps({"image": "data:image/png;base64," +
                       base64.b64encode(buf.getvalue()).decode(), **extra}).encode()


def start_server(checkpoint: Path, threads: int) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, **{v: str(threads) for v in THREAD_VARS},
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "tinygrad_mnist.cli", "serve", str(checkpoint),
                             "--port", "0", "--max-sessions", "64"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    line = proc.stdout.readline() if proc.stdout else ""
    if "http://" not in line:
        proc.kill()
        raise SystemExit(f"serve_latency: the server did not start (it said {line!r})")
    return proc, int(line.split("http://")[1].split("/")[0].rsplit(":", 1)[1])


class Browser:
    """One client: a keep-alive connection and, once the server sets it, a session cookie."""

    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.cookie = ""

    def post(self, path: str, body: bytes) -> tuple[float, bool]:
        """(seconds, ok) of one POST."""
        headers = {"Content-Type": "application/json", "Host": "127.0.0.1"}
        if self.cookie:
            headers["Cookie"] = self.cookie
        start = time.perf_counter()
        try:
            self.connection.request("POST", path, body=body, headers=headers)
            reply = self.connection.getresponse()
            data = reply.read()
            ok = reply.status == 200 and b'"prediction"' in data
            if cookie := reply.getheader("Set-Cookie"):
                self.cookie = cookie.split(";", 1)[0]
        except (OSError, http.client.HTTPException):
            self.connection.close()
            ok = False
        return time.perf_counter() - start, ok


def timed(port: int, body: bytes, requests: int, concurrency: int) -> tuple[list[float], int, float]:
    """(latencies in ms, errors, wall seconds) of `requests` POST /api/predict sent by
    `concurrency` clients, each connected before the clock starts."""
    local = threading.local()

    def one(_: int) -> tuple[float, bool]:
        if not hasattr(local, "browser"):
            local.browser = Browser(port)
        return local.browser.post("/api/predict", body)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency)))  # every client connected before the clock
        start = time.perf_counter()
        results = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - start
    return [1000 * s for s, _ in results], sum(not ok for _, ok in results), wall


def measure(port: int, body: bytes, requests: int, levels: list[int],
            rounds: int) -> list[dict[str, Any]]:
    """Each concurrency level's `requests`, sent in `rounds` parts with the levels taking
    turns (their order turned each round): the machine's speed drifts over a run, and this
    way a drift falls on every level alike instead of on whichever came first."""
    got: dict[int, tuple[list[float], int, float]] = {c: ([], 0, 0.0) for c in levels}
    for r in range(rounds):
        share = requests // rounds + (r < requests % rounds)
        for c in levels[r % len(levels):] + levels[:r % len(levels)]:
            ms, errors, wall = timed(port, body, share, c) if share else ([], 0, 0.0)
            before = got[c]
            got[c] = (before[0] + ms, before[1] + errors, before[2] + wall)
    out = []
    for c in levels:
        ms, errors, wall = got[c]
        ms.sort()
        out.append({"concurrency": c, "requests": len(ms), "errors": errors,
                    "p50_ms": statistics.median(ms), "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
                    "mean_ms": statistics.fmean(ms), "requests_per_s": len(ms) / wall})
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of the server's main and worker processes, MB."""
    pids = [pid] + [int(d) for d in os.listdir("/proc") if d.isdigit() and _parent(int(d)) == pid]
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):  # gone meanwhile
            pass
    return total / 1024


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def soak(port: int, pid: int, kind: str, seconds: float, sessions: int) -> dict[str, Any]:
    """Browsers drawing and teaching at once; memory read at start, middle and end."""
    predict, teach = payload(kind), payload(kind, label=3)
    stop = threading.Event()
    counts = {"predict": 0, "teach": 0, "errors": 0}
    lock = threading.Lock()

    def browser(i: int) -> None:
        b, n = Browser(port), 0
        while not stop.is_set():
            path, body = ("/api/teach", teach) if n % 4 == i % 4 else ("/api/predict", predict)
            _, ok = b.post(path, body)
            with lock:
                counts["teach" if path == "/api/teach" else "predict"] += 1
                counts["errors"] += not ok
            n += 1

    threads = [threading.Thread(target=browser, args=(i,)) for i in range(sessions)]
    for t in threads:
        t.start()
    time.sleep(min(10.0, seconds / 4))  # warm-up: every browser has made its own copy
    with lock:  # requests are counted from here, over `seconds`; errors over the whole soak
        counts["predict"] = counts["teach"] = 0
    memory = [rss_mb(pid)]
    time.sleep(seconds / 2)
    memory.append(rss_mb(pid))
    time.sleep(seconds / 2)
    memory.append(rss_mb(pid))
    stop.set()
    for t in threads:
        t.join()
    return {"seconds": seconds, "sessions": sessions, **counts, "rss_mb": memory}


def report(result: dict[str, Any]) -> str:
    lines = [f"# The pages' server under load ({result['payload']} payload)", "",
             f"Measured {result['date']} with `{result['command']}`.", "",
             (f"{result['model']} served by `tinygrad-mnist serve` (waitress, "
              f"{result['server_threads']} threads, in a process per core) on "
              f"{result['machine']}, "
              f"{result['threads']} BLAS thread(s) in the server; clients on the same machine, "
              f"each on its own keep-alive connection. POST /api/predict, each level's requests "
              f"in {result.get('rounds', 1)} rounds, the levels taking turns:"), "",
             "| concurrency | requests | errors | p50 ms | p99 ms | mean ms | req/s |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["levels"]:
        lines.append(f"| {r['concurrency']} | {r['requests']} | {r['errors']} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['mean_ms']:.1f} | {r['requests_per_s']:.1f} |")
    lines += ["", "Targets:", ""] + [f"- {t}" for t in result["targets"]]
    s = result.get("soak")
    if s:
        lines += ["", (f"Soak: {s['sessions']} browsers drawing and teaching at once for "
                       f"{s['seconds']:g} s after a warm-up: {s['predict']:,} predictions and "
                       f"{s['teach']:,} teaches, {s['errors']} errors (warm-up included); RSS of "
                       f"the server and its workers "
                       f"{' / '.join(f'{m:.0f}' for m in s['rss_mb'])} MB after the warm-up, "
                       f"in the middle and at the end.")]
    return "\n".join(lines) + "\n"


def targets(levels: list[dict[str, Any]], soaked: dict[str, Any] | None) -> list[str]:
    by = {r["concurrency"]: r for r in levels}
    out = []
    if 1 in by:
        p50 = by[1]["p50_ms"]
        out.append(f"p50 at concurrency 1: {p50:.1f} ms (≤ {P50_TARGET_MS:g}) "
                   f"{'met' if p50 <= P50_TARGET_MS else 'missed'}")
    if 1 in by and 8 in by:
        ratio = by[8]["requests_per_s"] / by[1]["requests_per_s"]
        out.append(f"throughput at concurrency 8 ÷ concurrency 1: {ratio:.2f} (≥ {SCALING_TARGET:g}) "
                   f"{'met' if ratio >= SCALING_TARGET else 'missed'}")
    errors = sum(r["errors"] for r in levels) + (soaked["errors"] if soaked else 0)
    out.append(f"errors: {errors} {'met' if errors == 0 else 'missed'}")
    if soaked:
        start, _, end = soaked["rss_mb"]
        out.append(f"memory flat after warm-up: {start:.0f} → {end:.0f} MB "
                   f"({'met' if end <= 1.05 * start else 'missed'}, at most +5 %)")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    body = payload(args.payload)
    from tinygrad_mnist.server import THREADS
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or default_checkpoint(Path(tmp))
        from tinygrad_mnist.checkpoint import load_checkpoint
        model = "MLP " + "-".join(map(str, load_checkpoint(checkpoint).model.sizes))
        proc, port = start_server(checkpoint, args.threads)
        try:
            warm = Browser(port)
            for _ in range(args.warmup):
                warm.post("/api/predict", body)
            levels = measure(port, body, args.requests, args.levels, args.rounds)
            soaked = soak(port, proc.pid, args.payload, args.soak, args.sessions) \
                if args.soak > 0 else None
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    result = {"model": model, "payload": args.payload, "threads": args.threads, "rounds": args.rounds,
              "server_threads": THREADS, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": "python -m benchmarks.serve_latency " + " ".join(argv or sys.argv[1:]),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                         f"{platform.python_version()}", "levels": levels, "soak": soaked,
              "targets": targets(levels, soaked)}
    args.out.mkdir(parents=True, exist_ok=True)
    write_results(args.out, "serve_latency", result, report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
