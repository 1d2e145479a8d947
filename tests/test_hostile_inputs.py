"""Hostile model and data files end with one clear line on stderr and exit status 1: never a traceback, never a
pickle loaded, never memory allocated for what a header merely claims.

Tests that must not allocate run the command line under a memory limit: this file, run as a program, is
script.py with its data segment capped at MEMORY_LIMIT (see the end of the file).
"""

import gzip
import json
import os
import re
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, assert_clean_failure, run_cli, write_fake_mnist

MEMORY_LIMIT = 2 << 30  # far above what a failing command needs, far below what the hostile files claim
TRAIN = ["--steps", "2", "--train-examples", "100", "--validation-examples", "10", "--hidden-units", "8",
         "--latent-dim", "2"]


def run_limited(*args):
    """script.py's command line in a subprocess whose memory is capped at MEMORY_LIMIT."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return run_cli(*args, program="tests/test_hostile_inputs.py", env={"PYTHONPATH": path, "CUDA_VISIBLE_DEVICES": ""})


# ---------------------------------------------------------------------------
# Checkpoints


def sample(model_dir, tmp_path, run=run_cli):
    return run("sample", "--model-path", model_dir, "--output-path", tmp_path / "samples.png")


@pytest.fixture
def model(small_model, tmp_path):
    """A copy of the small trained model, to damage."""
    return Path(shutil.copytree(small_model, tmp_path / "model"))


def checkpoint_of(model_dir):
    return model_dir / "checkpoint.npz"


def rewrite_members(path, edit):
    """Rewrite the zip at `path` with each member's bytes passed through edit(name, data); CRCs stay valid."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, edit(name, data))


def set_zip_field(path, member, local_offset, central_offset, value):
    """Overwrite a 2-byte field of `member` in both its local header and its central directory entry."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        local = archive.getinfo(member).header_offset
    central = next(match.start() for match in re.finditer(rb"PK\x01\x02", raw)
                   if raw[match.start() + 46 :].startswith(member.encode()))
    for offset in (local + local_offset, central + central_offset):
        raw[offset : offset + 2] = value.to_bytes(2, "little")
    path.write_bytes(bytes(raw))


def with_shape(npy, shape):
    """The .npy file `npy` with its header claiming `shape`; the header keeps its length."""
    start, end = npy.index(b"'shape'"), npy.index(b"\n")
    return npy[:start] + f"'shape': {shape}, }}".encode().ljust(end - start) + npy[end:]


def rewrite_arrays(path, change):
    """Rewrite the checkpoint at `path` with np.savez, its {name: array} passed through change()."""
    with np.load(path) as npz:
        arrays = {name: npz[name] for name in npz.files}
    change(arrays)
    np.savez(path, **arrays)


def test_flipped_bit_in_an_npy_header(model, tmp_path):
    """The header's length byte, 0x76 (118), becomes 0x36: NumPy once parsed a cut-off header (tokenize error)."""
    def flip(name, data):
        return data[:8] + bytes([data[8] ^ 0x40]) + data[9:] if name == "history.npy" else data

    rewrite_members(checkpoint_of(model), flip)
    assert_clean_failure(sample(model, tmp_path), 1, "member 'history.npy' has a damaged .npy header")


def test_unknown_compression_method(model, tmp_path):
    set_zip_field(checkpoint_of(model), "config.npy", 8, 10, 77)
    assert_clean_failure(sample(model, tmp_path), 1, "member 'config.npy' uses unsupported zip compression method 77")


def test_encrypted_member(model, tmp_path):
    set_zip_field(checkpoint_of(model), "config.npy", 6, 8, 0x1)
    assert_clean_failure(sample(model, tmp_path), 1, "member 'config.npy' is encrypted")


def test_header_claiming_terabytes_is_rejected_without_allocating(model, tmp_path):
    def claim(name, data):
        return with_shape(data, (10**12,)) if name == "history.npy" else data

    rewrite_members(checkpoint_of(model), claim)
    result = sample(model, tmp_path, run=run_limited)
    assert_clean_failure(result, 1, "its header declares shape (1000000000000,) of float64, 8000000000000 bytes")


