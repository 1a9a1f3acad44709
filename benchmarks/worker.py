"""One contender in its own process, so its peak RSS is its own and its libraries load alone.

Started by `train_speed` (which pins the BLAS thread variables before this process starts).
It loads the data, builds the trainer, warms it up (then restores the initial weights), says
"ready", and then trains one part of an epoch each time it reads a `train` command on stdin
(and reports test accuracy on `test`), so the parent can interleave the contenders finely.
Replies are JSON lines on the original stdout; anything libraries print goes to stderr.

With `--recipe JSON` it serves `time_to_accuracy` instead: augmented batches, a momentum SGD
with a per-step cosine learning rate, and `val` commands between the slices.

`python -m benchmarks.worker overhead` instead measures the engine's own per-op costs.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from typing import Any


def _reply(out: Any, **msg: Any) -> None:
    out.write(json.dumps(msg) + "\n")
    out.flush()


def _rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> bool:
    """Restart the peak-RSS count (Linux ≥ 4.0), so data loading's peak doesn't hide training's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _set_library_threads(name: str, threads: int) -> dict[str, Any]:
    """Pin TF/torch thread pools (BLAS reads its environment variables) and report what holds."""
    info: dict[str, Any] = {"openblas_threads": _openblas_threads()}
    if name == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        info.update(tensorflow=tf.__version__, tf_intra_op_threads=threads,
                    tf_inter_op_threads=threads)
    elif name == "torch":
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(threads)
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    return info


def _openblas_threads() -> int | None:
    """The thread count NumPy's bundled OpenBLAS really uses, or None where it can't be asked."""
    import ctypes
    import glob

    import numpy as np

    libs = glob.glob(os.path.join(os.path.dirname(np.__file__) + ".libs", "libscipy_openblas*.so"))
    try:
        return int(ctypes.CDLL(libs[0]).scipy_openblas_get_num_threads64_())
    except (IndexError, OSError, AttributeError):
        return None


