"""Time to accuracy: seconds of training until 98 % and 99 % validation accuracy, by contender.

    python -m benchmarks.time_to_accuracy [--threads 1,default] [--seeds 0,1,2] [--epochs 25]
                                          [--parts 10] [--quick] [--out DIR]

The default recipe (RECIPE below, every item a flag) is trained by this engine, hand-written
NumPy, PyTorch and TensorFlow (the last two when installed): the same MLP from the same initial
weights, the same augmented batches in the same order (each worker builds them from the seed
alone, and the parent checks their CRC32 slice by slice), the same SGD arithmetic (Nesterov
momentum, L2 weight decay added to the gradient as the engine's `optim.SGD` does) and the same
per-step cosine learning rate. Each contender runs in its own worker process; the parent has
them train each epoch in --parts slices taken in turn, rotating the order every slice, as
`train_speed` does. Validation (5,000 held-out training digits) runs after every slice, i.e.
--parts times an epoch, and is not counted: the seconds are the steps' own time (the batches
are built before each slice's clock starts). The test accuracy is measured once, at the end.

The whole race is run once per seed (its initial weights, shuffles and shifts). Contenders take
the same steps, but float rounding differs between libraries, and where a noisy validation
curve first crosses 98 % can move by an epoch with it; each process's memory layout also moves
a step's time by a few per cent. So the summary is over the seeds: each contender's mean, and
engine ÷ contender as the ratio of their summed seconds (to an accuracy: over the seeds where
both reached it). The 1-thread targets are checked on that summary.

--threads takes a comma-separated list: a number pins every BLAS/OpenMP/TF/torch thread knob
to it, `default` leaves them all unset so each library picks its own. Writes
time_to_accuracy.json and time_to_accuracy.md into --out.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from tinygrad_mnist.config import TrainConfig

from .train_speed import (
    OPTIONAL,
    ROOT,
    Worker,
    add_io_flags,
    machine_facts,
    numpy_info,
    set_threads,
    write_results,
)

# The default recipe: `tinygrad-mnist train`'s own defaults (TrainConfig), so the two never drift.
_D = TrainConfig()
RECIPE: dict[str, Any] = {
    "sizes": [784, *_D.hidden, 10], "batch": _D.batch_size, "lr": _D.lr, "momentum": _D.momentum,
    "nesterov": True, "weight_decay": _D.weight_decay, "schedule": _D.schedule,
    "max_shift": _D.shift, "augment": _D.augment, "epochs": _D.epochs, "seed": _D.seed,
    "val_size": _D.val_size,
}
ACCURACIES = (0.98, 0.99)
# engine ÷ contender, at most, at one thread (the issue's targets): checked on the time to each
# accuracy and on the whole run (the same steps for all, whichever path rounding takes them on)
TARGETS = {"torch": 1.0, "numpy": 1.05}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="1,default",
                   help="comma-separated thread settings, each a number or 'default' (default 1,default)")
    p.add_argument("--contenders", default="engine,numpy,tensorflow,torch",
                   help="comma-separated; tensorflow/torch are left out when not installed")
    p.add_argument("--parts", type=int, default=10,
                   help="slices of each epoch, interleaved across contenders, each followed by a "
                        "validation (default 10)")
    p.add_argument("--sizes", type=_int_list, default=RECIPE["sizes"])
    p.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    p.add_argument("--batch", type=int, default=RECIPE["batch"])
    p.add_argument("--lr", type=float, default=RECIPE["lr"], help="peak of the cosine schedule")
    p.add_argument("--momentum", type=float, default=RECIPE["momentum"])
    p.add_argument("--no-nesterov", dest="nesterov", action="store_false",
                   help="classical momentum instead of Nesterov's")
    p.add_argument("--weight-decay", type=float, default=RECIPE["weight_decay"])
    p.add_argument("--max-shift", type=int, default=RECIPE["max_shift"],
                   help="random shifts of up to this many pixels (0: none)")
    p.add_argument("--augment", choices=["none", "shift", "affine", "elastic"],
                   default=RECIPE["augment"], help="the distortions, as `train --augment`")
    p.add_argument("--seeds", type=_int_list, default=[0, 1, 2],
                   help="comma-separated; the race is run once per seed (default 0,1,2)")
    p.add_argument("--limit", type=int, default=None, help="train on the first N examples only")
    p.add_argument("--warmup-steps", type=int, default=20)
    add_io_flags(p)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 epochs on 5,120 examples, 2 slices an epoch, 1 thread, seed 0")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.limit, args.parts, args.warmup_steps = 2, 5120, 2, 2
        args.threads, args.seeds = "1", [0]
    try:
        args.threads = [0 if t.strip() == "default" else int(t) for t in args.threads.split(",")]
    except ValueError:
        p.error(f"--threads takes numbers or 'default', comma-separated; got {args.threads!r}")
    if any(t < 0 for t in args.threads) or args.epochs < 1 or args.parts < 1 or args.batch < 1:
        p.error("--threads, --epochs, --parts and --batch must be positive")
    if not args.seeds or len(set(args.seeds)) < len(args.seeds) or min(args.seeds) < 0:
        p.error(f"--seeds takes distinct non-negative numbers; got {args.seeds}")
    args.recipe = {k: getattr(args, k, v) for k, v in RECIPE.items() if k != "seed"}  # a race adds its own
    return args


def _int_list(text: str) -> list[int]:
    try:
        return [int(n) for n in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


class RecipeWorker(Worker):
    """A contender's process serving the recipe (`benchmarks.worker --recipe`)."""

    def __init__(self, contender: str, args: argparse.Namespace, threads: int, seed: int):
        self.name = contender
        cmd = [sys.executable, "-m", "benchmarks.worker", contender, "--threads", str(threads),
               "--warmup-steps", str(args.warmup_steps),
               "--recipe", json.dumps({**args.recipe, "seed": seed})]
        if args.data:
            cmd += ["--data", args.data]
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)


