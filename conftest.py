"""Shared test helpers: the fake-MNIST writer, the command-line runner and small trained models.

MNIST is read from $MNIST_DATA_DIR (set by .ci/run) or Keras's cache/download.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import utils

ROOT = Path(__file__).resolve().parent
TINY_SETTINGS = dict(steps=20, train_examples=300, validation_examples=50, hidden_units=40, latent_dim=10,
                     validation_interval=10)


def command(*args, program="script.py"):
    """The argv that runs `program` of this project with `args`."""
    return [sys.executable, str(ROOT / program), *map(str, args)]


def run_cli(*args, program="script.py", env=None, cwd=None, timeout=600):
    """Run a program of this project in a subprocess, as a user would; returns the CompletedProcess (text mode)."""
    return subprocess.run(command(*args, program=program), capture_output=True, text=True, timeout=timeout,
                          cwd=cwd or ROOT, env={**os.environ, **(env or {})})


def assert_clean_failure(result, status, message):
    """The process ended with `status` and one line on stderr that contains `message`, and no traceback."""
    assert result.returncode == status, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0], lines[0]


def snapshot(folder):
    """{relative path: sha256} of every file under `folder`."""
    folder = Path(folder)
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def write_fake_mnist(folder, train=6000, test=20):
    """Four IDX files whose every image is filled with its own index (mod 256), so splits can be checked."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", train), ("t10k", test)):
        images = np.broadcast_to((np.arange(count) % 256).astype(np.uint8)[:, None, None], (count, 28, 28))
        utils.write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        utils.write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10)
    return folder


def tiny_config(model="vae", **overrides):
    """A RunConfig small enough to train in seconds: 300 training images, 40 hidden units, 20 steps."""
    import func

    return func.configure(model, **{**TINY_SETTINGS, **overrides})


@pytest.fixture(scope="session")
def small_model(tmp_path_factory):
    """A tiny trained LWTA model, shared read-only by the tests (copy it before damaging it)."""
    import func

    folder = tmp_path_factory.mktemp("small_model") / "lwta"
    func.train(tiny_config(layer_structure="lwta"), folder, progress=False)
    return folder
