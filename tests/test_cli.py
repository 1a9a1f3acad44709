"""The `tinygrad-mnist` command, run as a user runs it: in a subprocess."""
import io
import json
import os
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from tinygrad_mnist.checkpoint import load_checkpoint
from tinygrad_mnist.data import load_mnist

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
    assert "interrupted" in out and ("continue with --resume" in out or "--resume continues" in out)
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


# --------------------------------------------------------------- issue 9: nothing is lost


def one_line_error(result, *texts):
    """The CLI's promise for a user mistake: exit 1, one line on stderr, no traceback."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for text in texts:
        assert text in result.stderr


def test_predict_never_writes_over_a_file_it_did_not_create(trained, mnist_dir, tmp_path):
    run, _ = trained
    ckpt = run / "checkpoint.npz"
    before = ckpt.read_bytes()
    one_line_error(cli("predict", ckpt, "--out", ckpt, "--data-dir", mnist_dir),
                   "expected a file name ending in .png")
    disguised = tmp_path / "looks_like_a_picture.png"  # a checkpoint under a picture's name
    disguised.write_bytes(before)
    one_line_error(cli("predict", ckpt, "--out", disguised, "--overwrite", "--data-dir", mnist_dir),
                   "holds a npz file, not png", "even with --overwrite")
    assert ckpt.read_bytes() == before and disguised.read_bytes() == before
    old = tmp_path / "old.png"
    assert cli("predict", ckpt, "--out", old, "--data-dir", mnist_dir).returncode == 0
    first = old.read_bytes()
    one_line_error(cli("predict", ckpt, "--out", old, "--start", 5, "--data-dir", mnist_dir),
                   "already exists", "--overwrite")
    assert old.read_bytes() == first
    replaced = cli("predict", ckpt, "--out", old, "--start", 5, "--overwrite", "--data-dir", mnist_dir)
    assert replaced.returncode == 0, replaced.stderr
    assert old.read_bytes() != first and old.read_bytes().startswith(PNG)


@pytest.mark.parametrize("name, magic", [("p.jpg", b"\xff\xd8\xff"), ("p.JPEG", b"\xff\xd8\xff"),
                                         ("p.svg", b"<?xml"), ("p.pdf", b"%PDF"),
                                         ("p.png", PNG)])
def test_predict_out_extension_picks_the_format(trained, mnist_dir, tmp_path, name, magic):
    run, _ = trained
    result = cli("predict", run / "checkpoint.npz", "--count", 3, "--out", tmp_path / name,
                 "--data-dir", mnist_dir)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / name).read_bytes().startswith(magic)


def test_predict_refuses_an_unknown_extension_and_too_many_digits(trained, tmp_path):
    run, _ = trained
    one_line_error(cli("predict", run / "checkpoint.npz", "--out", tmp_path / "p.txt"),
                   "--out", "p.txt", ".png, .jpg, .jpeg, .svg, .pdf")
    too_many = cli("predict", run / "checkpoint.npz", "--count", 101)
    assert too_many.returncode == 2 and "argument --count: expected an integer from 1 to 100" \
        in too_many.stderr
    assert not list(tmp_path.iterdir())


def test_graph_never_overwrites_the_users_own_dot_source(mnist_dir, tmp_path, dot_binary):
    mine = tmp_path / "g" / "mygraph.gv"
    mine.parent.mkdir()
    mine.write_text("digraph mine { a -> b }\n")
    one_line_error(cli("graph", "--out", tmp_path / "g" / "mygraph.svg", "--data-dir", mnist_dir),
                   f"{mine} already exists (graph writes the DOT source of", "--overwrite")
    assert mine.read_text() == "digraph mine { a -> b }\n"
    assert not (tmp_path / "g" / "mygraph.svg").exists()
    picture = tmp_path / "g" / "picture.gv"  # not DOT source: refused even with --overwrite
    picture.write_bytes(PNG + b"rest")
    one_line_error(cli("graph", "--out", tmp_path / "g" / "picture.svg", "--overwrite",
                       "--data-dir", mnist_dir), "holds a png file, not dot (graph writes the DOT")
    assert picture.read_bytes() == PNG + b"rest"
    one_line_error(cli("graph", "--out", tmp_path / "g" / "x.jpg", "--data-dir", mnist_dir),
                   "expected a file name ending in .png, .svg, .pdf, .gv, .dot")


def test_graph_refuses_a_batch_larger_than_the_test_set(mnist_dir, tmp_path):
    one_line_error(cli("graph", "--batch-size", 100000, "--out", tmp_path / "g.svg",
                       "--data-dir", mnist_dir),
                   "--batch-size 100000 is larger than the test set (10000 digits)")
    assert not list(tmp_path.iterdir())


SMALL_RUN = ["--hidden", "16", "--train-limit", 2000, "--val-size", 500, "--no-progress",
             "--no-plots"]


@pytest.mark.parametrize("name", ["metrics.json", "metrics.csv", "summary.json",
                                  "interrupted.npz", "checkpoint.npz", "predictions.png"])
def test_train_refuses_a_run_dir_holding_any_run_file(mnist_dir, tmp_path, name):
    run = tmp_path / "run"
    run.mkdir()
    (run / name).write_bytes(b"the user's")
    result = cli("train", "--epochs", 1, *SMALL_RUN, "--run-dir", run, "--data-dir", mnist_dir)
    one_line_error(result, name, "--overwrite")
    can_resume = name in ("checkpoint.npz", "interrupted.npz")  # offered only when it can work
    assert ("--resume" in result.stderr) == can_resume
    assert [p.name for p in run.iterdir()] == [name] and (run / name).read_bytes() == b"the user's"


def test_train_overwrite_starts_again_and_removes_the_old_runs_files(mnist_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "interrupted.npz").write_bytes(b"old")
    (run / "notes.txt").write_text("mine")
    stale = run / ".checkpoint.npz.0123456789ab.tmp"  # left by a run killed with SIGKILL
    stale.write_bytes(b"half")
    result = cli("train", "--epochs", 1, *SMALL_RUN, "--run-dir", run, "--data-dir", mnist_dir,
                 "--overwrite")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.npz", "metrics.csv",
                                                     "metrics.json", "notes.txt", "summary.json"]


def test_failed_data_load_leaves_no_run_dir(tmp_path):
    run = tmp_path / "run"
    one_line_error(cli("train", "--data-dir", tmp_path / "nothing", "--run-dir", run),
                   str(tmp_path / "nothing"))
    assert not run.exists()


def test_resume_refuses_changed_settings_and_explains_new_epochs(mnist_dir, tmp_path):
    run = tmp_path / "run"
    assert cli("train", "--epochs", 2, *SMALL_RUN, "--run-dir", run, "--data-dir",
               mnist_dir).returncode == 0
    before = (run / "checkpoint.npz").read_bytes()
    changed = cli("train", "--resume", "--lr", 0.5, "--hidden", "16", "--dropout", 0.1,
                  "--run-dir", run, "--data-dir", mnist_dir)
    one_line_error(changed, "--lr 0.5 (the checkpoint has 0.1)", "--dropout 0.1 (the checkpoint "
                   "has 0.0)", "Only --epochs may change")
    assert "--hidden" not in changed.stderr  # the same as the checkpoint's: not a change
    one_line_error(cli("train", "--resume", "--epochs", 1, "--run-dir", run, "--data-dir",
                       mnist_dir), "--epochs 1 is fewer than the 2 epochs")
    assert (run / "checkpoint.npz").read_bytes() == before
    longer = cli("train", "--resume", "--epochs", 3, "--no-progress", "--no-plots", "--run-dir",
                 run, "--data-dir", mnist_dir)
    assert longer.returncode == 0, longer.stderr
    assert ("--epochs 3 differs from the checkpoint's 2: the cosine learning-rate schedule is "
            "recomputed for 3 epochs, so epoch 3 starts at lr 0.025 (the 2-epoch schedule is at "
            "0 there)") in longer.stdout
    assert load_checkpoint(run / "checkpoint.npz").epoch == 3


@pytest.mark.parametrize("args, message", [
    (["train", "--seed", "-1"], "argument --seed: expected a non-negative integer, got '-1'"),
    (["train", "--lr", "nan"], "argument --lr: expected a finite number > 0, got 'nan'"),
    (["train", "--lr", "inf"], "argument --lr: expected a finite number > 0, got 'inf'"),
    (["train", "--lr", "0"], "argument --lr: expected a finite number > 0"),
    (["train", "--momentum", "nan"], "argument --momentum: expected a finite number in [0, 1)"),
    (["train", "--momentum", "-0.5"], "argument --momentum: expected a finite number in [0, 1)"),
    (["train", "--weight-decay", "nan"], "argument --weight-decay: expected a finite number >= 0"),
    (["train", "--weight-decay=-1e-4"], "argument --weight-decay: expected a finite number"),
    (["train", "--dropout", "1"], "argument --dropout: expected a finite number in [0, 1)"),
    (["train", "--hidden", "512,,256"], "argument --hidden: expected comma-separated positive"),
    (["train", "--val-size", "60000"], "argument --val-size: expected an integer from 0 to 59999"),
    (["train", "--data-dir", ""], "argument --data-dir: expected a directory, got an empty string"),
    (["graph", "--data-dir", " "], "argument --data-dir: expected a directory"),
    (["train", "--resume", "--overwrite"], "argument --overwrite: not allowed with argument --resume"),
    (["predict", "x.npz", "--start", "-1"], "argument --start: expected a non-negative integer"),
])
def test_bad_numbers_are_refused_at_parse_time_naming_the_flag(args, message, tmp_path):
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())  # nothing written, no run dir made


def test_a_model_too_big_for_memory_is_refused_up_front(tmp_path):
    result = cli("train", "--hidden", 100000000, "--run-dir", tmp_path / "run")
    one_line_error(result, "784-100000000-10 has 79,500,000,010 parameters", "Choose smaller "
                   "--hidden sizes")
    assert not (tmp_path / "run").exists()


def test_divergence_is_one_true_line_without_numpy_warnings(mnist_dir, tmp_path):
    result = cli("train", "--epochs", 2, "--lr", 1e6, *SMALL_RUN, "--run-dir", tmp_path / "run",
                 "--data-dir", mnist_dir)
    one_line_error(result, "at epoch 1, step", "no epoch was completed, so there is no "
                   "checkpoint.npz to --resume", "try a smaller --lr")
    assert "Warning" not in result.stderr


def test_a_full_disk_names_the_file_it_could_not_write(trained, mnist_dir, tmp_path):
    resource = pytest.importorskip("resource")  # POSIX: cap the file size the process may write

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG, not a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))

    run, _ = trained
    out = tmp_path / "digits.png"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "tinygrad_mnist.cli", "predict",
                             str(run / "checkpoint.npz"), "--out", str(out), "--data-dir",
                             str(mnist_dir)], capture_output=True, text=True, env=env,
                            preexec_fn=small_files, timeout=300, check=False)
    one_line_error(result, f"cannot write {out}: File too large")
    assert list(tmp_path.iterdir()) == []  # no half-written picture, no temp file


def test_sigterm_saves_like_ctrl_c_and_exits_143(mnist_dir, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "tinygrad_mnist.cli", "train", "--epochs", "50", "--hidden",
            "16", "--train-limit", 20000, "--batch-size", 32, "--val-size", 500, "--no-progress",
            "--no-plots", "--run-dir", run, "--data-dir", mnist_dir]
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:  # epoch 1 (625 steps) starts: `kill` it there
        if line.startswith("training MLP"):
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip() == "tinygrad-mnist train: stopped by SIGTERM"
    assert "interrupted during epoch 1 after step" in out and "no epoch was completed yet" in out
    assert "--resume continues from step" in out
    partial = load_checkpoint(run / "interrupted.npz")
    assert partial.epoch == 0 and partial.partial.epoch == 1
    assert sorted(p.name for p in run.iterdir()) == ["interrupted.npz"]  # and no temp file
    again = cli("train", "--resume", "--epochs", 1, "--no-progress", "--no-plots", "--run-dir",
                run, "--data-dir", mnist_dir)
    assert again.returncode == 0, again.stderr
    assert f"in epoch 1 after step {partial.partial.step} of 1" in again.stdout
    assert load_checkpoint(run / "checkpoint.npz").epoch == 1
    assert not (run / "interrupted.npz").exists()


def test_resume_from_hand_edited_metadata_fails_before_training(trained, mnist_dir, tmp_path):
    run, _ = trained
    with zipfile.ZipFile(run / "checkpoint.npz") as z:
        content = {name: z.read(name) for name in z.namelist()}
    meta = json.loads(str(np.load(io.BytesIO(content["meta.npy"]))))
    meta["history"] = "abc"
    buffer = io.BytesIO()
    np.save(buffer, np.array(json.dumps(meta)))
    content["meta.npy"] = buffer.getvalue()
    edited = tmp_path / "run"
    edited.mkdir()
    with zipfile.ZipFile(edited / "checkpoint.npz", "w") as z:
        for name, data in content.items():
            z.writestr(name, data)
    for args in (["train", "--resume", "--epochs", 2, "--run-dir", edited],
                 ["eval", edited / "checkpoint.npz"]):
        result = cli(*args, "--data-dir", mnist_dir)
        one_line_error(result, "is not a tinygrad_mnist checkpoint", "'history' must be a list of "
                       "1 rows")
        assert "epoch 2" not in result.stdout


def test_a_preset_sets_the_settings_and_flags_beside_it_win(tmp_path, mnist_dir):
    run = tmp_path / "run"
    result = cli("train", "--preset", "quick", "--epochs", 1, "--train-limit", 2000, "--val-size",
                 500, "--no-progress", "--no-plots", "--run-dir", run, "--data-dir", mnist_dir)
    assert result.returncode == 0, result.stderr
    config = load_checkpoint(run / "checkpoint.npz").config
    assert (config.hidden, config.shift, config.augment, config.epochs) == ((256, 128), 1, "shift", 1)
    bad = cli("train", "--preset", "fastest")
    assert bad.returncode == 2 and "invalid choice: 'fastest'" in bad.stderr
