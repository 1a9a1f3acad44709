"""`python -m tinygrad_mnist` is the `tinygrad-mnist` command: same help, errors and exit codes."""
import os
import subprocess
import sys


def run_module(*args: str, cwd=None, module: str = "tinygrad_mnist") -> subprocess.CompletedProcess:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=120)


def test_same_output_as_the_console_scripts_entry_point():
    """setup.cfg's console script is tinygrad_mnist.cli:main; both must print the same."""
    for args in (["--help"], ["train", "--help"], ["train", "--epochs", "-1"]):
        ours, theirs = run_module(*args), run_module(*args, module="tinygrad_mnist.cli")
        assert (ours.returncode, ours.stdout, ours.stderr) == \
            (theirs.returncode, theirs.stdout, theirs.stderr), args


def test_help_lists_the_subcommands():
    result = run_module("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: tinygrad-mnist")
    for command in ("train", "eval", "predict", "graph"):
        assert command in result.stdout


def test_a_missing_checkpoint_is_one_line_and_exit_1(tmp_path):
    result = run_module("eval", str(tmp_path / "nope.npz"), cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinygrad-mnist eval: error: ")
    assert "nope.npz" in lines[0]
    assert "Traceback" not in result.stderr


def test_a_bad_flag_exits_2_like_the_console_script():
    result = run_module("train", "--epochs", "0")
    assert result.returncode == 2
    assert "expected a positive integer, got '0'" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_command_is_a_usage_error():
    result = run_module()
    assert result.returncode == 2
    assert "usage: tinygrad-mnist" in result.stderr
