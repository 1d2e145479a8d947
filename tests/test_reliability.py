"""User mistakes give one clear line and change nothing; interrupted runs resume exactly.

Every case runs script.py in a subprocess, as a user would, and checks the exit
status, the message, the absence of a traceback and the files before and after.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import func
from conftest import ROOT, assert_clean_failure, command, run_cli, snapshot, tiny_config, write_fake_mnist
from fileio import atomic
from training import checkpoint, lock
from training.loop import Trainer

SMALL = ["--train-examples", "300", "--validation-examples", "50", "--hidden-units", "40", "--latent-dim", "10"]


@pytest.fixture
def model_dir(small_model):
    """conftest's small trained LWTA model (20 steps), shared read-only: each test copies it before damaging it."""
    return small_model


def copy_model(model_dir, tmp_path):
    return Path(shutil.copytree(model_dir, tmp_path / "copy"))


def model_files(folder):
    """snapshot() of a model directory but its lock file, which a training command (even one that then fails on
    a user mistake) takes and marks with its process id."""
    return {name: digest for name, digest in snapshot(folder).items() if name != lock.LOCK_FILE}


# ---------------------------------------------------------------------------
# Model directories


def test_missing_model_directory(tmp_path):
    result = run_cli("reconstruct", "--model-path", tmp_path / "nowhere", "--output-path", tmp_path / "x.png")
    assert_clean_failure(result, 1, "does not exist")
    assert not (tmp_path / "x.png").exists()


def test_directory_without_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli("reconstruct", "--model-path", tmp_path / "empty", "--output-path", tmp_path / "x.png")
    assert_clean_failure(result, 1, "holds no model")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_truncated_or_corrupt_model(model_dir, tmp_path, damage):
    copy = copy_model(model_dir, tmp_path)
    path = copy / checkpoint.CHECKPOINT_FILE
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else os.urandom(len(raw)))
    before = snapshot(copy)
    result = run_cli("reconstruct", "--model-path", copy, "--output-path", tmp_path / "x.png")
    assert_clean_failure(result, 1, "truncated or corrupt")
    assert snapshot(copy) == before


def test_edited_config_json_is_rewritten_from_the_checkpoint(model_dir, tmp_path):
    """The checkpoint holds the configuration; a config.json that disagrees with it is repaired, with a note."""
    copy = copy_model(model_dir, tmp_path)
    original = (copy / checkpoint.CONFIG_FILE).read_text()
    before = snapshot(copy)
    config = json.loads(original)
    config["model_config"]["hidden_units"] = 60
    (copy / checkpoint.CONFIG_FILE).write_text(json.dumps(config))
    result = run_cli("reconstruct", "--model-path", copy, "--output-path", tmp_path / "x.png")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and checkpoint.CONFIG_FILE in notes[0] and checkpoint.CHECKPOINT_FILE in notes[0], \
        result.stderr
    assert (tmp_path / "x.png").is_file()
    assert (copy / checkpoint.CONFIG_FILE).read_text() == original
    assert snapshot(copy) == before
    again = run_cli("reconstruct", "--model-path", copy, "--output-path", tmp_path / "y.png")
    assert again.returncode == 0 and "note:" not in again.stderr, again.stderr  # repaired once, then quiet


def test_checkpoint_whose_arrays_do_not_match_its_configuration(model_dir, tmp_path):
    copy = copy_model(model_dir, tmp_path)
    with np.load(copy / checkpoint.CHECKPOINT_FILE) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays["model/vae/encoder_hidden/kernel"] = arrays["model/vae/encoder_hidden/kernel"][:, :20]
    np.savez(copy / checkpoint.CHECKPOINT_FILE, **arrays)
    result = run_cli("reconstruct", "--model-path", copy, "--output-path", tmp_path / "x.png")
    assert_clean_failure(result, 1, "has shape (784, 20) in the checkpoint but (784, 40)")


def test_layer_structure_that_disagrees_with_the_saved_model(model_dir, tmp_path):
    before = model_files(model_dir)
    result = run_cli("reconstruct", "--model-path", model_dir, "--output-path", tmp_path / "x.png",
                     "--layer-structure", "p-lwta")
    assert_clean_failure(result, 2, "--layer-structure p-lwta disagrees with the model")
    resumed = run_cli("train", "--model-path", model_dir, "--resume", "--layer-structure", "none", "--steps", 40)
    assert_clean_failure(resumed, 2, "--layer-structure none disagrees with the saved run's lwta")
    assert model_files(model_dir) == before


@pytest.mark.parametrize("index", [50, -1])
def test_mnist_index_outside_the_split(model_dir, tmp_path, index):
    result = run_cli("reconstruct", "--model-path", model_dir, "--output-path", tmp_path / "x.png",
                     "--mnist_index", index)
    assert_clean_failure(result, 2, "outside the validation split (0 to 49)")