class Unpickled:
    """Loading this pickle would create the file `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


def test_pickles_in_a_checkpoint_are_never_loaded(model, tmp_path):
    marker = tmp_path / "unpickled"
    rewrite_arrays(checkpoint_of(model), lambda arrays: arrays.update(elapsed=np.array([Unpickled(marker)])))
    assert_clean_failure(sample(model, tmp_path), 1, "member 'elapsed.npy' holds Python objects")
    assert not marker.exists()


def test_checkpoint_without_history(model, tmp_path):
    rewrite_arrays(checkpoint_of(model), lambda arrays: arrays.pop("history"))
    assert_clean_failure(sample(model, tmp_path), 1, "checkpoint.npz: no history array")


def change_config(model_dir, change):
    def edit(arrays):
        config = json.loads(str(arrays["config"]))
        change(config)
        arrays["config"] = np.array(json.dumps(config))

    rewrite_arrays(checkpoint_of(model_dir), edit)


@pytest.mark.parametrize("group, setting, value, message", [
    ("model_config", "loss", "bogus", "--loss"),
    ("model_config", "hidden_units", "40", "--hidden-units must be an integer, got '40'"),
    ("training", "data_dir", 5, "--data-dir must be a str, got 5"),
])
def test_checkpoint_with_a_bad_setting(model, tmp_path, group, setting, value, message):
    change_config(model, lambda config: config[group].update({setting: value}))
    assert_clean_failure(sample(model, tmp_path), 1, f"checkpoint.npz: invalid configuration: {message}")


def test_deeply_nested_configuration(model, tmp_path):
    deep = "[" * 100000 + "]" * 100000
    rewrite_arrays(checkpoint_of(model), lambda arrays: arrays.update(config=np.array(deep)))
    assert_clean_failure(sample(model, tmp_path), 1, "checkpoint.npz is truncated or corrupt (maximum recursion")


# ---------------------------------------------------------------------------
# Data files


def train(folder, tmp_path, run=run_cli):
    return run("train", "--model-path", tmp_path / "model", "--data-dir", folder, *TRAIN)


def gzip_bomb(path, count, inflated=4 << 30):
    """An IDX images file whose header claims `count` 28x28 images, followed by `inflated` bytes of zeros.

    Written as many gzip members of 16 MiB of zeros each, so that it takes a few MiB and a moment to write.
    """
    header = (2051).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (count, 28, 28))
    zeros = gzip.compress(bytes(16 << 20))
    with open(path, "wb") as handle:
        handle.write(gzip.compress(header))
        for _ in range(inflated // (16 << 20)):
            handle.write(zeros)


@pytest.mark.parametrize("count, message", [
    (60000, "holds more data than the 47040016 bytes its header (60000, 28, 28) needs"),
    (2**32 - 1, "its header claims (4294967295, 28, 28), 3367254359280 bytes, more than the 1073741824"),
])
def test_gzip_bomb_is_read_no_further_than_its_header_needs(tmp_path, count, message):
    folder = write_fake_mnist(tmp_path / "data")
    gzip_bomb(folder / "train-images-idx3-ubyte.gz", count)
    assert_clean_failure(train(folder, tmp_path, run=run_limited), 1, message)
    assert not (tmp_path / "model" / "checkpoint.npz").exists()


def write_npz_mnist(folder, **changes):
    """A folder holding mnist.npz (x_train, y_train, x_test, y_test), with arrays replaced by `changes`."""
    folder.mkdir()
    arrays = dict(x_train=np.zeros((5100, 28, 28), np.uint8), y_train=np.zeros(5100, np.uint8),
                  x_test=np.zeros((10, 28, 28), np.uint8), y_test=np.zeros(10, np.uint8))
    np.savez(folder / "mnist.npz", **{**arrays, **changes})
    return folder


def test_pickles_in_mnist_npz_are_never_loaded(tmp_path):
    marker = tmp_path / "unpickled"
    folder = write_npz_mnist(tmp_path / "data", y_test=np.array([Unpickled(marker)] * 10))
    assert_clean_failure(train(folder, tmp_path), 1, "member 'y_test.npy' holds Python objects")
    assert not marker.exists()


BAD_PIXELS = {"strings": ("U1", "x"), "nan": (np.float32, np.nan), "uint16": (np.uint16, 1000), "negative": (np.int16, -1)}


def bad_pixels(kind):
    """Training images of zeros but one pixel, in the dtype and with the value that BAD_PIXELS gives `kind`."""
    dtype, value = BAD_PIXELS[kind]
    images = np.zeros((5100, 28, 28), dtype)
    images[7, 3, 3] = value
    return images


@pytest.mark.parametrize("kind, message", [
    ("strings", "training images have dtype <U1; expected integers 0..255"),
    ("nan", "training images have dtype float32; expected integers 0..255"),
    ("uint16", "training images range from 0 to 1000; expected integers 0..255"),
    ("negative", "training images range from -1 to 0; expected integers 0..255"),
])
def test_mnist_npz_with_pixels_that_are_not_bytes(tmp_path, kind, message):
    folder = write_npz_mnist(tmp_path / "data", x_train=bad_pixels(kind))
    result = train(folder, tmp_path)
    assert_clean_failure(result, 1, f"{folder / 'mnist.npz'} {message}")
    assert not (tmp_path / "model" / "checkpoint.npz").exists()


if __name__ == "__main__":  # run by run_limited: script.py with its memory capped
    import resource

    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_LIMIT, MEMORY_LIMIT))
    import script

    sys.exit(script.main())
