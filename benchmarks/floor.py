"""The BLAS floor: a training step's matrix products alone, against the engine's whole step.

    python -m benchmarks.floor [--threads 1] [--rounds 30] [--steps 40] [--quick] [--out DIR]

For each benchmark model the floor step is exactly the products the engine's step computes:
x @ W per layer forward, and backward x.T @ g for every weight's gradient and g @ W.T for every
layer but the first (whose input needs no gradient) — plain `@`, results allocated as the
engine's are. Everything else in the engine's step (bias adds, ReLU, softmax cross-entropy,
the bias sums, the SGD update, temporaries and Python) is what engine ÷ floor measures.
The two are timed in turns, --steps steps each, --rounds times (who goes first alternates);
the ratio is the median over rounds of the per-round ratio. A third turn times the recipe's
distortions of one batch (`augment.distort`, what `train` adds to every step), so the table
also says what augmentation costs against a step. The engine's step is the one
`train_speed` times (plain SGD, lr 0.1), or with --recipe-sgd the default recipe's Nesterov
momentum and weight decay. Writes floor.json and floor.md into --out.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from .train_speed import add_io_flags, machine_facts, numpy_info, set_threads, write_results

MODELS = {"784-128-10": [784, 128, 10], "784-512-256-10": [784, 512, 256, 10],
          "784-512-512-10": [784, 512, 512, 10]}
# engine ÷ floor at 1 thread when issue 10 was filed, and its aim for the smallest model
BEFORE = {"784-128-10": 1.54, "784-512-256-10": 1.29, "784-512-512-10": 1.20}
AIM = {"784-128-10": 1.25}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS/OpenMP threads (default 1; 0: the library's default)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated, from " + ", ".join(MODELS))
    p.add_argument("--rounds", type=int, default=30, help="turns of floor and engine (default 30)")
    p.add_argument("--steps", type=int, default=40, help="steps per turn (default 40)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--recipe-sgd", action="store_true",
                   help="the engine steps with the recipe's Nesterov momentum and weight decay")
    p.add_argument("--seed", type=int, default=0)
    add_io_flags(p, data=False)
    p.add_argument("--quick", action="store_true", help="smoke run: 3 rounds of 3 steps")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.steps = 3, 3
    args.models = args.models.split(",")
    unknown = set(args.models) - set(MODELS)
    if unknown:
        p.error(f"unknown model {sorted(unknown)}; choose from {list(MODELS)}")
    if args.threads < 0 or args.rounds < 1 or args.steps < 1 or args.batch < 1:
        p.error("--threads must be >= 0, --rounds, --steps and --batch >= 1")
    return args


def floor_step(sizes: list[int], batch: int, seed: int = 0) -> Callable[[], None]:
    """One step's matrix products on arrays of the step's shapes (their values don't matter
    to BLAS), as a function to time."""
    import numpy as np

    rng = np.random.default_rng(seed)
    acts = [rng.random((batch, n), dtype=np.float32) for n in sizes[:-1]]  # each layer's input
    grads = [rng.random((batch, n), dtype=np.float32) for n in sizes[1:]]  # each layer's output
    weights = [rng.random((a, b), dtype=np.float32) for a, b in zip(sizes, sizes[1:])]

    def step() -> None:
        for a, w in zip(acts, weights):
            a @ w
        for i in reversed(range(len(weights))):
            acts[i].T @ grads[i]
            if i:
                grads[i] @ weights[i].T

    return step


def engine_step(sizes: list[int], batch: int, recipe_sgd: bool, seed: int = 0
                ) -> tuple[Callable[[], None], Callable[[], None]]:
    """The engine's training step on one fixed MNIST-shaped batch, and a function that puts
    the initial weights (and momenta) back, so many rounds of steps never drift."""
    import numpy as np

    from .contenders import initial_params, make_trainer
    from .time_to_accuracy import RECIPE  # imports NumPy: only after set_threads

    rng = np.random.default_rng(seed)
    x = rng.random((batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], batch)
    init = initial_params(sizes, seed)
    optim = {k: RECIPE[k] for k in ("momentum", "nesterov", "weight_decay")} if recipe_sgd else {}
    trainer = make_trainer("engine", init, 0.1, **optim)
    return (lambda: trainer.step(x, y)), (lambda: trainer.load(init))


def augment_batch(batch: int, seed: int = 0) -> Callable[[], None]:
    """The recipe's distortions of one batch of MNIST-sized images, as a function to time."""
    import numpy as np

    from tinygrad_mnist.augment import distort, epoch_moves

    from .time_to_accuracy import RECIPE

    x = np.random.default_rng(seed).random((batch, 784), dtype=np.float32)
    moves = epoch_moves(RECIPE["augment"], seed, 0, batch, RECIPE["max_shift"])
    return (lambda: None) if moves is None else (lambda: distort(x, moves, RECIPE["augment"]))


