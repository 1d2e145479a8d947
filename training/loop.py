"""The training loop shared by every model family: compiled multi-step calls, checkpoints, exact resume.

All randomness of a run derives from its seed: initial weights through
``keras.utils.set_random_seed``, the order of examples from a NumPy generator
keyed on (seed, epoch), and every noise draw from a stateless seed keyed on
(seed, step).  A run therefore resumes exactly where it stopped, even from the
middle of a validation interval.
"""

import dataclasses
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from fileio import atomic
from settings.run import RESUMABLE
from training import checkpoint, data, lock
from training.events import drop_events_after
from training.progress import Progress, StopRequest
from training.trainer import Trainer
from utils import DataError, UsageError

CALL_SECONDS = 0.5  # a compiled call runs at most about this long, so that Ctrl-C is honoured within a second
FIRST_CALL_STEPS = 10  # the first two calls' size; the second's speed sets the size of the rest, a power of 2


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint."""

    def __init__(self, what, exit_status, resume_command):
        super().__init__(f"{what}. Continue with: {resume_command}")
        self.what, self.exit_status = what, exit_status

    @classmethod
    def at(cls, step, model_dir, signal_number):
        return cls(f"interrupted at step {step}; checkpoint saved in {model_dir}", 128 + signal_number,
                   f"python script.py train --model-path {model_dir} --resume")


class TrainingDiverged(Exception):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


def prepare_model_dir(model_dir, resume, overwrite):
    """Check what is in `model_dir` against --resume / --overwrite before any work starts."""
    model_dir = Path(model_dir)
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if model_dir.is_symlink() and not model_dir.exists():
        raise UsageError(f"--model-path {model_dir} is a symbolic link to {os.readlink(model_dir)}, which does not "
                         "exist")
    if model_dir.exists() and not model_dir.is_dir():
        raise UsageError(f"--model-path {model_dir} is a file; it must name a directory")
    board = model_dir / checkpoint.TENSORBOARD_DIR
    if board.exists() and not board.is_dir():
        raise DataError(f"{board} is a file, but TensorBoard's curves go into a folder of that name; move it away")
    if resume and not checkpoint.has_model(model_dir):
        raise UsageError(f"--resume: {model_dir} holds no checkpoint to resume from")
    if checkpoint.has_model(model_dir) and not resume and not overwrite:
        raise UsageError(f"{model_dir} already exists; pass --resume to continue it or --overwrite to replace it")
    atomic.check_writable(model_dir / checkpoint.CHECKPOINT_FILE)


def train(config, model_dir, overwrite=False, dataset=None, progress=True, label=""):
    """Train a new model of the RunConfig `config` into `model_dir`; returns the metrics history.

    `dataset` may be passed to reuse loaded data (figure scripts train several
    models on one copy).  Raises TrainingInterrupted after saving a checkpoint on
    SIGINT/SIGTERM, and TrainingDiverged (keeping the last checkpoint) on a
    non-finite loss.  With `overwrite`, the replaced model's records and curves
    go once the new model has its first checkpoint.
    """
    config = with_absolute_data_dir(config)
    config.validate()
    prepare_model_dir(model_dir, resume=False, overwrite=overwrite)
    with lock.exclusive(model_dir):
        prepare_model_dir(model_dir, resume=False, overwrite=overwrite)  # again: another run may have finished
        dataset = dataset or data.load_data(config)
        return _run(config, Path(model_dir), None, dataset, progress, label)


def resume(model_dir, overrides=None, dataset=None, progress=True, label=""):
    """Continue the run saved in `model_dir` from its checkpoint; returns the whole metrics history.

    `overrides` holds the settings the user gave: --steps, --checkpoint-interval
    and --data-dir may change, any other value that differs from the saved run
    is an error.  A run already at its --steps says so and returns its history.
    """
    prepare_model_dir(model_dir, resume=True, overwrite=False)
    with lock.exclusive(model_dir):
        saved, arrays = checkpoint.read(model_dir)
        config = with_absolute_data_dir(resumed_config(saved, overrides or {}))
        config.validate()
        done = checkpoint.trained_steps(arrays)
        if done > config.training.steps:
            raise UsageError(f"--steps {config.training.steps} is below the {done} steps {model_dir} has already "
                             "trained; pass a larger --steps to continue it")
        if done == config.training.steps:
            print(f"{model_dir} is already trained to its {done} steps; nothing to do (pass a larger --steps to "
                  "continue it)", flush=True)
            return checkpoint.history_of(arrays)
        return _run(config, Path(model_dir), arrays, dataset, progress, label)


def with_absolute_data_dir(config):
    """`config` with its --data-dir made absolute, so that a resume from another folder finds the data."""
    data_dir = config.training.data_dir
    return config.replace(data_dir=os.path.abspath(data_dir)) if data_dir else config


def resumed_config(saved, overrides):
    """The saved configuration with the changeable `overrides` applied; any other difference is a UsageError."""
    if overrides.get("model", saved.model) != saved.model:
        raise UsageError(f"--model {overrides['model']} disagrees with the saved run's {saved.model}")
    current = {**dataclasses.asdict(saved.training), **dataclasses.asdict(saved.model_config)}
    for name, wanted in overrides.items():
        if name != "model" and name not in RESUMABLE and wanted != current.get(name):
            raise UsageError(
                f"--{name.replace('_', '-')} {wanted} disagrees with the saved run's {current.get(name)}; "
                "a resumed run keeps its configuration (only --steps, --checkpoint-interval and --data-dir may change)"
            )
    return saved.replace(**{name: overrides[name] for name in RESUMABLE if name in overrides})


def _first_nonfinite(losses):
    bad = np.flatnonzero(~np.isfinite(losses))
    return int(bad[0]) if bad.size else None


class _Run:
    """The state of one training run between compiled calls: the trainer, the history, the time, the curves."""

    def __init__(self, config, model_dir, arrays, dataset, progress, label):
        self.config, self.model_dir, self.label = config, model_dir, label
        self.trainer = Trainer(config, data.training_images(config, dataset.train),
                               data.evaluation_images(config, dataset.validation))
        self.history, self.elapsed, self.partial = [], 0.0, {}
        if arrays is not None:
            self.history, self.elapsed, self.partial = self.trainer.restore(arrays, model_dir)
            drop_events_after(model_dir / checkpoint.TENSORBOARD_DIR, self.trainer.step())
        self.replaced = [] if arrays is not None else _replaced_records(model_dir)
        self.step = self.trainer.step()
        self.last_checkpoint = self.step
        self.steps_per_call, self.calls = min(FIRST_CALL_STEPS, self.config.training.validation_interval), 0
        self.summary_writer = tf.summary.create_file_writer(str(model_dir / checkpoint.TENSORBOARD_DIR))
        self.display = Progress(config.training.steps, self.step, label) if progress else None

    def save(self):
        """A checkpoint of the current step; the first of a run that replaces a model clears the old records."""
        self.summary_writer.flush()  # the curves first: whenever a checkpoint exists, its steps' events are on disk
        checkpoint.save(self.model_dir, self.trainer.checkpoint_arrays(self.history, self.elapsed, self.partial))
        self.last_checkpoint = self.step
        for path in self.replaced:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        self.replaced = []

    def train_calls(self, stop):
        """Train up to the end of the current validation interval, in calls of about CALL_SECONDS each.

        Returns False when a stop was requested before the interval ended.
        """
        settings = self.config.training
        done_in_interval = len(self.partial.get("loss", ()))
        end = min(self.step - done_in_interval + settings.validation_interval, settings.steps)
        while self.step < end:
            if stop.signal_number:
                return False
            count = min(self.steps_per_call, end - self.step)
            started = time.perf_counter()
            indices = data.batch_indices(settings.seed, self.step, count, settings.batch_size,
                                         len(self.trainer.train_images))
            metrics = self.trainer.train_interval(tf.constant(self.step, tf.int64), tf.constant(indices))
            metrics = {name: values.numpy() for name, values in metrics.items()}
            seconds = time.perf_counter() - started
            self.elapsed += seconds
            self._check_finite(metrics["loss"], "training", self.step)
            self.partial = {name: np.concatenate([self.partial.get(name, np.zeros(0, np.float32)), values])
                            for name, values in metrics.items()}
            self.step += count
            self.calls += 1
            if self.step < end:  # validate() shows the interval's end
                self.show()
            if self.calls == 2:  # timed once, after the first call's compiling: each new call size compiles anew
                fitting = CALL_SECONDS * count / max(seconds, 1e-9)
                self.steps_per_call = 2 ** int(math.log2(max(fitting, 1)))
        return True

    def validate(self):
        """Close the interval: validation metrics, a history row, TensorBoard and the progress display."""
        started = time.perf_counter()
        validation = {name: float(value) for name, value in
                      self.trainer.validation_metrics(tf.constant(self.step, tf.int64)).items()}
        self.elapsed += time.perf_counter() - started
        self._check_finite(np.array([validation["loss"]]), "validation", self.step - 1)
        self.history.append(_history_row(self.step, self.partial, validation, self.elapsed))
        self.partial = {}
        _log(self.history[-1], self.step)
        self.show()

    def show(self):
        """Progress: the training loss of the interval so far (else the last row's) and the last validation loss."""
        if not self.display:
            return
        values = {}
        if self.partial:
            values["training loss"] = float(np.mean(self.partial["loss"]))
        elif self.history:
            values["training loss"] = self.history[-1]["training_loss"]
        if self.history:
            values["validation loss"] = self.history[-1]["validation_loss"]
        self.display.update(self.step, values)

    def _check_finite(self, losses, what, first_step):
        bad = _first_nonfinite(losses)
        if bad is None:
            return
        kept = (f"the last good checkpoint (step {self.last_checkpoint}) is kept in {self.model_dir}"
                if self.last_checkpoint > 0 else "no checkpoint of this run was saved")
        raise TrainingDiverged(f"the {what} loss became {losses[bad]} at step {first_step + bad + 1}; {kept}. "
                               "Try a smaller --learning-rate")


def _replaced_records(model_dir):
    """What a replaced model left that the new one must not inherit: its records, results and curves."""
    model_dir = Path(model_dir)
    records = [model_dir / name for name in checkpoint.RECORDS if (model_dir / name).exists()]
    return records + sorted((model_dir / checkpoint.TENSORBOARD_DIR).glob("events.out.tfevents.*"))


def _run(config, model_dir, arrays, dataset, progress, label):
    """The training loop; `arrays` holds the checkpoint of a resumed run, None for a new one."""
    for name in (checkpoint.CHECKPOINT_FILE, checkpoint.CONFIG_FILE, checkpoint.METRICS_FILE):
        atomic.remove_stale_temporaries(model_dir / name)
    run = _Run(config, model_dir, arrays, dataset or data.load_data(config), progress, label)
    settings = config.training
    with StopRequest() as stop, run.summary_writer.as_default():
        while run.step < settings.steps:
            if not run.train_calls(stop):
                run.save()
                raise TrainingInterrupted.at(run.step, model_dir, stop.signal_number)
            run.validate()
            if run.step // settings.checkpoint_interval > run.last_checkpoint // settings.checkpoint_interval:
                run.save()
            if stop.signal_number and run.step < settings.steps:
                run.save()
                raise TrainingInterrupted.at(run.step, model_dir, stop.signal_number)
        if run.last_checkpoint != run.step or not checkpoint.has_model(model_dir):
            run.save()
    run.summary_writer.close()
    return run.history


def _history_row(step, metrics, validation, elapsed):
    """One row of the metrics history: the interval's mean training metrics and the validation metrics."""
    row = {"step": step, "training_loss": float(np.mean(metrics["loss"])), "validation_loss": validation["loss"],
           "elapsed_seconds": elapsed}
    for split, values in (("training", {name: float(np.mean(array)) for name, array in metrics.items()}),
                          ("validation", validation)):
        row.update({f"{split}_{name}": value for name, value in values.items() if name != "loss"})
    return row


def _log(row, step):
    """The row's numbers as TensorBoard scalars: loss/training, loss/validation, reconstruction/training, ..."""
    for column, value in row.items():
        if column not in ("step", "elapsed_seconds"):
            split, name = column.split("_", 1)
            tf.summary.scalar(f"{name}/{split}", value, step=step)
