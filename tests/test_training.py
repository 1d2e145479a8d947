"""The shared training loop under interruption, concurrency and divergence, run as a user would, in subprocesses."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import func

from conftest import assert_clean_failure, command, run_cli, tiny_config
from training import checkpoint
from training.trainer import Trainer

SMALL = ["--train-examples", "300", "--validation-examples", "50", "--hidden-units", "40", "--latent-dim", "10",
         "--layer-structure", "lwta"]


def arrays(model_dir):
    with np.load(Path(model_dir) / checkpoint.CHECKPOINT_FILE) as npz:
        return {name: npz[name] for name in npz.files}


def start(model_dir, *flags):
    return subprocess.Popen(command("train", *SMALL, "--model-path", model_dir, *flags), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path, timeout=120):
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def wait_for_step(model_dir, process, timeout=120):
    """Wait until the run's TensorBoard curves show a first validation: training is under way, compiled."""
    deadline = time.monotonic() + timeout
    while not any(Path(model_dir, checkpoint.TENSORBOARD_DIR).glob("events.out.tfevents.*")) or process.poll():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)


def test_ctrl_c_stops_within_seconds_mid_interval_and_the_resume_is_exact(tmp_path):
    """One validation interval of 100,000 steps (minutes of work), interrupted: the run stops at once, inside the
    interval, and resumed to step k + 100 it equals a run of k + 100 steps that was never interrupted."""
    flags = ["--validation-interval", "100000", "--checkpoint-interval", "100000"]
    interrupted = tmp_path / "interrupted"
    process = start(interrupted, "--steps", "100000", *flags)
    first_line = process.stdout.readline()  # progress, shown after the first compiled call
    assert first_line.startswith("step "), first_line
    time.sleep(0.5)
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert time.monotonic() - sent < 10, "Ctrl-C waited for the interval to end"
    assert process.returncode == 130 and "interrupted at step" in stderr, stderr
    steps = str(int(arrays(interrupted)["optimizer/adam/iteration"]) + 100)
    assert run_cli("train", "--model-path", interrupted, "--resume", "--steps", steps).returncode == 0
    straight = tmp_path / "straight"
    assert run_cli("train", *SMALL, "--model-path", straight, "--steps", steps, *flags).returncode == 0
    expected, resumed = arrays(straight), arrays(interrupted)
    assert set(expected) == set(resumed)
    for name in expected:
        if name not in ("elapsed", "history", "config"):
            np.testing.assert_array_equal(expected[name], resumed[name], err_msg=name)
    np.testing.assert_array_equal(np.delete(expected["history"], 3, 1), np.delete(resumed["history"], 3, 1))


def test_a_second_writer_is_refused_naming_the_first_and_a_killed_holder_leaves_no_lock(tmp_path):
    model_dir = tmp_path / "model"
    first = start(model_dir, "--steps", "100000", "--checkpoint-interval", "100000")  # no checkpoint for a while
    try:
        wait_for_step(model_dir, first)
        second = run_cli("train", *SMALL, "--model-path", model_dir, "--steps", "20")
        assert_clean_failure(second, 1, f"process {first.pid}")
        evaluate = run_cli("evaluate", "--model-path", model_dir, "--limit", "1", "--importance-samples", "2")
        assert evaluate.returncode != 0 or "in use" not in evaluate.stderr  # readers are not locked out
    finally:
        first.kill()
        first.wait()
    takeover = run_cli("train", *SMALL, "--model-path", model_dir, "--steps", "20", "--overwrite")
    assert takeover.returncode == 0, takeover.stderr


def test_a_non_finite_validation_loss_stops_the_run_and_the_kept_checkpoint_is_finite(tmp_path, monkeypatch):
    """A fault injected into validation: from step 30 on the validation loss is infinite, training stays finite."""
    validation_metrics = Trainer._validation_metrics

    def infinite_from_step_30(self, step):
        metrics = validation_metrics(self, step)
        return {**metrics, "loss": metrics["loss"] + tf.where(step >= 30, np.inf, 0.0)}

    monkeypatch.setattr(Trainer, "_validation_metrics", infinite_from_step_30)
    model_dir = tmp_path / "model"
    with pytest.raises(func.TrainingDiverged, match="validation loss became inf at step 30"):
        func.train(tiny_config(checkpoint_interval=10, steps=50), model_dir, progress=False)
    kept = arrays(model_dir)
    assert int(kept["optimizer/adam/iteration"]) == 20
    assert kept["history"][:, 0].tolist() == [10, 20] and np.isfinite(kept["history"]).all()


