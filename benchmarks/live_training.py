"""Does watching cost training speed? The training page's run against the CLI's loop, and the
size of the page's event stream.

    python -m benchmarks.live_training [--preset default] [--epochs 1] [--rounds 5]
                                       [--threads 1] [--data DIR] [--out DIR] [--quick]

One process, one model and config (the preset's, with --epochs), measured in turns, --rounds
times, the order swapped every round so that whatever else the machine does hits both alike:

- cli: the loop `tinygrad-mnist train` runs (train._train_epoch, without its progress bar),
  then the validation `train` does after each epoch; nothing is streamed.
- page: POST /api/train/start to a waitress server in this process, as `serve` runs it, with a
  reader streaming GET /api/train/events over HTTP the whole run, as the page does (here in a
  thread of this process, so its reading competes with the trainer for the interpreter).

Steps per second are the run's steps over its wall time (the page's from the start request's
answer to the stream's last event). The issue's targets: the page at least 0.9x the CLI's
steps/s (the median of the rounds' ratios), and the stream at most 200 KB/s. Writes
live_training.json and live_training.md into --out.
"""
from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import statistics
import sys
import threading
import time
from typing import Any

from .train_speed import add_io_flags, machine_facts, pin_threads, write_results

SPEED_TARGET, STREAM_TARGET_KB = 0.9, 200.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="default", help="the training page's preset (default: default)")
    p.add_argument("--epochs", type=int, default=1, help="epochs of each timed run (default 1)")
    p.add_argument("--rounds", type=int, default=5, help="cli/page pairs, in turns (default 5)")
    p.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads (default 1)")
    add_io_flags(p)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: the linear preset, 1 epoch, 2 rounds (numbers mean little)")
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.epochs, args.rounds = "linear", 1, 2
    if args.epochs < 1 or args.rounds < 1 or args.threads < 1:
        p.error("--epochs, --rounds and --threads must be >= 1")
    return args


def cli_run(config: Any, data: Any) -> float:
    """Seconds the CLI's loop takes for `config` (model made, every epoch, each validated)."""
    from tinygrad_mnist.config import build_model, build_optimizer, lr_schedule
    from tinygrad_mnist.predict import evaluate
    from tinygrad_mnist.train import _StopRequest, _train_epoch

    begun = time.perf_counter()
    model = build_model(config)
    optimizer, schedule = build_optimizer(config, model), lr_schedule(config)
    for epoch in range(config.epochs):
        _train_epoch(model, optimizer, config, epoch, schedule, data.train_x, data.train_y,
                     False, _StopRequest())
        evaluate(model, data.val_x, data.val_y)
    return time.perf_counter() - begun