def test_existing_model_directory_needs_resume_or_overwrite(model_dir):
    before = model_files(model_dir)
    result = run_cli("train", "--layer-structure", "lwta", "--steps", 10, "--model-path", model_dir, *SMALL)
    assert_clean_failure(result, 2, "already exists; pass --resume to continue it or --overwrite")
    assert model_files(model_dir) == before


# ---------------------------------------------------------------------------
# Flag values


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "argument --steps: must be at least 1, got 0"),
    (["--batch-size", "-5"], "argument --batch-size: must be at least 1, got -5"),
    (["--learning-rate", "0"], "argument --learning-rate: must be at least 1e-12, got 0.0"),
    (["--learning-rate", "nan"], "argument --learning-rate: must be a finite number, got nan"),
    (["--learning-rate", "1e30"], "argument --learning-rate: must be at most 1000, got 1e+30"),
    (["--train-examples", "0"], "argument --train-examples: must be at least 1"),
    (["--batch-size", "400"], "--batch-size 400 is larger than the 300 training examples"),
    (["--train-examples", "60000"], "argument --train-examples: must be at most 55000, got 60000"),
    (["--layer-structure", "lwta", "--block-size", "3"],
     "--hidden-units 40 is not a multiple of the LWTA block size 3 (--block-size)"),
    (["--layer-structure", "dropout"], "argument --layer-structure: must be one of none, lwta, p-lwta, got 'dropout'"),
    (["--seed", "-1"], "argument --seed: must be at least 0, got -1"),
])
def test_bad_training_flags(tmp_path, flags, message):
    result = run_cli("train", "--model-path", tmp_path / "model", *SMALL, *flags)
    assert_clean_failure(result, 2, message)
    assert not (tmp_path / "model").exists()


# Per entry point: the code that runs it, the argument lists that only parse, and one that runs a command.
ENTRY_POINTS = {
    "script.py": ("import script; run = script.main",
                  [["--help"], ["train", "--help"], ["evaluate", "--help"], ["train", "--steps", "0"]],
                  ["sample", "--model-path", "nowhere", "--output-path", "x.png"]),
    "train_LWTA.py": ("from experiments import cli; run = lambda argv: cli.main('lwta', argv)",
                      [["--help"], ["--steps", "0"]], ["--resume", "--output-dir", "nowhere"]),
    "compare_learning.py": ("import compare_learning; run = compare_learning.main",
                            [["--help"], ["--learning-rates", "0.1,0.1"]],
                            ["--from-csv", "--output-prefix", "nowhere/x"]),
    "create_comparison_figure.py": ("import create_comparison_figure; run = create_comparison_figure.main",
                                    [["--help"], ["--no-such-flag"]],
                                    ["--labelled", "--output", "x.unknown"]),
}


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_help_and_flag_errors_come_before_tensorflow_is_imported(entry_point):
    """Parsing imports no TensorFlow, so --help and a bad value answer at once; a command then imports it."""
    setup, parse_only, command_argv = ENTRY_POINTS[entry_point]
    probe = (
        f"import sys\n{setup}\n"
        f"for argv in {parse_only!r}:\n"
        "    try:\n"
        "        run(argv)\n"
        "    except SystemExit as exit:\n"
        "        print('exit', exit.code, 'tensorflow' in sys.modules)\n"
        f"print('command', run({command_argv!r}), 'tensorflow' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600, cwd=ROOT,
                            env={**os.environ, "COLUMNS": "1000"})  # help lines unwrapped
    assert result.returncode == 0, result.stderr
    outcomes = [line for line in result.stdout.splitlines() if line.startswith(("exit", "command"))]
    expected_exits = ["exit 0 False"] * (len(parse_only) - 1) + ["exit 2 False"]
    assert outcomes[:-1] == expected_exits
    # script.py reads a named model directory before TensorFlow starts; the other programs fail after
    expected_tensorflow = " False" if entry_point == "script.py" else " True"
    assert outcomes[-1].startswith("command ") and outcomes[-1].endswith(expected_tensorflow)
    assert outcomes[-1] != "command 0 True", "the command was meant to fail on a missing or wrong path"
    assert "(default: " in result.stdout


def test_help_states_the_defaults():
    """Defaults of evaluate and of a train_*.py script, which --help reads from the settings."""
    help_texts = {
        "evaluate": run_cli("evaluate", "--help", env={"COLUMNS": "1000"}).stdout,
        "train_pLWTA.py": run_cli("--help", env={"COLUMNS": "1000"}, program="train_pLWTA.py").stdout,
    }
    assert "K, samples per image (as in Burda et al. 2015) (default: 5000)" in help_texts["evaluate"]
    assert "Adam learning rate (default: 0.0001)" in help_texts["train_pLWTA.py"]
    assert "images per training step (default: 1000)" in help_texts["train_pLWTA.py"]


