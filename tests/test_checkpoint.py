"""Checkpoints: written atomically as plain arrays and JSON, read back exactly, and any file that
is not one (damaged, hand-edited, crafted, a decompression bomb) refused with a clear message,
never unpickled, and without allocating more than the model needs."""
import io
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from tinygrad_mnist.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tinygrad_mnist.config import TrainConfig, build_model, build_optimizer


def test_a_checkpoint_from_before_augmentation_loads_as_unshifted(tmp_path):
    path = _rewrite(_checkpoint_bytes(tmp_path), tmp_path / "old.npz",
                    lambda m: m["config"].pop("shift"))
    assert load_checkpoint(path).config.shift == 0


def test_a_checkpoint_from_before_distortions_loads_as_shifts_only(tmp_path):
    path = _rewrite(_checkpoint_bytes(tmp_path, TrainConfig(augment="elastic")),
                    tmp_path / "old.npz", lambda m: m["config"].pop("augment"))
    config = load_checkpoint(path).config
    assert config.augment == "shift" and config.shift == 2


@pytest.mark.parametrize("content", [b"", b"not a zip file", b"PK\x03\x04garbage"])
def test_bad_checkpoint_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="is not a tinygrad_mnist checkpoint"):
        load_checkpoint(path)


def test_npz_that_is_not_a_checkpoint_is_refused(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(CheckpointError, match="other.npz"):
        load_checkpoint(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_checkpoint(tmp_path / "missing.npz")


def _checkpoint_bytes(tmp_path, config=None):
    """A genuine checkpoint of an untrained model (no MNIST needed); returns its path."""
    config = config or TrainConfig(hidden=(8,), epochs=2)
    model = build_model(config)
    path = tmp_path / "real.npz"
    save_checkpoint(path, model, build_optimizer(config, model), config, 0, [])
    return path


def _rewrite(src, dst, meta_edit=None, members=None):
    """Copy the checkpoint `src` to `dst`, editing its metadata and replacing members."""
    with zipfile.ZipFile(src) as z:
        content = {name: z.read(name) for name in z.namelist()}
    if meta_edit is not None:
        meta = json.loads(str(np.load(io.BytesIO(content["meta.npy"]))))
        meta_edit(meta)
        buffer = io.BytesIO()
        np.save(buffer, np.array(json.dumps(meta)))
        content["meta.npy"] = buffer.getvalue()
    content.update(members or {})
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in content.items():
            z.writestr(name, data)
    return dst


def _npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)  # writing a hostile file, as an attacker would
    return buffer.getvalue()


PARTIAL = {"epoch": 1, "step": 3, "loss_sum": 1.5, "correct": 2, "seen": 12, "seconds": 0.1,
           "dropout_rng": []}  # a well-formed stopped epoch, for edits of its fields


# ------------------------------------------------- crafted checkpoints (issue 9 items 7, 8, 10)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("history"), "'history' must be a list of 0 rows"),
    (lambda m: m.update(epoch=None), "'epoch' must be an integer in [0, epochs], got None"),
    (lambda m: m.update(epoch=1, history="abc"), "'history' must be a list of 1 rows"),
    (lambda m: m.update(epoch=1, history=[{"epoch": 1}]), "'history' row 0 must map"),
    (lambda m: m.update(epoch=5), "'epoch' must be an integer in [0, epochs], got 5"),
    (lambda m: m.update(format="other"), "metadata format is 'other'"),
    (lambda m: m["config"].update(lr="abc"), "lr must be a finite number > 0"),
    (lambda m: m["config"].update(hidden="abc"), "'hidden' must be a list of integers"),
    (lambda m: m["config"].pop("seed"), "'config' must be an object with the keys"),
    (lambda m: m["config"].update(hidden=[100_000_000]), "79,500,000,010 parameters"),
    (lambda m: m.update(partial="x"), "'partial' must be an object with the keys"),
    (lambda m: m.update(partial={**PARTIAL, "epoch": 3}), "'partial' holds bad values"),
    (lambda m: m.update(partial={**PARTIAL, "seen": -1}), "'partial' holds bad values"),
    (lambda m: m.update(partial={**PARTIAL, "dropout_rng": [{"bit_generator": "MT19937"}]}),
     "state must be for a PCG64 RNG"),
])
def test_hand_edited_metadata_is_a_clear_error_at_load_time(tmp_path, edit, message):
    path = _rewrite(_checkpoint_bytes(tmp_path), tmp_path / "edited.npz", edit)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert message in str(error.value) and "is not a tinygrad_mnist checkpoint" in str(error.value)