def test_resume_with_nothing_left_to_do_says_so_and_a_smaller_steps_is_an_error(tmp_path):
    model_dir = tmp_path / "model"
    assert run_cli("train", *SMALL, "--model-path", model_dir, "--steps", "20").returncode == 0
    before = (model_dir / checkpoint.CHECKPOINT_FILE).read_bytes()
    again = run_cli("train", "--model-path", model_dir, "--resume")
    assert again.returncode == 0 and "nothing to do" in again.stdout and "saved" not in again.stdout
    assert_clean_failure(run_cli("train", "--model-path", model_dir, "--resume", "--steps", "10"), 2,
                         "--steps 10 is below the 20 steps")
    assert (model_dir / checkpoint.CHECKPOINT_FILE).read_bytes() == before


def test_overwrite_clears_the_old_models_records_once_the_new_one_has_a_checkpoint(tmp_path):
    model_dir = tmp_path / "model"
    assert run_cli("train", *SMALL, "--model-path", model_dir, "--steps", "20").returncode == 0
    (model_dir / checkpoint.EVALUATION_FILE).write_text("{}")
    (model_dir / "results").mkdir()
    old_events = sorted((model_dir / checkpoint.TENSORBOARD_DIR).iterdir())
    refused = run_cli("train", *SMALL, "--model-path", model_dir, "--steps", "20", "--latent-dim", "7")
    assert refused.returncode == 2 and (model_dir / checkpoint.EVALUATION_FILE).exists()
    assert run_cli("train", *SMALL, "--model-path", model_dir, "--steps", "20", "--overwrite").returncode == 0
    assert not (model_dir / checkpoint.EVALUATION_FILE).exists() and not (model_dir / "results").exists()
    assert not any(path.exists() for path in old_events)
    assert len(list((model_dir / checkpoint.TENSORBOARD_DIR).iterdir())) == 1


def test_a_relative_data_dir_is_stored_absolute(tmp_path):
    data = Path(os.environ["MNIST_DATA_DIR"]).resolve()
    shutil.copytree(data, tmp_path / "mnist")
    result = run_cli("train", *SMALL, "--model-path", "model", "--steps", "10", "--data-dir", "mnist", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "model" / checkpoint.CONFIG_FILE).read_text())
    assert saved["training"]["data_dir"] == str(tmp_path / "mnist")
    elsewhere = run_cli("train", "--model-path", tmp_path / "model", "--resume", "--steps", "20")
    assert elsewhere.returncode == 0, elsewhere.stderr