def bench_model(sizes: list[int], args: argparse.Namespace) -> dict[str, Any]:
    engine, reset = engine_step(sizes, args.batch, args.recipe_sgd, args.seed)
    turns = {"floor": floor_step(sizes, args.batch, args.seed), "engine": engine,
             "augment": augment_batch(args.batch, args.seed)}
    for fn in turns.values():  # warm caches and allocator
        for _ in range(args.steps):
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in turns}
    for r in range(args.rounds):
        reset()
        for name, fn in list(turns.items())[::1 if r % 2 else -1]:
            start = time.perf_counter()
            for _ in range(args.steps):
                fn()
            seconds[name].append((time.perf_counter() - start) / args.steps)
    per_round = [e / f for e, f in zip(seconds["engine"], seconds["floor"])]
    augment = [a / e for a, e in zip(seconds["augment"], seconds["engine"])]
    return {"sizes": sizes, "floor_us": statistics.median(seconds["floor"]) * 1e6,
            "engine_us": statistics.median(seconds["engine"]) * 1e6,
            "augment_us": statistics.median(seconds["augment"]) * 1e6,
            "ratio_per_round": per_round, "ratio": statistics.median(per_round),
            "augment_share": statistics.median(augment)}


def to_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        (f"Measured {result['date']} on {m['cpu']}, {m['usable_cores']} of {m['cores']} cores, "
         f"{m['blas'].get('name')} {m['blas'].get('version')}, numpy {m['numpy']}, "
         f"**{result['threads_label']} thread(s)**; load average {m['load_average_start'][0]:.2f} "
         f"at start, {m['load_average_end'][0]:.2f} at end."),
        (f"Batch {result['batch']}; engine step with {result['sgd']}; median of "
         f"{result['rounds']} rounds of {result['steps']} steps each, floor and engine in turns."),
        "",
        ("| model | floor, µs/step | engine, µs/step | engine ÷ floor | at issue 10 (1 thread) "
         f"| {result['augment']} augmentation (±{result['max_shift']} px), µs/batch "
         "| augmentation ÷ engine step |"),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model, r in result["models"].items():
        aim = f", aim ≤ {AIM[model]}" if model in AIM else ""
        lines.append(f"| {model} | {r['floor_us']:.0f} | {r['engine_us']:.0f} | {r['ratio']:.3f} | "
                     f"{BEFORE[model]}{aim} | {r['augment_us']:.0f} | {100 * r['augment_share']:.1f} % |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    set_threads(args.threads)  # before this process first imports NumPy
    machine = {**machine_facts(), **numpy_info()}
    models = {}
    for model in args.models:
        print(f"{model}: {args.rounds} rounds of {args.steps} steps...", file=sys.stderr)
        models[model] = bench_model(MODELS[model], args)
    machine["load_average_end"] = os.getloadavg()
    from .time_to_accuracy import RECIPE  # NumPy is loaded by now
    result = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine,
              "augment": RECIPE["augment"], "max_shift": RECIPE["max_shift"],
              "threads": args.threads, "threads_label": str(args.threads or "default"),
              "batch": args.batch, "rounds": args.rounds, "steps": args.steps,
              "sgd": "Nesterov momentum 0.9, weight decay 1e-4" if args.recipe_sgd
              else "plain SGD (as train_speed)", "models": models}
    write_results(args.out, "floor", result, to_markdown(result))
    return result


if __name__ == "__main__":
    main()