def race(contenders: list[str], args: argparse.Namespace, threads: int, seed: int
         ) -> dict[str, Any]:
    """Train every contender through the whole recipe, interleaved; per-contender curves."""
    set_threads(threads)
    workers = [RecipeWorker(c, args, threads, seed) for c in contenders]
    results = {w.name: {**w.receive(), "curve": []} for w in workers}
    total = dict.fromkeys(results, 0.0)
    for epoch in range(args.epochs):
        for part in range(args.parts):
            k = (epoch * args.parts + part) % len(workers)
            crcs = {}
            for w in workers[k:] + workers[:k]:
                reply = w.ask(cmd="train", epoch=epoch, part=part, parts=args.parts)
                total[w.name] += reply["seconds"]
                crcs[w.name] = reply["crc32"]
            if len(set(crcs.values())) > 1:
                raise RuntimeError(f"epoch {epoch + 1}, slice {part + 1}: the contenders trained on "
                                   f"different batches (CRC32 {crcs})")
            for w in workers:
                results[w.name]["curve"].append({
                    "epochs": epoch + (part + 1) / args.parts, "seconds": total[w.name],
                    "val_accuracy": w.ask(cmd="val")["val_accuracy"]})
    for w in workers:
        results[w.name]["test_accuracy"] = w.ask(cmd="test")["test_accuracy"]
        results[w.name].update(w.ask(cmd="quit"))
        results[w.name].pop("ready")
        w.close()
    for r in results.values():
        r["train_seconds"] = r["curve"][-1]["seconds"]
        r["final_val_accuracy"] = r["curve"][-1]["val_accuracy"]
        r["seconds_to"] = {f"{a:.2f}": first_reached(r["curve"], a) for a in ACCURACIES}
        r["epochs_to"] = {f"{a:.2f}": first_reached(r["curve"], a, "epochs") for a in ACCURACIES}
    return results


def first_reached(curve: list[dict[str, float]], accuracy: float, key: str = "seconds"
                  ) -> float | None:
    """The training seconds (or epochs, with key="epochs") at the first validation that
    reached `accuracy`; None if none did."""
    return next((p[key] for p in curve if p["val_accuracy"] >= accuracy), None)


