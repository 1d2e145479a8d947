"""The training loop shared by every model family: compiled multi-step calls, checkpoints, exact resume.

All randomness of a run derives from its seed: initial weights through
``keras.utils.set_random_seed``, the order of examples from a NumPy generator
keyed on (seed, epoch), and every noise draw from a stateless seed keyed on
(seed, step).  A run therefore resumes exactly where it stopped.
"""

import dataclasses
import functools
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import models
import network
import utils
from models.base import optimizer
from settings.run import RESUMABLE
from training import checkpoint, data
from training.events import drop_events_after
from training.progress import Progress, StopRequest
from utils import DataError, UsageError


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint."""

    def __init__(self, step, model_dir, signal_number, resume_command=None):
        resume_command = resume_command or f"python script.py train --model-path {model_dir} --resume"
        super().__init__(f"interrupted at step {step}; checkpoint saved in {model_dir}. Continue with: {resume_command}")
        self.exit_status = 128 + signal_number


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _stream_seed(seed, stream):
    return network.fold_in(tf.constant([seed, 0], tf.int64), stream)


class Trainer:
    """A model of any family, its optimizer and the compiled functions that train and validate it.

    `train_interval` runs many steps in one XLA-compiled call, gathering each
    batch by index from the training images held as one tensor: on a CPU the
    per-step Python dispatch and the many small kernels of Adam and LWTA cost
    more than the matrix products.  `jit_compile=False` gives the plain graph,
    which draws the same random numbers (see :func:`network.uniform`).
    """

    def __init__(self, config, train_images, validation_images, jit_compile=True):
        keras.utils.set_random_seed(config.training.seed)
        self.config = config
        self.family = models.family(config.model)
        self.model = self.family.build(config)
        self.optimizer = optimizer(config.training.learning_rate)
        self.optimizer.build(self.model.trainable_variables)
        self.extra_state = self.family.extra_state(self.model)
        self.train_images = tf.constant(train_images)
        self.validation_images = tf.constant(validation_images)
        seed = config.training.seed
        self.noise_seed = _stream_seed(seed, data.NOISE_STREAM)
        self.validation_seed = _stream_seed(seed, data.VALIDATION_STREAM)
        self.binarization_seed = _stream_seed(seed, data.BINARIZATION_STREAM)
        # Partials, not bound methods: TensorFlow counts traces per method across instances, and several
        # Trainers that each trace once (compare_learning.py's runs) would draw its "excessive retracing" warning.
        self.train_interval = tf.function(
            functools.partial(Trainer._train_interval, self),
            input_signature=[tf.TensorSpec([], tf.int64), tf.TensorSpec([None, None], tf.int32)],
            jit_compile=jit_compile,
        )
        self.validation_metrics = tf.function(
            functools.partial(Trainer._validation_metrics, self), input_signature=[tf.TensorSpec([], tf.int64)],
            jit_compile=jit_compile,
        )

    def train_step(self, images, step):
        """One Adam update on `images`; returns the family's metrics of the batch."""
        if self.config.training.binarize == "dynamic":
            draw = network.uniform(tf.shape(images), network.fold_in(self.binarization_seed, step))
            images = tf.cast(draw < images, images.dtype)
        seed = network.fold_in(self.noise_seed, step)
        with tf.GradientTape() as tape:
            objective, metrics = self.family.objective(self.model, self.config, images, seed, step)
        variables = self.model.trainable_variables
        self.optimizer.apply(tape.gradient(objective, variables), variables)
        return metrics

    def _train_interval(self, first_step, indices):
        """Run one update per row of `indices` inside one compiled call; returns each step's metrics."""
        count = tf.shape(indices)[0]
        names = self.family.metric_names()
        arrays = {name: tf.TensorArray(tf.float32, size=count) for name in names}
        for offset in tf.range(count):
            images = tf.gather(self.train_images, indices[offset])
            metrics = self.train_step(images, first_step + tf.cast(offset, tf.int64))
            arrays = {name: arrays[name].write(offset, metrics[name]) for name in names}
        return {name: array.stack() for name, array in arrays.items()}

    def _validation_metrics(self, step):
        """The family's metrics on the whole validation set, inference mode, noise seeded by `step`."""
        seed = network.fold_in(self.validation_seed, step)
        return self.family.validation_metrics(self.model, self.config, self.validation_images, seed)

    def step(self):
        return int(self.optimizer.iterations.numpy())

    def checkpoint_arrays(self, history, elapsed):
        return checkpoint.checkpoint_arrays(self.config, self.model, self.optimizer, self.extra_state, history,
                                            elapsed)

    def restore(self, arrays, model_dir):
        """Load checkpoint `arrays` into the model, the optimizer and the extra state; returns (history, elapsed)."""
        what = f"{model_dir}/{checkpoint.CHECKPOINT_FILE} does not match its configuration"
        checkpoint.assign(checkpoint.by_path(self.model.weights), arrays, checkpoint.MODEL, what)
        checkpoint.assign(checkpoint.by_path(self.optimizer.variables), arrays, checkpoint.OPTIMIZER, what)
        checkpoint.assign(self.extra_state, arrays, checkpoint.STATE, what)
        return checkpoint.history_of(arrays), float(arrays["elapsed"])