# ---------------------------------------------------------------------------
# Data


@pytest.mark.parametrize("damage, message", [
    ("missing folder", "does not exist"),
    ("wrong file", "wrong magic number 2049; expected 2051"),
    ("truncated gz", "truncated or corrupt"),
    ("missing file", "missing t10k-labels-idx1-ubyte.gz"),
])
def test_bad_data_folder(tmp_path, damage, message):
    folder = tmp_path / "data"
    if damage != "missing folder":
        write_fake_mnist(folder, train=5400, test=10)
    images = folder / "train-images-idx3-ubyte.gz"
    if damage == "wrong file":
        shutil.copy(folder / "train-labels-idx1-ubyte.gz", images)
    elif damage == "truncated gz":
        images.write_bytes(images.read_bytes()[:-40])
    elif damage == "missing file":
        (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    result = run_cli("train", "--model-path", tmp_path / "model", "--data-dir", folder, *SMALL)
    assert_clean_failure(result, 1, message)
    assert not (tmp_path / "model").exists()


def test_failing_overwrite_leaves_the_old_model(model_dir, tmp_path):
    copy = copy_model(model_dir, tmp_path)
    before = model_files(copy)
    result = run_cli("train", "--layer-structure", "lwta", "--model-path", copy, "--overwrite",
                     "--data-dir", tmp_path / "nowhere", *SMALL)
    assert_clean_failure(result, 1, "does not exist")
    assert model_files(copy) == before


# ---------------------------------------------------------------------------
# Outputs


def test_output_path_that_cannot_be_written(model_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = run_cli("reconstruct", "--model-path", model_dir, "--output-path", blocker / "digit.png")
    assert_clean_failure(result, 1, "cannot write")
    trained = run_cli("train", "--model-path", blocker / "model", *SMALL)
    assert_clean_failure(trained, 1, "cannot write")


def test_only_the_stale_temporaries_of_a_path_are_removed(tmp_path):
    target = tmp_path / "checkpoint.npz"
    atomic.atomic_write(target, lambda temporary: Path(temporary).write_bytes(b"complete"))
    stale = [tmp_path / ".checkpoint.npz.k9x_2ab.tmp.npz", tmp_path / ".checkpoint.npz.q1.tmp"]
    others = [tmp_path / ".metrics.csv.k9x_2ab.tmp.csv", tmp_path / "checkpoint.npz.k9x_2ab.tmp.npz",
              tmp_path / ".checkpoint.npz.notes"]
    for path in stale + others:
        path.write_bytes(b"x")
    atomic.remove_stale_temporaries(target)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(path.name for path in [target, *others])
    assert target.read_bytes() == b"complete"


def test_debug_shows_the_traceback(tmp_path):
    for flags, env in (((), {"WTA_VAE_DEBUG": "1"}), (("--debug",), None)):
        result = run_cli(*flags, "reconstruct", "--model-path", tmp_path / "nowhere", "--output-path", tmp_path / "x.png",
                         env=env)
        assert result.returncode != 0 and "Traceback" in result.stderr and "does not exist" in result.stderr


# ---------------------------------------------------------------------------
# Interrupted and diverging runs

RESUMABLE = ["--layer-structure", "p-lwta", "--steps", "1000", "--checkpoint-interval", "100",
             "--train-examples", "2000", "--validation-examples", "200"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference") / "model"
    result = run_cli("train", "--model-path", folder, *RESUMABLE)
    assert result.returncode == 0, result.stderr
    return folder


def checkpoint_arrays(folder):
    with np.load(folder / checkpoint.CHECKPOINT_FILE) as npz:
        return {name: npz[name] for name in npz.files if name not in ("elapsed", "history")}


def losses(folder):
    """metrics.csv without the (machine-dependent) elapsed seconds."""
    return [{column: value for column, value in row.items() if column != "elapsed_seconds"}
            for row in checkpoint.read_metrics_csv(folder / checkpoint.METRICS_FILE)]


def start_and_stop(folder, how):
    """Start a training subprocess, wait for its first checkpoint, then stop it with signal `how`.

    metrics.csv is written after checkpoint.npz, so its presence means the first checkpoint is complete.
    """
    process = subprocess.Popen(command("train", "--model-path", folder, *RESUMABLE),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (folder / checkpoint.METRICS_FILE).exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(how)
    stdout, stderr = process.communicate(timeout=120)
    return process.returncode, stdout, stderr


def tensorboard_steps(folder, tag="loss/validation"):
    """The steps of `tag` in the TensorBoard events of a model directory, in the order they were written."""
    steps = []
    for path in sorted((folder / checkpoint.TENSORBOARD_DIR).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            steps += [event.step for value in event.summary.value if value.tag == tag]
    return steps


def assert_same_run(resumed, uninterrupted):
    assert losses(resumed) == losses(uninterrupted)
    assert tensorboard_steps(resumed) == [row["step"] for row in losses(resumed)], "each step drawn once, none missing"
    reference = checkpoint_arrays(uninterrupted)
    final = checkpoint_arrays(resumed)
    assert final.keys() == reference.keys()
    for name in reference:
        np.testing.assert_array_equal(final[name], reference[name], err_msg=name)


def test_killed_run_resumes_to_the_same_result(tmp_path, uninterrupted):
    folder = tmp_path / "model"
    status, _, _ = start_and_stop(folder, signal.SIGKILL)
    assert status == -signal.SIGKILL
    stopped_at = losses(folder)[-1]["step"]
    assert 100 <= stopped_at < 1000, "killed between its first checkpoint and its end"
    result = run_cli("train", "--model-path", folder, "--resume")
    assert result.returncode == 0, result.stderr
    assert_same_run(folder, uninterrupted)


def test_every_checkpoint_finds_the_curves_of_its_steps_on_disk(tmp_path, monkeypatch):
    """A run killed right after writing a checkpoint resumes from it, so the TensorBoard events of every step up to
    that checkpoint must already be on disk when it is written (the kill test above only hits this by chance)."""
    on_disk = []

    def save_checkpoint(model_dir, arrays):
        on_disk.append((checkpoint.history_of(arrays)[-1]["step"], tensorboard_steps(model_dir)))
        original(model_dir, arrays)

    original = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", save_checkpoint)
    func.train(tiny_config(steps=50, checkpoint_interval=20), tmp_path / "model", progress=False)
    assert on_disk == [(step, list(range(10, step + 1, 10))) for step in (20, 40, 50)]


def test_terminated_run_saves_a_checkpoint_and_says_how_to_resume(tmp_path, uninterrupted):
    folder = tmp_path / "model"
    status, _, stderr = start_and_stop(folder, signal.SIGTERM)
    assert status == 128 + signal.SIGTERM
    assert "Traceback" not in stderr and f"--model-path {folder} --resume" in stderr
    stopped_at = losses(folder)[-1]["step"]  # the last validation before the signal
    assert stopped_at % 10 == 0 and stopped_at < 1000
    interrupted = re.search(r"interrupted at step (\d+); checkpoint saved in", stderr)
    assert interrupted, stderr
    step = int(interrupted.group(1))
    assert stopped_at <= step < stopped_at + 10, (stopped_at, step)  # mid-interval: its steps so far are kept
    assert checkpoint_arrays(folder)["optimizer/adam/iteration"] == step, "the checkpoint holds the interrupted step"
    result = run_cli("train", "--model-path", folder, "--resume", "--layer-structure", "p-lwta")
    assert result.returncode == 0, result.stderr
    assert_same_run(folder, uninterrupted)


def test_resume_can_extend_a_finished_run(tmp_path, uninterrupted):
    folder = Path(shutil.copytree(uninterrupted, tmp_path / "model"))
    stale = folder / f".{checkpoint.CHECKPOINT_FILE}.k9x_2ab.tmp.npz"  # what a write killed mid-way leaves
    stale.write_bytes(b"half a checkpoint")
    result = run_cli("train", "--model-path", folder, "--resume", "--steps", 1020)
    assert result.returncode == 0, result.stderr
    assert not stale.exists()
    assert [row["step"] for row in losses(folder)][-3:] == [1000, 1010, 1020]
    assert losses(folder)[:100] == losses(uninterrupted)


def test_diverging_run_stops_with_the_step_and_writes_nothing(tmp_path):
    result = run_cli("train", "--model-path", tmp_path / "model", "--learning-rate", "1000", *SMALL)
    assert_clean_failure(result, 1, "the training loss became nan at step 2; no checkpoint of this run was saved")
    assert not (tmp_path / "model" / checkpoint.CHECKPOINT_FILE).exists()


def test_diverging_run_keeps_the_last_good_checkpoint(model_dir, tmp_path, monkeypatch):
    copy = copy_model(model_dir, tmp_path)
    before = model_files(copy)
    honest_step = Trainer.train_step

    def diverging_step(self, images, step):
        return {name: value * float("nan") for name, value in honest_step(self, images, step).items()}

    monkeypatch.setattr(Trainer, "train_step", diverging_step)
    with pytest.raises(func.TrainingDiverged, match=r"at step 21; the last good checkpoint \(step 20\) is kept"):
        func.resume(copy, {"steps": 40}, progress=False)
    assert {name: digest for name, digest in model_files(copy).items() if not name.startswith("tensorboard")} == \
           {name: digest for name, digest in before.items() if not name.startswith("tensorboard")}
