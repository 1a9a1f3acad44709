"""The BLAS-floor benchmark: the floor step does a step's products, and the report holds every
model with the issue's reference figures."""
import json
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import floor
from benchmarks.train_speed import ROOT


def test_floor_step_runs_every_product_of_a_step(monkeypatch):
    """Count the products by their shapes: forward x@W per layer, backward x.T@g per layer and
    g@W.T for every layer but the first."""
    shapes = []

    class Recorder(np.ndarray):
        def __matmul__(self, other):
            shapes.append((self.shape, other.shape))
            return np.asarray(self) @ np.asarray(other)

    class RecordingRng:  # the floor's arrays come from default_rng(seed).random(...)
        def __init__(self, seed):
            self.rng = real_default_rng(seed)

        def random(self, size, dtype):
            return self.rng.random(size, dtype=dtype).view(Recorder)

    real_default_rng = np.random.default_rng
    monkeypatch.setattr(np.random, "default_rng", RecordingRng)
    floor.floor_step([784, 64, 32, 10], batch=16)()
    assert sorted(shapes) == sorted([
        ((16, 784), (784, 64)), ((16, 64), (64, 32)), ((16, 32), (32, 10)),  # forward
        ((32, 16), (16, 10)), ((64, 16), (16, 32)),
        ((784, 16), (16, 64)),  # weight gradients x.T @ g
        ((16, 10), (10, 32)), ((16, 32), (32, 64)),  # input gradients g @ W.T, not layer 1's
    ])


def test_quick_run_writes_the_table(tmp_path):
    result = floor.main(["--quick", "--models", "784-128-10,784-512-256-10", "--out", str(tmp_path)])
    for model in ("784-128-10", "784-512-256-10"):
        r = result["models"][model]
        assert len(r["ratio_per_round"]) == 3 and r["floor_us"] > 0 and r["engine_us"] > 0
        assert r["ratio"] == sorted(r["ratio_per_round"])[1]  # the median of the rounds
        assert r["augment_us"] > 0 and 0 < r["augment_share"]
    saved = json.loads((tmp_path / "floor.json").read_text())
    assert set(saved["models"]) == {"784-128-10", "784-512-256-10"} and saved["threads"] == 1
    table = (tmp_path / "floor.md").read_text()
    assert "| 784-128-10 |" in table and "1.54, aim ≤ 1.25" in table and "plain SGD" in table
    assert "augmentation ÷ engine step" in table


def test_bad_arguments():
    with pytest.raises(SystemExit):
        floor.parse_args(["--models", "784-10"])
    with pytest.raises(SystemExit):
        floor.parse_args(["--rounds", "0"])


def test_threads_flag_comes_before_numpy():
    """floor times in its own process: --threads works only if importing the benchmark did
    not load NumPy (OpenBLAS reads its thread count once, when it is loaded)."""
    code = "import sys, benchmarks.floor; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
