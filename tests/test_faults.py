"""Fault injection: a small seeded run is stopped with SIGINT, SIGTERM and SIGKILL at random
moments, and resumed each time. Whatever the moment, every .npz left in the run dir loads,
the next run leaves no temporary file, and the weights at the end are bitwise those of a run
that was never interrupted.
"""
import os
import signal
import subprocess
import sys
import time

import numpy as np

from tinygrad_mnist.checkpoint import load_checkpoint

RUN = ["--epochs", 12, "--hidden", 8, "--train-limit", 10000, "--batch-size", 50,
       "--val-size", 300, "--seed", 3, "--no-progress", "--no-plots"]
TRIALS = 21  # seven of each signal
SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL]


def start(run_dir, mnist_dir, *extra):
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "tinygrad_mnist.cli", "train", *RUN, "--run-dir", run_dir,
            "--data-dir", mnist_dir, *extra]
    return subprocess.Popen(list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def continue_args(run_dir):
    """What a user does next: resume if anything was saved, else start again."""
    saved = (run_dir / "checkpoint.npz").exists() or (run_dir / "interrupted.npz").exists()
    return ["--resume"] if saved else ["--overwrite"]


def temp_files(run_dir):
    return [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")] if run_dir.exists() \
        else []


def final_state(run_dir):
    ckpt = load_checkpoint(run_dir / "checkpoint.npz")
    numbers = [{k: v for k, v in row.items() if k != "seconds"} for row in ckpt.history]
    return ckpt.model.state_dict(), ckpt.optimizer_state, numbers


def timed_lines(proc):
    """Each stdout line of `proc` with the moment it arrived."""
    return [(time.monotonic(), line) for line in proc.stdout]


def test_signals_at_random_moments_never_lose_or_change_anything(mnist_dir, tmp_path):
    began = time.monotonic()
    reference = start(tmp_path / "straight", mnist_dir)
    lines = timed_lines(reference)
    assert reference.wait(timeout=120) == 0, reference.stderr.read()
    # this machine's pace, so that the signals land at every phase of a run: start-up, steps,
    # validation, saving (each trial makes about half an epoch of progress)
    startup = next(t for t, line in lines if line.startswith("training MLP")) - began
    epoch_ends = [t for t, line in lines if line.startswith("epoch ")]
    epoch = float(np.median(np.diff(epoch_ends)))

    run, rng = tmp_path / "run", np.random.default_rng(2026)
    outcomes = []
    for trial in range(TRIALS):
        signum = SIGNALS[trial % 3]
        proc, started = start(run, mnist_dir, *continue_args(run)), False
        if rng.random() < 0.25:  # now and then while it starts up (imports, data loading)
            time.sleep(rng.uniform(0, 1.2 * startup))
        else:  # mostly while it trains, validates and saves
            for line in proc.stdout:
                if line.startswith("training MLP"):
                    started = True
                    break
            time.sleep(rng.uniform(0, 1.2 * epoch))
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
        started = started or "training MLP" in out  # then it has removed older temp files
        outcomes.append((signal.Signals(signum).name, proc.returncode, out.strip()[-60:]))
        # finished before the signal (0), stopped cleanly (130, 143), or killed by the signal
        # itself before Python could handle it (negative: SIGKILL, or while starting up)
        assert proc.returncode in (0, 130, 143, -signum), (trial, proc.returncode, err)
        if proc.returncode in (130, 143):
            assert "Traceback" not in err, err
        if started and proc.returncode != -signal.SIGKILL:  # and a handled stop its own ones
            assert temp_files(run) == [], (trial, proc.returncode)
        for npz in run.glob("*.npz") if run.exists() else []:
            load_checkpoint(npz)  # raises if a file was left half-written

    finish = start(run, mnist_dir, *continue_args(run))
    out, err = finish.communicate(timeout=120)
    assert finish.returncode == 0, err
    assert temp_files(run) == [] and not (run / "interrupted.npz").exists()
    print(*outcomes, sep="\n")
    assert {code for _, code, _ in outcomes} != {0}, "no signal landed while the run was going"
    weights, optim, numbers = final_state(run)
    weights_0, optim_0, numbers_0 = final_state(tmp_path / "straight")
    assert numbers == numbers_0
    assert weights.keys() == weights_0.keys() and optim.keys() == optim_0.keys()
    for k in weights:
        assert np.array_equal(weights[k], weights_0[k]), k
    for k in optim:
        assert np.array_equal(optim[k], optim_0[k]), k