def prepare_model_dir(model_dir, resume, overwrite):
    """Check what is in `model_dir` against --resume / --overwrite before any work starts."""
    model_dir = Path(model_dir)
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if model_dir.exists() and not model_dir.is_dir():
        raise UsageError(f"--model-path {model_dir} is a file; it must name a directory")
    if resume and not checkpoint.has_model(model_dir):
        raise UsageError(f"--resume: {model_dir} holds no checkpoint to resume from")
    if checkpoint.has_model(model_dir) and not resume and not overwrite:
        raise UsageError(f"{model_dir} already exists; pass --resume to continue it or --overwrite to replace it")
    utils.check_writable(model_dir / checkpoint.CHECKPOINT_FILE)


def train(config, model_dir, overwrite=False, dataset=None, progress=True, label=""):
    """Train a new model of the RunConfig `config` into `model_dir`; returns the metrics history.

    `dataset` may be passed to reuse loaded data (figure scripts train several
    models on one copy).  Raises TrainingInterrupted after saving a checkpoint on
    SIGINT/SIGTERM, and TrainingDiverged (keeping the last checkpoint) on a
    non-finite loss.
    """
    prepare_model_dir(model_dir, resume=False, overwrite=overwrite)
    config.validate()
    dataset = dataset or data.load_data(config)
    shutil.rmtree(Path(model_dir) / checkpoint.TENSORBOARD_DIR, ignore_errors=True)  # curves of a replaced run
    return _run(config, Path(model_dir), None, dataset, progress, label)


def resume(model_dir, overrides=None, dataset=None, progress=True, label=""):
    """Continue the run saved in `model_dir` from its checkpoint; returns the whole metrics history.

    `overrides` holds the settings the user gave: --steps, --checkpoint-interval
    and --data-dir may change, any other value that differs from the saved run is an error.
    """
    prepare_model_dir(model_dir, resume=True, overwrite=False)
    saved, arrays = checkpoint.read(model_dir)
    config = resumed_config(saved, overrides or {})
    config.validate()
    return _run(config, Path(model_dir), arrays, dataset, progress, label)


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


def _run(config, model_dir, arrays, dataset, progress, label):
    """The training loop; `arrays` holds the checkpoint of a resumed run, None for a new one."""
    for name in (checkpoint.CHECKPOINT_FILE, checkpoint.CONFIG_FILE, checkpoint.METRICS_FILE):
        utils.remove_stale_temporaries(model_dir / name)
    settings = config.training
    dataset = dataset or data.load_data(config)
    trainer = Trainer(config, data.training_images(config, dataset.train),
                      data.evaluation_images(config, dataset.validation))
    history, elapsed = [], 0.0
    if arrays is not None:
        history, elapsed = trainer.restore(arrays, model_dir)
        drop_events_after(model_dir / checkpoint.TENSORBOARD_DIR, trainer.step())
    step = trainer.step()
    summary_writer = tf.summary.create_file_writer(str(model_dir / checkpoint.TENSORBOARD_DIR))
    display = Progress(settings.steps, step, label, metrics=("training loss", "validation loss")) if progress else None
    last_checkpoint = step

    def save():
        summary_writer.flush()  # the curves first: whenever a checkpoint exists, the events of its steps are on disk
        checkpoint.save(model_dir, trainer.checkpoint_arrays(history, elapsed))

    with StopRequest() as stop, summary_writer.as_default():
        while step < settings.steps:
            started = time.perf_counter()
            count = min(settings.validation_interval, settings.steps - step)
            indices = data.batch_indices(settings.seed, step, count, settings.batch_size, len(trainer.train_images))
            metrics = {name: values.numpy() for name, values in
                       trainer.train_interval(tf.constant(step, tf.int64), tf.constant(indices)).items()}
            bad = _first_nonfinite(metrics["loss"])
            if bad is not None:
                kept = (f"the last good checkpoint (step {last_checkpoint}) is kept in {model_dir}"
                        if last_checkpoint > 0 else "no checkpoint of this run was saved")
                raise TrainingDiverged(f"the training loss became {metrics['loss'][bad]} at step {step + bad + 1}; "
                                       f"{kept}. Try a smaller --learning-rate")
            step += count
            validation = {name: float(value) for name, value in
                          trainer.validation_metrics(tf.constant(step, tf.int64)).items()}
            elapsed += time.perf_counter() - started
            history.append(_history_row(step, metrics, validation, elapsed))
            _log(history[-1], step)
            if display:
                display.update(step, {"training loss": history[-1]["training_loss"],
                                      "validation loss": history[-1]["validation_loss"]})
            if step // settings.checkpoint_interval > last_checkpoint // settings.checkpoint_interval or stop.signal_number:
                save()
                last_checkpoint = step
            if stop.signal_number:
                raise TrainingInterrupted(step, model_dir, stop.signal_number)
    if last_checkpoint != step or not checkpoint.has_model(model_dir):
        save()
    summary_writer.close()
    return history


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
