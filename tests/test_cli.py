"""The `tinygrad-mnist` command, run as a user runs it: in a subprocess."""
import json
import os
import signal
import subprocess
import sys

import pytest

from tinygrad_mnist.data import load_mnist
from tinygrad_mnist.train import load_checkpoint

PNG = b"\x89PNG\r\n\x1a\n"


def cli(*args, env_extra=None, cwd=None, timeout=300):
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "tinygrad_mnist.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def trained(mnist_dir, tmp_path_factory):
    """One small real training run through the CLI, shared by the tests that read it."""
    run = tmp_path_factory.mktemp("run")
    result = cli("train", "--epochs", 1, "--hidden", "32", "--train-limit", 3000,
                 "--val-size", 1000, "--no-progress", "--run-dir", run, "--data-dir", mnist_dir)
    assert result.returncode == 0, result.stderr
    return run, result


@pytest.mark.parametrize("command", ["train", "eval", "predict", "graph"])
def test_every_subcommand_has_help(command):
    result = cli(command, "--help")
    assert result.returncode == 0
    assert "usage: tinygrad-mnist " + command in result.stdout
    assert "--data-dir" in result.stdout


def test_train_writes_checkpoint_metrics_and_pictures(trained):
    run, result = trained
    assert "epoch 1/1" in result.stdout and "test accuracy" in result.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_acc"] > 0.7  # 3000 examples, one epoch, 784-32-10 (measured 0.79)
    assert f"{100 * summary['test_acc']:.2f}%" in result.stdout
    assert load_checkpoint(run / "checkpoint.npz").config.hidden == (32,)
    for name in ["learning_curves", "predictions", "confusion_matrix", "confident_mistakes",
                 "first_layer_weights"]:
        assert (run / f"{name}.png").read_bytes().startswith(PNG)


def test_eval_reports_the_accuracy_train_measured(trained, mnist_dir):
    run, _ = trained
    result = cli("eval", run / "checkpoint.npz", "--data-dir", mnist_dir)
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert f"test       accuracy {100 * summary['test_acc']:.2f}%" in result.stdout
    assert "validation accuracy" in result.stdout


def test_predict_prints_and_plots_digits_with_true_labels(trained, mnist_dir, tmp_path):
    run, _ = trained
    out = tmp_path / "digits.png"
    result = cli("predict", run / "checkpoint.npz", "--count", 5, "--start", 0, "--out", out,
                 "--data-dir", mnist_dir)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("test digit")]
    true_labels = load_mnist(mnist_dir, val_size=0).test_y[:5]
    assert len(lines) == 5
    assert [int(line.split("true ")[1].split()[0]) for line in lines] == list(true_labels)
    assert out.read_bytes().startswith(PNG)


def test_graph_renders_the_mlp_loss(mnist_dir, tmp_path, dot_binary):
    out = tmp_path / "mlp.svg"
    result = cli("graph", "--out", out, "--data-dir", mnist_dir)
    assert result.returncode == 0, result.stderr
    svg = out.read_text()
    assert "<svg" in svg and "Affine" in svg and "Linear(784→16)" in svg
    assert (tmp_path / "mlp.gv").exists()


def test_ctrl_c_exits_cleanly_and_resume_finishes(mnist_dir, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "tinygrad_mnist.cli", "train", "--epochs", "50", "--hidden",
            "16", "--train-limit", 2000, "--val-size", 500, "--no-progress", "--no-plots",
            "--run-dir", run, "--data-dir", mnist_dir]
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:  # wait until one epoch is saved, then press Ctrl-C
        if line.startswith("epoch 1/50"):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert "interrupted" in out and ("continue with --resume" in out or "--resume restarts" in out)
    saved = load_checkpoint(run / "checkpoint.npz").epoch
    assert saved >= 1
    result = cli("train", "--epochs", saved + 1, "--hidden", "16", "--train-limit", 2000,
                 "--val-size", 500, "--no-progress", "--no-plots", "--run-dir", run,
                 "--data-dir", mnist_dir, "--resume")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("args, message", [
    (["train", "--epochs", "0"], "expected a positive integer, got '0'"),
    (["train", "--hidden", "12,x"], "expected comma-separated positive layer sizes"),
    (["train", "--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
    (["predict"], "the following arguments are required: checkpoint"),
    (["fly"], "invalid choice: 'fly'"),
])
def test_bad_flags_say_what_is_wrong(args, message):
    result = cli(*args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_missing_and_broken_files_are_one_clear_line(tmp_path):
    missing = cli("eval", tmp_path / "nope.npz")
    broken_file = tmp_path / "broken.npz"
    broken_file.write_bytes(b"not a checkpoint")
    broken = cli("predict", broken_file)
    no_data = cli("train", "--data-dir", tmp_path / "empty", "--run-dir", tmp_path / "run")
    for result, text in [(missing, "checkpoint not found"),
                         (broken, "is not a tinygrad_mnist checkpoint"),
                         (no_data, str(tmp_path / "empty"))]:
        assert result.returncode == 1
        assert text in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_existing_run_dir_needs_resume(trained, mnist_dir):
    run, _ = trained
    before = (run / "checkpoint.npz").read_bytes()
    result = cli("train", "--run-dir", run, "--data-dir", mnist_dir)
    assert result.returncode == 1 and "--resume" in result.stderr
    assert (run / "checkpoint.npz").read_bytes() == before
