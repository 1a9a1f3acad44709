"""Training speed and memory: this engine next to hand-written NumPy, TensorFlow and PyTorch.

    python -m benchmarks.train_speed [--threads 1] [--epochs 5] [--parts 10] [--quick] [--out DIR]

Each contender runs in its own worker process (so each peak RSS is its own), all workers of a
model are started together, and the parent has them train each epoch in --parts slices taken
in turn, rotating the order every slice, so whatever else the machine is doing (it changes from
second to second) hits every contender alike; a contender's epoch time is the sum of its slices.
Ratios are the median over epochs of the per-epoch ratio. Writes train_speed.json and
train_speed.md into --out.

The thread variables are set here, before any process imports NumPy: this module imports
nothing heavy itself, and the workers inherit the environment.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"784-128-10": [784, 128, 10], "784-512-512-10": [784, 512, 512, 10]}
# engine epoch time ÷ hand-written NumPy's, at most (the targets)
TIME_TARGETS = {"784-128-10": 1.10, "784-512-512-10": 1.05}
RSS_TARGET = 1.2
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
               "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
OPTIONAL = {"tensorflow": "tensorflow", "torch": "torch"}  # contender -> module it needs


def set_threads(threads: int) -> None:
    """Pin every thread knob for the workers started next (and for this process, if it has not
    loaded NumPy yet), or (0) unset them all."""
    for var in THREAD_VARS:
        if threads:
            os.environ[var] = str(threads)
        else:
            os.environ.pop(var, None)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def machine_facts() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                   cpu)
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "platform": platform.platform(), "python": platform.python_version(),
            "load_average_start": os.getloadavg()}


def add_io_flags(p: argparse.ArgumentParser, data: bool = True) -> None:
    """--data (where MNIST is) and --out (where the results go), alike for every benchmark."""
    if data:
        p.add_argument("--data", default=None, help="MNIST directory (default: "
                       "$TINYGRAD_MNIST_DATA, else the user cache, downloading if needed)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS/OpenMP/TF/torch threads for every contender (default 1)")
    p.add_argument("--epochs", type=int, default=5, help="timed epochs per contender (default 5)")
    p.add_argument("--parts", type=int, default=10,
                   help="slices of each epoch, interleaved across contenders (default 10)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated, from " + ", ".join(MODELS))
    p.add_argument("--contenders", default="engine,numpy,tensorflow,torch",
                   help="comma-separated; tensorflow/torch are left out when not installed")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="train on the first N examples only")
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--chain", type=int, default=100_000, help="ops in the backward-chain test")
    add_io_flags(p)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 epochs on 10,240 examples, a 10,000-op chain")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.limit, args.warmup_steps, args.chain = 2, 10_240, 5, 10_000
    args.models = args.models.split(",")
    unknown = set(args.models) - set(MODELS)
    if unknown:
        p.error(f"unknown model {sorted(unknown)}; choose from {list(MODELS)}")
    return args


def pin_threads(threads: int) -> None:
    """Set every thread knob before NumPy/TF/torch load anywhere (the workers inherit it)."""
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class Worker:
    """A contender's process: send it a command, read its JSON reply."""

    def __init__(self, contender: str, args: argparse.Namespace, sizes: list[int] | None = None):
        self.name = contender
        cmd = [sys.executable, "-m", "benchmarks.worker", contender, "--threads", str(args.threads),
               "--batch", str(args.batch), "--lr", str(args.lr), "--seed", str(args.seed),
               "--warmup-steps", str(args.warmup_steps), "--chain", str(args.chain)]
        if args.data:
            cmd += ["--data", args.data]
        if sizes:
            cmd += ["--sizes", ",".join(map(str, sizes))]
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)

    def send(self, **cmd: Any) -> None:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def receive(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.log.seek(0)
            raise RuntimeError(f"worker {self.name!r} exited with {self.proc.returncode}:\n"
                               + self.log.read()[-3000:])
        return json.loads(line)

    def ask(self, **cmd: Any) -> dict[str, Any]:
        self.send(**cmd)
        return self.receive()

    def close(self) -> None:
        self.proc.wait()
        self.log.close()


def bench_model(sizes: list[int], contenders: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Train every contender for args.epochs epochs, interleaved; per-contender figures."""
    workers = [Worker(c, args, sizes) for c in contenders]
    results = {w.name: {**w.receive(), "epoch_seconds": [], "test_accuracy": []} for w in workers}
    for epoch in range(args.epochs):
        seconds, steps = dict.fromkeys(results, 0.0), dict.fromkeys(results, 0)
        for part in range(args.parts):
            k = (epoch * args.parts + part) % len(workers)
            for w in workers[k:] + workers[:k]:
                reply = w.ask(cmd="train", epoch=epoch, part=part, parts=args.parts)
                seconds[w.name] += reply["seconds"]
                steps[w.name] += reply["steps"]
        for w in workers:
            results[w.name]["epoch_seconds"].append(seconds[w.name])
            results[w.name]["test_accuracy"].append(w.ask(cmd="test")["test_accuracy"])
            results[w.name]["steps_per_epoch"] = steps[w.name]
    for w in workers:
        results[w.name].update(w.ask(cmd="quit"))
        results[w.name].pop("ready")
        w.close()
    for r in results.values():
        r["median_seconds"] = statistics.median(r["epoch_seconds"])
        r["steps_per_second"] = r["steps_per_epoch"] / r["median_seconds"]
        r["training_rss_growth_mb"] = r["peak_rss_mb"] - r["rss_before_training_mb"]
    return results


def ratios(results: dict[str, Any], of: str = "engine") -> dict[str, dict[str, Any]]:
    """`of`'s epoch time ÷ each other contender's (per round, and the median over rounds), the
    extra time per step (median over rounds, µs), and peak RSS ÷ peak RSS."""
    mine = results[of]
    out = {}
    for name, r in results.items():
        if name != of:
            pairs = list(zip(mine["epoch_seconds"], r["epoch_seconds"]))
            out[f"{of}/{name}"] = {
                "time_per_round": [a / b for a, b in pairs],
                "time": statistics.median(a / b for a, b in pairs),
                "extra_us_per_step": statistics.median(
                    (a - b) / mine["steps_per_epoch"] * 1e6 for a, b in pairs),
                "peak_rss": mine["peak_rss_mb"] / r["peak_rss_mb"]}
    return out


def check_targets(model: str, rat: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The issue's targets, each with the limit, the measured value and whether it was met."""
    checks = {}
    if "engine/numpy" in rat:
        checks["time engine/numpy"] = (rat["engine/numpy"]["time"], TIME_TARGETS[model])
        checks["peak RSS engine/numpy"] = (rat["engine/numpy"]["peak_rss"], RSS_TARGET)
    if "engine/tensorflow" in rat:
        checks["time engine/tensorflow"] = (rat["engine/tensorflow"]["time"], 1.0)
    return {k: {"value": v, "limit": lim, "met": v <= lim} for k, (v, lim) in checks.items()}


def machine_info(threads: int) -> dict[str, Any]:
    return {**machine_facts(), "threads": threads,
            "thread_env": {v: os.environ[v] for v in THREAD_VARS}}


def numpy_info() -> dict[str, Any]:
    """NumPy's version and BLAS build, asked in a child so this process never loads NumPy."""
    code = ("import json, numpy, tinygrad_mnist; d = numpy.show_config(mode='dicts');"
            "print(json.dumps({'numpy': numpy.__version__, 'engine': tinygrad_mnist.__version__,"
            "'blas': d['Build Dependencies']['blas']}))")
    return json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                                     capture_output=True, text=True).stdout)