@pytest.mark.parametrize("member, data, message", [
    ("model/layers.0.weight.npy", np.array([None] * 6272, dtype=object).reshape(784, 8),
     "holds object values, expected numbers (objects are never unpickled)"),
    ("model/layers.0.weight.npy", np.zeros((8, 784), np.float32),
     "has shape (8, 784), the model expects (784, 8)"),
    ("model/layers.0.bias.npy", np.array(["a"] * 8), "holds <U1 values, expected numbers"),
    ("model/extra.npy", np.zeros(3, np.float32), "unexpected ['model/extra.npy']"),
    ("meta.npy", np.zeros(3), "holds float64 values, expected text"),
    ("meta.npy", np.array("[" * 100_000 + "]" * 100_000), "maximum recursion depth exceeded"),
])
def test_crafted_members_are_refused_without_unpickling(tmp_path, member, data, message):
    path = _rewrite(_checkpoint_bytes(tmp_path), tmp_path / "crafted.npz",
                    members={member: _npy(data)})
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert message in str(error.value)


def test_random_bytes_and_a_lone_npy_are_not_checkpoints_and_never_mention_pickle(tmp_path):
    noise = tmp_path / "noise.npz"
    noise.write_bytes(np.random.default_rng(0).bytes(5000))
    lone = tmp_path / "lone.npz"
    np.save(lone.with_suffix(".npy"), np.zeros(3))
    lone.with_suffix(".npy").rename(lone)
    for path in (noise, lone):
        with pytest.raises(CheckpointError) as error:
            load_checkpoint(path)
        assert "is not a tinygrad_mnist checkpoint" in str(error.value)
        assert "pickle" not in str(error.value)


def test_a_decompression_bomb_is_refused_before_it_is_inflated(tmp_path):
    """A member deflated from 2 GB into a few MB: the zip header's size is checked against the
    model's shapes first, so loading stays far below 1 GB (measured in a fresh process)."""
    real, bomb = _checkpoint_bytes(tmp_path, TrainConfig(hidden=(32,))), tmp_path / "bomb.npz"
    target = "model/layers.0.weight.npy"
    with zipfile.ZipFile(real) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED,
                                                       compresslevel=1) as z:
        for name in src.namelist():
            if name != target:
                z.writestr(name, src.read(name))
        with z.open(target, "w") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "<f4", "fortran_order": False, "shape": (500_000_000,)})
            zeros = bytes(1 << 24)
            for _ in range(119):  # 2.0 GB of float32 zeros
                f.write(zeros)
    assert bomb.stat().st_size < 20e6
    code = ("import sys\n"
            "from tinygrad_mnist.checkpoint import CheckpointError, load_checkpoint\n"
            "try:\n    load_checkpoint(sys.argv[1])\nexcept CheckpointError as e:\n    print(e)\n"
            "status = open('/proc/self/status').read()  # VmHWM: this process's peak, in kB\n"
            "print(status.split('VmHWM:')[1].split()[0])\n")
    result = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True,
                            text=True, timeout=120, check=False)
    message, peak_kb = result.stdout.strip().splitlines()
    assert "is not a tinygrad_mnist checkpoint" in message and "bytes unpacked" in message, message
    assert int(peak_kb) < 300_000  # numpy and the package alone are about 60 MB