def ratios(races: list[dict[str, Any]], of: str = "engine") -> dict[str, dict[str, float | None]]:
    """`of`'s seconds ÷ each other contender's, summed over the races (one per seed): for the
    whole run (the same work for both), and to each accuracy over the races where both reached
    it (None where there is none)."""
    out = {}
    for name in races[0]:
        if name == of:
            continue
        pairs = [(race[of], race[name]) for race in races]
        rat: dict[str, float | None] = {
            "all_epochs": sum(m["train_seconds"] for m, _ in pairs)
            / sum(r["train_seconds"] for _, r in pairs)}
        for a in pairs[0][1]["seconds_to"]:
            both = [(m["seconds_to"][a], r["seconds_to"][a]) for m, r in pairs
                    if m["seconds_to"][a] and r["seconds_to"][a]]
            rat[a] = sum(m for m, _ in both) / sum(r for _, r in both) if both else None
        out[f"{of}/{name}"] = rat
    return out


def means(races: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each contender's mean over the races: seconds to an accuracy over the races that reached
    it (`reached` counts them), test accuracy with its lowest and highest."""
    out = {}
    for name in races[0]:
        cs = [race[name] for race in races]
        out[name] = {
            "train_seconds": statistics.mean(c["train_seconds"] for c in cs),
            "test_accuracy": statistics.mean(c["test_accuracy"] for c in cs),
            "test_accuracy_range": [min(c["test_accuracy"] for c in cs),
                                    max(c["test_accuracy"] for c in cs)],
            "seconds_to": {}, "reached": {}}
        for a in cs[0]["seconds_to"]:
            got = [c["seconds_to"][a] for c in cs if c["seconds_to"][a] is not None]
            out[name]["seconds_to"][a] = statistics.mean(got) if got else None
            out[name]["reached"][a] = len(got)
    return out


def check_targets(threads: int, rat: dict[str, dict[str, float | None]]) -> dict[str, Any]:
    """The issue's 1-thread targets, each with its limit and verdict: on the time to each
    accuracy (not reached by either: no verdict) and on the whole run."""
    if threads != 1:
        return {}
    checks = {}
    for name, limit in TARGETS.items():
        if f"engine/{name}" not in rat:
            continue
        for key, what in [(f"{a:.2f}", f"time to {a:.0%} val") for a in ACCURACIES] + [
                ("all_epochs", "all epochs")]:
            value = rat[f"engine/{name}"].get(key)
            checks[f"{what}, engine/{name}"] = {
                "value": value, "limit": limit, "met": None if value is None else value <= limit}
    return checks


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def to_markdown(result: dict[str, Any]) -> str:
    m, r = result["machine"], result["recipe"]
    seeds = ", ".join(map(str, result["seeds"]))
    versions = ", ".join(f"{k} {m[k]}" for k in ("numpy", "tensorflow", "torch") if m.get(k))
    lines = [
        (f"Measured {result['date']} on {m['cpu']}, {m['usable_cores']} of {m['cores']} cores, "
         f"{m['blas'].get('name')} {m['blas'].get('version')}; {versions}; load average "
         f"{m['load_average_start'][0]:.2f} at start, {m['load_average_end'][0]:.2f} at end."),
        (f"Recipe: MLP {'-'.join(map(str, r['sizes']))}, batch {r['batch']}, SGD "
         f"{'Nesterov ' if r['nesterov'] else ''}momentum {r['momentum']}, weight decay "
         f"{r['weight_decay']} (L2, added to the gradient), cosine learning rate from {r['lr']} "
         f"every step, {r.get('augment', 'shift')} augmentation with ±{r['max_shift']} px "
         f"shifts, {result['epochs']} epochs on "
         f"{result['train_examples']:,} training digits; one race for each of seeds {seeds}."),
        (f"Seconds are training time only (augmented batches built beforehand, identical for "
         f"all: checked by CRC32); validation on {r['val_size']:,} held-out digits after every "
         f"1/{result['parts']} epoch, not counted. Contenders interleaved in "
         f"{result['parts']} slices an epoch."),
        "",
        (f"Mean over seeds {seeds}; engine ÷ this is the ratio of summed seconds (to an "
         f"accuracy: over the seeds where both reached it; in brackets, how many seeds reached "
         f"it, where not all):"),
        "",
        ("| threads | contender | s to 98 % val | s to 99 % val | s, all epochs | test acc. "
         "| engine ÷ this, to 98 % | to 99 % | all epochs |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    n = len(result["seeds"])
    for summary in result["summary"]:
        for name, c in summary["contenders"].items():
            low, high = c["test_accuracy_range"]
            lines.append(
                f"| {summary['threads_label']} | {name} | {_mean_reached(c, '0.98', n)} | "
                f"{_mean_reached(c, '0.99', n)} | {c['train_seconds']:.1f} | "
                f"{c['test_accuracy']:.4f}{f' ({low:.4f}–{high:.4f})' if n > 1 else ''} | "
                + _ratio_cells(summary["ratios"].get(f"engine/{name}")))
    targets = [(k, t) for summary in result["summary"] for k, t in summary["targets"].items()]
    if targets:
        lines += ["", f"Targets (issue 10, at 1 thread; engine ÷ contender, seeds {seeds}):", ""]
        lines += [f"- {k}: " + ("not reached by one or both: no verdict" if t["value"] is None else
                                f"{t['value']:.3f} (≤ {t['limit']}) "
                                f"{'met' if t['met'] else '**missed**'}") for k, t in targets]
    lines += [
        "", "Each race (in brackets, the epoch at which the accuracy was first reached):", "",
        ("| threads | seed | contender | s to 98 % val (epoch) | s to 99 % val (epoch) "
         "| s, all epochs | final val acc. | test acc. | engine ÷ this, to 98 % | to 99 % "
         "| all epochs |"),
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in result["runs"]:
        for name, c in run["contenders"].items():
            lines.append(
                f"| {run['threads_label']} | {run['seed']} | {name} | {_reached(c, '0.98')} | "
                f"{_reached(c, '0.99')} | {c['train_seconds']:.1f} | "
                f"{c['final_val_accuracy']:.4f} | {c['test_accuracy']:.4f} | "
                + _ratio_cells(run["ratios"].get(f"engine/{name}")))
    lines += ["", "Contenders follow the same steps, but float rounding differs between "
              "libraries, so their validation accuracy can cross a threshold a few slices "
              "apart (the epoch in brackets); the whole run is the same work for all."]
    return "\n".join(lines) + "\n"


def _ratio_cells(rat: dict[str, float | None] | None) -> str:
    if not rat:
        return "— | — | — |"
    return f"{_fmt(rat['0.98'], '.3f')} | {_fmt(rat['0.99'], '.3f')} | {rat['all_epochs']:.3f} |"


def _reached(contender: dict[str, Any], accuracy: str) -> str:
    seconds, epochs = contender["seconds_to"][accuracy], contender["epochs_to"][accuracy]
    return "—" if seconds is None else f"{seconds:.1f} ({epochs:g})"


def _mean_reached(contender: dict[str, Any], accuracy: str, races: int) -> str:
    seconds, reached = contender["seconds_to"][accuracy], contender["reached"][accuracy]
    if seconds is None:
        return "—"
    return f"{seconds:.1f}" + ("" if reached == races else f" ({reached} of {races})")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    contenders = [c for c in args.contenders.split(",")
                  if c not in OPTIONAL or importlib.util.find_spec(OPTIONAL[c]) is not None]
    set_threads(args.threads[0])
    machine = {**machine_facts(), **numpy_info()}
    runs, summary = [], []
    for threads in args.threads:
        label = str(threads) if threads else "default"
        races = []
        for seed in args.seeds:
            print(f"threads {label}, seed {seed}: {', '.join(contenders)}, {args.epochs} epochs...",
                  file=sys.stderr)
            res = race(contenders, args, threads, seed)
            for r in res.values():  # library versions are machine facts, not per-run figures
                for k in ("numpy", "tensorflow", "torch"):
                    if k in r:
                        machine[k] = r.pop(k)
            runs.append({"threads": threads, "threads_label": label, "seed": seed,
                         "contenders": res, "ratios": ratios([res]) if "engine" in contenders else {}})
            races.append(res)
        rat = ratios(races) if "engine" in contenders else {}
        summary.append({"threads": threads, "threads_label": label, "contenders": means(races),
                        "ratios": rat, "targets": check_targets(threads, rat)})
    machine["load_average_end"] = os.getloadavg()
    first = next(iter(runs[0]["contenders"].values()))
    result = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine, "recipe": args.recipe,
              "seeds": args.seeds, "epochs": args.epochs, "parts": args.parts,
              "train_examples": first["train_examples"], "summary": summary, "runs": runs}
    write_results(args.out, "time_to_accuracy", result, to_markdown(result))
    return result


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as e:  # a worker failed, or the contenders' batches differed
        sys.exit(f"benchmark failed: {e}")