def to_markdown(result: dict[str, Any]) -> str:
    m, ov = result["machine"], result["engine_overhead"]
    blas = m["blas"]
    versions = ", ".join(f"{k} {m[k]}" for k in ("numpy", "tensorflow", "torch") if m.get(k))
    lines = [
        f"Measured {result['date']} on {m['cpu']}, {m['usable_cores']} of {m['cores']} cores, "
        f"{blas.get('name')} {blas.get('version')}, **{m['threads']} thread(s)** per contender; "
        f"{versions}; load average {m['load_average_start'][0]:.2f} at start, "
        f"{m['load_average_end'][0]:.2f} at end.",
        f"SGD lr {result['lr']}, batch {result['batch']}, float32, {result['train_examples']} "
        f"training examples, median of {result['epochs']} epochs, each interleaved with the "
        f"other contenders' in {result['parts']} slices.",
        "",
        "| model | contender | s/epoch | steps/s | peak RSS, MB (+ in training) | test acc. "
        "| engine ÷ this, time | engine − this, µs/step | engine ÷ this, RSS |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, mres in result["models"].items():
        for name, r in mres["contenders"].items():
            rat = mres["ratios"].get(f"engine/{name}")
            lines.append(
                f"| {model} | {name} | {r['median_seconds']:.3f} | {r['steps_per_second']:.0f} | "
                f"{r['peak_rss_mb']:.0f} (+{r['training_rss_growth_mb']:.0f}) | "
                f"{r['test_accuracy'][-1]:.4f} | "
                + (f"{rat['time']:.3f} | {rat['extra_us_per_step']:+.0f} | {rat['peak_rss']:.2f} |"
                   if rat else "— | — | — |"))
    lines += ["", "Targets:", ""]
    for model, mres in result["models"].items():
        for name, t in mres["targets"].items():
            lines.append(f"- {model}, {name}: {t['value']:.3f} (≤ {t['limit']}) "
                         f"{'met' if t['met'] else '**missed**'}")
    lines += ["", f"Engine per-op overhead: {ov['op_recorded_us']:.2f} µs for a recorded 1-element "
              f"add, {ov['op_no_grad_us']:.2f} µs under no_grad (NumPy alone: "
              f"{ov['numpy_add_us']:.2f} µs). Fixed cost of a training step (a 4-4-2 MLP on 2 "
              f"examples, BLAS time nil): engine {ov['tiny_step_engine_us']:.1f} µs, hand-written "
              f"{ov['tiny_step_numpy_us']:.1f} µs. Backward through a {ov['chain_ops']:,}-op chain: "
              f"{ov['chain_backward_s']:.3f} s (building it: {ov['chain_forward_s']:.3f} s).", ""]
    return "\n".join(lines)


def write_results(out: Path, name: str, result: dict[str, Any], markdown: str) -> None:
    """NAME.json and NAME.md in `out`, each written atomically; the table is printed too."""
    from tinygrad_mnist.files import atomic_write  # only now: it loads NumPy into this process

    atomic_write(out / f"{name}.json", (json.dumps(result, indent=2) + "\n").encode())
    atomic_write(out / f"{name}.md", markdown.encode())
    print(markdown)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    pin_threads(args.threads)
    contenders = [c for c in args.contenders.split(",")
                  if c not in OPTIONAL or importlib.util.find_spec(OPTIONAL[c]) is not None]
    machine = {**machine_info(args.threads), **numpy_info()}
    models = {}
    for model in args.models:
        print(f"{model}: {', '.join(contenders)}, {args.epochs} epochs...", file=sys.stderr)
        res = bench_model(MODELS[model], contenders, args)
        for r in res.values():  # library versions are machine facts, not per-run figures
            for k in ("numpy", "tensorflow", "torch"):
                if k in r:
                    machine[k] = r.pop(k)
        rat = ratios(res) if "engine" in res else {}
        models[model] = {"sizes": MODELS[model], "contenders": res, "ratios": rat,
                         "targets": check_targets(model, rat)}
    overhead = Worker("overhead", args)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine, "epochs": args.epochs,
              "parts": args.parts,
              "batch": args.batch, "lr": args.lr, "seed": args.seed,
              "train_examples": args.limit or 60_000, "models": models,
              "engine_overhead": overhead.receive()}
    overhead.close()
    result["machine"]["load_average_end"] = os.getloadavg()
    write_results(args.out, "train_speed", result, to_markdown(result))
    return result


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as e:  # a worker failed: its own message says why
        sys.exit(f"benchmark failed: {e}")