def page_run(port: int, body: dict[str, Any]) -> tuple[float, int, int, dict[str, Any]]:
    """Start a run through the API and read its event stream to the end: (seconds from the
    start's answer to the last event, the bytes of the first event (the page's digits and the
    run so far, sent once), the bytes after it, the last event)."""
    api = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    api.request("POST", "/api/train/start", json.dumps(body), {"Content-Type": "application/json"})
    reply = api.getresponse()
    if reply.status != 200:
        raise RuntimeError(f"start refused: {reply.status} {reply.read().decode()}")
    reply.read()
    begun = time.perf_counter()
    stream = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    stream.request("GET", "/api/train/events")
    events = stream.getresponse()
    first, size, last = 0, 0, {}
    while True:
        line = events.fp.readline()
        if not line:
            raise RuntimeError("the event stream ended before the run's last event")
        if not first and line.startswith(b"data: "):
            first = len(line)
        else:
            size += len(line)
        if line.startswith(b"data: ") and b'"done":true' in line:
            last = json.loads(line[6:])
            break
    seconds = time.perf_counter() - begun
    stream.close()
    api.close()
    return seconds, first, size, last


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    pin_threads(args.threads)  # before NumPy loads
    from tinygrad_mnist.data import load_mnist
    from tinygrad_mnist.nn import MLP
    from tinygrad_mnist.server import create_app, make_server
    from tinygrad_mnist.train_page import live_config

    body = {"preset": args.preset, "epochs": args.epochs}
    _, config = live_config(body)
    data = load_mnist(args.data, val_size=config.val_size, seed=config.seed)
    steps = args.epochs * -(-len(data.train_x) // config.batch_size)
    app = create_app(MLP([784, 10], seed=0), data_dir=args.data)
    server = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    machine = {**machine_facts(), "threads": args.threads}
    rounds = []
    try:
        page_run(server.effective_port, body)  # warm-up: MNIST loaded by the server, caches
        for r in range(args.rounds):
            timed: dict[str, Any] = {}
            for who in (("cli", "page") if r % 2 == 0 else ("page", "cli")):
                if who == "cli":
                    timed["cli_seconds"] = cli_run(config, data)
                else:
                    seconds, first, size, last = page_run(server.effective_port, body)
                    if last.get("state") != "finished" or last.get("step") != steps:
                        raise RuntimeError(f"the page's run did not finish its {steps} steps: {last}")
                    timed.update(page_seconds=seconds, first_event_kb=first / 1000,
                                 stream_kb_per_s=size / 1000 / seconds)
            timed.update(first="cli" if r % 2 == 0 else "page",
                         cli_steps_per_s=steps / timed["cli_seconds"],
                         page_steps_per_s=steps / timed["page_seconds"])
            timed["ratio"] = timed["page_steps_per_s"] / timed["cli_steps_per_s"]
            rounds.append(timed)
            print(f"round {r + 1}: cli {timed['cli_steps_per_s']:.0f} steps/s, page "
                  f"{timed['page_steps_per_s']:.0f} steps/s ({timed['ratio']:.3f}), stream "
                  f"{timed['stream_kb_per_s']:.1f} KB/s", file=sys.stderr, flush=True)
    finally:
        server.close()
    machine["load_average_end"] = os.getloadavg()
    ratio = statistics.median(r["ratio"] for r in rounds)
    stream = max(r["stream_kb_per_s"] for r in rounds)
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": "python -m benchmarks.live_training " + " ".join(sys.argv[1:] if argv is None
                                                                        else argv),
              "machine": machine, "preset": args.preset, "sizes": [784, *config.hidden, 10],
              "config": {"lr": config.lr, "optimizer": config.optimizer, "batch_size": config.batch_size,
                         "epochs": config.epochs, "shift": config.shift, "augment": config.augment},
              "steps": steps, "rounds": rounds, "median_ratio": ratio, "max_stream_kb_per_s": stream,
              "speed_target": SPEED_TARGET, "stream_target_kb_per_s": STREAM_TARGET_KB,
              "speed_met": ratio >= SPEED_TARGET, "stream_met": stream <= STREAM_TARGET_KB}
    write_results(args.out, "live_training", result, to_markdown(result))
    return result


def to_markdown(result: dict[str, Any]) -> str:
    m, c = result["machine"], result["config"]
    rows = "\n".join(f"| {i + 1} | {r['first']} | {r['cli_steps_per_s']:.0f} | "
                     f"{r['page_steps_per_s']:.0f} | {r['ratio']:.3f} | {r['first_event_kb']:.1f} | "
                     f"{r['stream_kb_per_s']:.1f} |"
                     for i, r in enumerate(result["rounds"]))
    met = {True: "met", False: "**missed**"}
    return f"""# Training in the page: its speed against the CLI's, and its stream

Measured {result['date']} with `{result['command']}` on {m['cpu']}, {m['usable_cores']} of \
{m['cores']} cores, Python {m['python']}, {m['threads']} BLAS thread(s); load average \
{m['load_average_start'][0]:.2f} at start, {m['load_average_end'][0]:.2f} at end.
MLP {'-'.join(map(str, result['sizes']))} (preset {result['preset']}), {c['optimizer']} lr \
{c['lr']:g}, batch {c['batch_size']}, {c['epochs']} epoch(s) = {result['steps']} steps per run. \
cli: the loop of `tinygrad-mnist train` and its validation after each epoch; page: the same \
run started by POST /api/train/start on waitress, its event stream read over HTTP throughout.

| round | first | cli steps/s | page steps/s | page ÷ cli | first event, KB | stream after it, KB/s |
|---:|---|---:|---:|---:|---:|---:|
{rows}

- page ÷ cli steps/s, median of the rounds: {result['median_ratio']:.3f} (target ≥ \
{result['speed_target']}) {met[result['speed_met']]}
- the stream after its first event (the digits and the run so far, sent once to each page), \
the largest of the rounds: {result['max_stream_kb_per_s']:.1f} KB/s (target ≤ \
{result['stream_target_kb_per_s']:g}) {met[result['stream_met']]}
"""


if __name__ == "__main__":
    main()
