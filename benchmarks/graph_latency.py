"""Latency of the graph explorer: POST /api/graph on a running `tinygrad-mnist serve`, and how
soon /graph is interactive in Chromium.

    python -m benchmarks.graph_latency [--checkpoint FILE] [--requests 200] [--warmup 10]
                                       [--threads 1] [--loads 10] [--data-dir DIR] [--out DIR]

Starts the server in a subprocess on 127.0.0.1 (a free port) and sends --requests POST
/api/graph one after another on one keep-alive connection (as the page sends them), for each
payload: a digit as 28x28 "pixels" with its label, and the expression tanh(a*b + c). Reports
p50/p99/mean latency and the size of the answer. Then, with --loads > 0, headless Chromium
(selenium) opens /graph --loads times, each in a fresh tab state, and reads how long after the
navigation started the explorer was interactive: the page sets `data-ready-ms` on #explorer
(performance.now(), from navigation start) when its first graph is drawn and its controls
work. With MNIST at hand (--data-dir, else $TINYGRAD_MNIST_DATA) the page opens on test digit
0, else on the expression.

Without --checkpoint it serves an untrained model of the default size (784-512-256-10): the
time per request does not depend on the weights. Clients and the browser run on the same
machine as the server. Writes graph_latency.json and graph_latency.md into --out.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .serve_latency import default_checkpoint, payload, start_server
from .train_speed import add_io_flags, write_results

P50_TARGET_MS = 150.0  # POST /api/graph, the default model, a digit
INTERACTIVE_TARGET_MS = 1000.0  # navigation start to an interactive explorer
EXPRESSION = json.dumps({"expression": "tanh(a*b + c)", "values": {"a": 2, "b": -3, "c": 10}}).encode()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="checkpoint to serve (default: an untrained 784-512-256-10 model)")
    p.add_argument("--requests", type=int, default=200, help="timed requests per payload")
    p.add_argument("--warmup", type=int, default=10, help="untimed requests per payload first")
    p.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads of the server")
    p.add_argument("--loads", type=int, default=10, help="page loads timed in Chromium (0: none)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="MNIST for the server (default: $TINYGRAD_MNIST_DATA, if set)")
    add_io_flags(p, data=False)
    args = p.parse_args(argv)
    if args.requests < 1 or args.threads < 1 or args.warmup < 0 or args.loads < 0:
        p.error("--requests and --threads must be >= 1, --warmup and --loads >= 0")
    return args


def measure(port: int, body: bytes, requests: int, warmup: int) -> dict[str, Any]:
    """Latency of POST /api/graph with `body`, one request at a time on one connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json", "Host": "127.0.0.1"}
    ms, errors, size = [], 0, 0
    for i in range(warmup + requests):
        start = time.perf_counter()
        connection.request("POST", "/api/graph", body=body, headers=headers)
        reply = connection.getresponse()
        data = reply.read()
        took = 1000 * (time.perf_counter() - start)
        ok = reply.status == 200 and b'"backward_steps"' in data
        if i >= warmup:
            ms.append(took)
            errors += not ok
            size = len(data)
    connection.close()
    ms.sort()
    return {"requests": requests, "errors": errors, "bytes": size, "p50_ms": statistics.median(ms),
            "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))], "mean_ms": statistics.fmean(ms)}


def interactive(port: int, loads: int) -> dict[str, Any]:
    """Milliseconds from navigation start to the explorer's data-ready-ms, over `loads` loads
    of /graph in headless Chromium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        raise SystemExit("graph_latency: --loads needs Chromium and chromedriver "
                         "(apt-get install chromium chromium-driver), or pass --loads 0")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking", "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        ms, source = [], None
        for _ in range(loads + 1):  # the first load fills the browser's cache: not timed
            driver.get(f"http://127.0.0.1:{port}/graph")
            WebDriverWait(driver, 30).until(lambda d: d.execute_script(
                "return document.getElementById('explorer').dataset.readyMs"))
            ms.append(float(driver.execute_script(
                "return document.getElementById('explorer').dataset.readyMs")))
            source = driver.execute_script("return document.getElementById('explorer').dataset.source")
    finally:
        driver.quit()
    timed = sorted(ms[1:])
    return {"loads": loads, "source": source, "p50_ms": statistics.median(timed), "max_ms": timed[-1]}


def report(result: dict[str, Any]) -> str:
    lines = ["# The graph explorer's latency", "",
             f"Measured {result['date']} with `{result['command']}`.", "",
             (f"{result['model']} served by `tinygrad-mnist serve` on {result['machine']}, "
              f"{result['threads']} BLAS thread(s) in the server; one client on the same machine, "
              f"one request at a time on a keep-alive connection. POST /api/graph:"), "",
             "| payload | requests | errors | answer KB | p50 ms | p99 ms | mean ms |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in result["payloads"].items():
        lines.append(f"| {name} | {r['requests']} | {r['errors']} | {r['bytes'] / 1024:.0f} | "
                     f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_ms']:.1f} |")
    page = result.get("page")
    if page:
        lines += ["", (f"/graph in headless Chromium, {page['loads']} loads (opening on the "
                       f"{page['source']}): interactive {page['p50_ms']:.0f} ms after navigation "
                       f"start (p50), {page['max_ms']:.0f} ms at most.")]
    lines += ["", "Targets:", ""] + [f"- {t}" for t in result["targets"]]
    return "\n".join(lines) + "\n"


def targets(result: dict[str, Any]) -> list[str]:
    digit = result["payloads"]["digit (pixels)"]
    out = [f"p50 of POST /api/graph for a digit: {digit['p50_ms']:.1f} ms (≤ {P50_TARGET_MS:g}) "
           f"{'met' if digit['p50_ms'] <= P50_TARGET_MS else 'missed'}"]
    if result.get("page"):
        p50 = result["page"]["p50_ms"]
        out.append(f"/graph interactive: {p50:.0f} ms (≤ {INTERACTIVE_TARGET_MS:g}) "
                   f"{'met' if p50 <= INTERACTIVE_TARGET_MS else 'missed'}")
    errors = sum(r["errors"] for r in result["payloads"].values())
    out.append(f"errors: {errors} {'met' if errors == 0 else 'missed'}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.data_dir is not None:  # the server reads it from its environment
        os.environ["TINYGRAD_MNIST_DATA"] = str(args.data_dir)
    bodies = {"digit (pixels)": payload("pixels", label=3), "expression": EXPRESSION}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or default_checkpoint(Path(tmp))
        from tinygrad_mnist.checkpoint import load_checkpoint
        model = "MLP " + "-".join(map(str, load_checkpoint(checkpoint).model.sizes))
        proc, port = start_server(checkpoint, args.threads)
        try:
            measured = {name: measure(port, body, args.requests, args.warmup)
                        for name, body in bodies.items()}
            page = interactive(port, args.loads) if args.loads else None
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    result = {"model": model, "threads": args.threads,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": "python -m benchmarks.graph_latency " + " ".join(argv or sys.argv[1:]),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                         f"{platform.python_version()}", "payloads": measured, "page": page}
    result["targets"] = targets(result)
    args.out.mkdir(parents=True, exist_ok=True)
    write_results(args.out, "graph_latency", result, report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