def serve(args: argparse.Namespace, out: Any) -> None:
    import numpy as np

    from tinygrad_mnist.data import MNISTError, load_mnist

    from .contenders import accuracy, epoch_order, initial_params, make_trainer, run_epoch

    info = _set_library_threads(args.contender, args.threads)
    try:
        data = load_mnist(args.data, val_size=0)
    except MNISTError as e:  # the one likely mistake: say it in a line, not a traceback
        sys.exit(f"no MNIST for the benchmark (pass --data DIR or set $TINYGRAD_MNIST_DATA): {e}")
    train_x, train_y = data.train_x[:args.limit], data.train_y[:args.limit]
    test_x, test_y = data.test_x, data.test_y
    load_peak = _peak_rss_mb()
    peak_reset = _reset_peak_rss()
    rss_before = _rss_mb()

    init = initial_params(args.sizes, args.seed)
    trainer = make_trainer(args.contender, init, args.lr)
    warm = epoch_order(args.seed, 0, len(train_x))[:args.warmup_steps * args.batch]
    run_epoch(trainer, train_x, train_y, warm, args.batch)  # traces tf.function, fills caches
    trainer.load(init)
    _reply(out, ready=True, numpy=np.__version__, **info)

    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "train":  # part `part` of `parts` of the epoch's batches
            order = epoch_order(args.seed, cmd["epoch"], len(train_x))
            bounds = np.linspace(0, -(-len(order) // args.batch), cmd["parts"] + 1).astype(int)
            lo, hi = bounds[cmd["part"]:cmd["part"] + 2] * args.batch
            seconds, steps = run_epoch(trainer, train_x, train_y, order[lo:hi], args.batch)
            _reply(out, seconds=seconds, steps=steps)
        elif cmd["cmd"] == "test":
            _reply(out, test_accuracy=accuracy(trainer, test_x, test_y))
        elif cmd["cmd"] == "quit":
            _reply(out, peak_rss_mb=_peak_rss_mb(), load_peak_rss_mb=load_peak,
                   rss_before_training_mb=rss_before, peak_reset=peak_reset)
            return


def serve_recipe(args: argparse.Namespace, out: Any) -> None:
    """Train the recipe's slices on command. Only the steps are timed: each slice's augmented
    batches are built before its clock starts (and their CRC32 returned, so the parent can
    check every contender saw the same bytes), and validation runs on its own command."""
    import zlib

    import numpy as np

    from tinygrad_mnist.data import MNISTError, load_mnist
    from tinygrad_mnist.optim import CosineLR

    from .contenders import accuracy, augmented_batches, initial_params, make_trainer

    r = json.loads(args.recipe)
    info = _set_library_threads(args.contender, args.threads) if args.threads else \
        {"openblas_threads": _openblas_threads(), **_library_versions(args.contender)}
    try:
        data = load_mnist(args.data, val_size=r["val_size"], seed=r["seed"])
    except MNISTError as e:
        sys.exit(f"no MNIST for the benchmark (pass --data DIR or set $TINYGRAD_MNIST_DATA): {e}")
    train_x, train_y = data.train_x[:args.limit], data.train_y[:args.limit]
    steps_per_epoch = -(-len(train_x) // r["batch"])
    schedule = CosineLR(r["lr"], r["epochs"])
    init = initial_params(r["sizes"], r["seed"])
    trainer = make_trainer(args.contender, init, r["lr"], momentum=r["momentum"],
                           nesterov=r["nesterov"], weight_decay=r["weight_decay"])
    augment = r.get("augment", "shift")  # recipes from before distortions shift only
    for xb, yb in augmented_batches(train_x, train_y, r["seed"], 0, r["batch"], r["max_shift"],
                                    0, args.warmup_steps, augment):
        trainer.step(xb, yb)  # traces tf.function, fills caches
    trainer.load(init)
    _reply(out, ready=True, numpy=np.__version__, train_examples=len(train_x),
           steps_per_epoch=steps_per_epoch, **info)

    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "train":  # part `part` of `parts` of the epoch's batches
            bounds = np.linspace(0, steps_per_epoch, cmd["parts"] + 1).astype(int)
            first, stop = (int(b) for b in bounds[cmd["part"]:cmd["part"] + 2])
            batches = augmented_batches(train_x, train_y, r["seed"], cmd["epoch"], r["batch"],
                                        r["max_shift"], first, stop, augment)
            start = time.perf_counter()
            for step, (xb, yb) in enumerate(batches, first):
                trainer.set_lr(schedule(cmd["epoch"] + step / steps_per_epoch))
                trainer.step(xb, yb)
            seconds = time.perf_counter() - start
            crc = 0
            for xb, yb in batches:
                crc = zlib.crc32(yb.data, zlib.crc32(xb.data, crc))
            _reply(out, seconds=seconds, steps=len(batches), crc32=crc)
        elif cmd["cmd"] == "val":
            _reply(out, val_accuracy=accuracy(trainer, data.val_x, data.val_y))
        elif cmd["cmd"] == "test":
            _reply(out, test_accuracy=accuracy(trainer, data.test_x, data.test_y))
        elif cmd["cmd"] == "quit":
            _reply(out, peak_rss_mb=_peak_rss_mb())
            return


def _library_versions(name: str) -> dict[str, str]:
    """TF's or torch's version (and torch's thread count), for a contender left at its
    library's default threads."""
    if name == "tensorflow":
        import tensorflow as tf

        return {"tensorflow": tf.__version__}
    if name == "torch":
        import torch

        return {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    return {}


def measure_overhead(chain: int = 100_000, number: int = 20_000, repeat: int = 5) -> dict[str, float]:
    """The engine's fixed cost per op (a 1-element add, timed many times) and per training step
    (a tiny MLP), and backward's per-node cost (a long chain of multiplies), next to NumPy's own
    cost for the same add and the same step."""
    import statistics
    import timeit

    import numpy as np

    from tinygrad_mnist import Tensor, no_grad

    a, b = Tensor(np.ones(1, np.float32), requires_grad=True), Tensor(np.ones(1, np.float32))

    def best_us(fn: Any) -> float:
        return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6

    recorded = best_us(lambda: a + b)
    with no_grad():
        unrecorded = best_us(lambda: a + b)
    raw = best_us(lambda: a.data + b.data)

    # A whole training step where BLAS time is nil (a 4-4-2 MLP on 2 examples): what is left is
    # the fixed cost per step, the engine's bookkeeping against the hand-written code's.
    from .contenders import initial_params, make_trainer

    tiny = initial_params([4, 4, 2], seed=0)
    x, y = np.random.default_rng(0).random((2, 4), dtype=np.float32), np.array([0, 1])
    steps, step_us = number // 4, {}
    for name in ("engine", "numpy"):
        trainer = make_trainer(name, tiny)
        step_us[name] = min(timeit.repeat(lambda t=trainer: t.step(x, y), number=steps,
                                          repeat=repeat)) / steps * 1e6

    build, backward = [], []
    c = Tensor(np.ones((), np.float32))
    for _ in range(3):
        start = time.perf_counter()
        y = x = Tensor(np.ones((), np.float32), requires_grad=True)
        for _ in range(chain):
            y = y * c
        build.append(time.perf_counter() - start)
        start = time.perf_counter()
        y.backward()
        backward.append(time.perf_counter() - start)
        assert x.grad is not None and x.grad.item() == 1.0
    return {"op_recorded_us": recorded, "op_no_grad_us": unrecorded, "numpy_add_us": raw,
            "tiny_step_engine_us": step_us["engine"], "tiny_step_numpy_us": step_us["numpy"],
            "chain_ops": chain, "chain_forward_s": statistics.median(build),
            "chain_backward_s": statistics.median(backward)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("contender", help="engine, numpy, tensorflow, torch; or overhead")
    p.add_argument("--sizes", type=lambda s: [int(n) for n in s.split(",")], default=[784, 128, 10])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="train on the first N examples only")
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--chain", type=int, default=100_000)
    p.add_argument("--data", default=None)
    p.add_argument("--recipe", default=None,
                   help="JSON training recipe: serve time_to_accuracy (--threads 0: library defaults)")
    args = p.parse_args(argv)
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever a library prints can't corrupt the replies
    if args.contender == "overhead":
        _reply(out, **measure_overhead(args.chain))
    elif args.recipe:
        serve_recipe(args, out)
    else:
        serve(args, out)


if __name__ == "__main__":
    main()
