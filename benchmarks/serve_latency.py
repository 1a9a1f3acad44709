"""Latency of the draw-a-digit server: /api/predict against a running `tinygrad-mnist serve`.

    python -m benchmarks.serve_latency [--checkpoint FILE] [--requests 200] [--concurrency 1,8]
                                       [--threads 1] [--payload image|pixels] [--out DIR]

Starts the server in a subprocess on 127.0.0.1 (a free port), sends --requests requests at
each concurrency level from that many client threads, and reports p50/p99 latency, requests
per second and the error count. Without --checkpoint it serves an untrained model of the
default size (784-512-256-10): the time per request does not depend on the weights. The
payload is what the page sends (a 280x280 PNG of a drawn digit), or 28x28 "pixels".
Writes serve_latency.json and serve_latency.md into --out.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .train_speed import ROOT, THREAD_VARS, add_io_flags

P50_TARGET_MS = 20.0  # the target for the default model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="checkpoint to serve (default: an untrained 784-512-256-10 model)")
    p.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    p.add_argument("--concurrency", default="1,8", help="comma-separated client thread counts")
    p.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads of the server")
    p.add_argument("--payload", choices=["image", "pixels"], default="image")
    p.add_argument("--warmup", type=int, default=10, help="untimed requests first")
    add_io_flags(p, data=False)
    args = p.parse_args(argv)
    try:
        args.levels = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        p.error(f"--concurrency must be comma-separated integers, got {args.concurrency!r}")
    if args.requests < 1 or args.threads < 1 or min(args.levels) < 1:
        p.error("--requests, --threads and every --concurrency level must be >= 1")
    return args


def default_checkpoint(folder: Path) -> Path:
    from tinygrad_mnist.checkpoint import save_checkpoint
    from tinygrad_mnist.config import TrainConfig, build_model, build_optimizer
    config = TrainConfig()
    model = build_model(config)
    path = folder / "checkpoint.npz"
    save_checkpoint(path, model, build_optimizer(config, model), config, 0, [])
    return path


def payload(kind: str) -> bytes:
    """A vertical stroke as the page draws it: black ink on white, 280x280."""
    if kind == "pixels":
        pixels = [[1.0 if 5 <= r < 23 and 13 <= c < 16 else 0.0 for c in range(28)]
                  for r in range(28)]
        return json.dumps({"pixels": pixels}).encode()
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (280, 280), "white")
    ImageDraw.Draw(img).line([(140, 40), (135, 240)], fill="black", width=22)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return json.dumps({"image": "data:image/png;base64," +
                       base64.b64encode(buf.getvalue()).decode()}).encode()


def start_server(checkpoint: Path, threads: int) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, **{v: str(threads) for v in THREAD_VARS},
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "tinygrad_mnist.cli", "serve", str(checkpoint),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env)
    line = proc.stdout.readline() if proc.stdout else ""
    if "http://" not in line:
        proc.kill()
        raise SystemExit(f"serve_latency: the server did not start (it said {line!r})")
    return proc, line[line.index("http://"):].split()[0]


def one_request(url: str, body: bytes) -> tuple[float, bool]:
    """(seconds, ok) of one POST /api/predict."""
    request = urllib.request.Request(url + "api/predict", data=body,
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            ok = reply.status == 200 and "prediction" in json.load(reply)
    except (urllib.error.URLError, OSError, ValueError):
        ok = False
    return time.perf_counter() - start, ok


def measure(url: str, body: bytes, requests: int, concurrency: int) -> dict[str, Any]:
    with ThreadPoolExecutor(concurrency) as pool:
        start = time.perf_counter()
        results = list(pool.map(lambda _: one_request(url, body), range(requests)))
        wall = time.perf_counter() - start
    ms = sorted(1000 * s for s, _ in results)
    return {"concurrency": concurrency, "requests": requests,
            "errors": sum(not ok for _, ok in results),
            "p50_ms": statistics.median(ms), "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
            "mean_ms": statistics.fmean(ms), "requests_per_s": requests / wall}


def report(result: dict[str, Any]) -> str:
    lines = [f"# /api/predict latency ({result['payload']} payload)", "",
             (f"{result['model']} served by `tinygrad-mnist serve` (Werkzeug threaded server) on "
              f"{result['machine']}, {result['threads']} BLAS thread(s) in the server; clients on "
              f"the same machine. Target: p50 ≤ {P50_TARGET_MS:g} ms; no errors."), "",
             "| concurrency | requests | errors | p50 ms | p99 ms | mean ms | req/s |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["levels"]:
        lines.append(f"| {r['concurrency']} | {r['requests']} | {r['errors']} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['mean_ms']:.1f} | {r['requests_per_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    body = payload(args.payload)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or default_checkpoint(Path(tmp))
        from tinygrad_mnist.train import load_checkpoint
        model = "MLP " + "-".join(map(str, load_checkpoint(checkpoint).model.sizes))
        proc, url = start_server(checkpoint, args.threads)
        try:
            for _ in range(args.warmup):
                one_request(url, body)
            levels = [measure(url, body, args.requests, c) for c in args.levels]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    result = {"model": model, "payload": args.payload, "threads": args.threads,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                         f"{platform.python_version()}", "levels": levels}
    text = report(result)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "serve_latency.md").write_text(text)
    met = all(r["errors"] == 0 for r in levels) and levels[0]["p50_ms"] <= P50_TARGET_MS
    print(f"target (p50 ≤ {P50_TARGET_MS:g} ms at concurrency {levels[0]['concurrency']}, no "
          f"errors): {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