def test_compare_learning_interrupted_says_how_to_continue_and_resume_finishes_it(tmp_path):
    flags = ["--steps", "30", "--learning-rates", "0.001", "--train-examples", "300", "--validation-examples", "50",
             "--output-prefix", tmp_path / "curves", "--models-dir", tmp_path / "models"]
    process = subprocess.Popen(command(*flags, program="compare_learning.py"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    for line in process.stdout:  # the second run has started: the first is finished
        if line.startswith("[2/3"):
            break
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "compare_learning.py" in stderr and stderr.strip().endswith("--resume"), stderr
    first = tmp_path / "models" / "compare_learning" / "lr0.001" / "none" / checkpoint.CHECKPOINT_FILE
    finished_before = first.read_bytes()
    resumed = run_cli(*flags, "--resume", program="compare_learning.py")
    assert resumed.returncode == 0, resumed.stderr
    assert first.read_bytes() == finished_before  # the finished run was reused, not retrained
    rows = (tmp_path / "curves.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 3  # three runs of three validations each


def test_a_directory_with_stale_readable_copies_repairs_itself_on_the_next_command(small_model, tmp_path):
    """The checkpoint is the one source of truth: as after a kill between its rename and the copies' rewrite."""
    model_dir = Path(shutil.copytree(small_model, tmp_path / "model"))
    config_text = (model_dir / checkpoint.CONFIG_FILE).read_text()
    metrics_text = (model_dir / checkpoint.METRICS_FILE).read_text()
    (model_dir / checkpoint.METRICS_FILE).write_text("".join(metrics_text.splitlines(keepends=True)[:-1]))
    (model_dir / checkpoint.CONFIG_FILE).write_text(config_text.replace('"latent_dim": 10', '"latent_dim": 12'))
    result = run_cli("sample", "--model-path", model_dir, "--output-path", tmp_path / "samples.png", "--count", "4")
    assert result.returncode == 0, result.stderr
    assert "config.json differed from checkpoint.npz" in result.stderr
    assert (model_dir / checkpoint.CONFIG_FILE).read_text() == config_text
    assert (model_dir / checkpoint.METRICS_FILE).read_text() == metrics_text


def test_metrics_record_the_parts_of_the_losses_and_the_active_units(small_model):
    import csv

    with open(small_model / checkpoint.METRICS_FILE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    last = {name: float(value) for name, value in rows[-1].items()}
    for split in ("training", "validation"):
        parts = last[f"{split}_reconstruction"] + last[f"{split}_kl"]
        assert abs(last[f"{split}_loss"] - parts) < 1e-3 * abs(parts)  # means of float32 numbers
    model, config = func.load_model(small_model)
    images = func.evaluation_images(config, func.load_data(config).validation)
    mean, _ = model.encode(images, training=False)
    assert last["validation_active_units"] == float(np.sum(np.var(mean.numpy(), axis=0) > 0.01))
    assert 0 < last["validation_active_units"] <= config.model_config.latent_dim


def test_a_signal_after_the_last_step_is_not_reported_as_an_interruption(tmp_path, monkeypatch):
    """Ctrl-C that lands after the final validation: the run finished, so it returns normally and is saved."""
    from training import loop

    validate = loop._Run.validate

    def validate_then_signal(run):
        validate(run)
        if run.step == run.config.training.steps:
            os.kill(os.getpid(), signal.SIGINT)  # caught by the loop's handler, which only sets a flag

    monkeypatch.setattr(loop._Run, "validate", validate_then_signal)
    history = func.train(tiny_config(steps=20), tmp_path / "model", progress=False)
    assert history[-1]["step"] == 20
    assert int(arrays(tmp_path / "model")["optimizer/adam/iteration"]) == 20


def test_a_killed_tensorboard_rewrite_leaves_nothing_that_tensorboard_reads(small_model, tmp_path, monkeypatch):
    """The events past a resumed step are dropped through a temporary outside TensorBoard's folder."""
    from training import events

    model_dir = Path(shutil.copytree(small_model, tmp_path / "model"))
    board = model_dir / checkpoint.TENSORBOARD_DIR
    before = sorted(path.name for path in board.iterdir())

    def killed(records, path):
        Path(path).write_bytes(b"half a file")
        raise KeyboardInterrupt  # as a kill in the middle of the rewrite

    monkeypatch.setattr(events, "_write_records", killed)
    with pytest.raises(KeyboardInterrupt):
        events.drop_events_after(board, 10)
    assert sorted(path.name for path in board.iterdir()) == before  # nothing new, nothing hidden, inside
    assert not [path for path in model_dir.iterdir() if ".tmp" in path.name]  # and the temporary is gone


def test_sigterm_while_compare_learning_draws_leaves_no_temporary(tmp_path):
    curves = tmp_path / "curves.csv"
    rows = ["learning_rate,layer_structure,step,training_loss,validation_loss,elapsed_seconds"]
    rows += [f"0.001,{structure},{step},500.0,{500 - step / 100},1.0" for structure in ("none", "lwta")
             for step in range(10, 2010, 10)]
    curves.write_text("\n".join(rows) + "\n")
    for delay in (1.0, 2.0):
        process = subprocess.Popen(command("--from-csv", "--output-prefix", tmp_path / "curves",
                                           program="compare_learning.py"),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
        assert "Traceback" not in stderr
        assert not [path for path in tmp_path.iterdir() if ".tmp" in path.name], sorted(os.listdir(tmp_path))
