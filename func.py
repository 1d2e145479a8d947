"""Training, reconstruction and evaluation: the library behind script.py and the figure scripts.

A model directory holds:

* ``checkpoint.npz``: weights, optimizer state, step, metrics history and the
  configuration, in one file that is replaced atomically, so the directory
  always holds one complete state;
* ``config.json``: the full configuration, human-readable;
* ``metrics.csv``: step, training loss, validation loss, elapsed seconds;
* ``tensorboard/``: the same curves as TensorBoard events.
* ``evaluation.json``: the latest ``evaluate`` result (settings and bounds).

All randomness of a run derives from ``--seed``: initial weights through
``keras.utils.set_random_seed``, the order of examples from a NumPy generator
keyed on (seed, epoch), and every noise draw from a stateless seed keyed on
(seed, step).  A run therefore resumes exactly where it stopped.
"""

import csv
import dataclasses
import functools
import io
import json
import math
import shutil
import signal
import statistics
import sys
import time
import zipfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import network
import utils
from config import (DEFAULT_CHUNK_SIZE, DEFAULT_IMPORTANCE_SAMPLES, EXPERIMENTS, MANIFOLD_SIDE, MAX_CHUNK_IMAGES,
                    METRICS_COLUMNS, RECONSTRUCTED_DIGITS, TrainConfig, result_paths)
from utils import DataError, UsageError

CHECKPOINT_FILE = "checkpoint.npz"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
# Competing units form strided blocks (network._blocks); checkpoints without this mark hold adjacent blocks.
BLOCK_LAYOUT, EARLIER_BLOCK_LAYOUT = "strided", "adjacent"
# Evaluation images are binarized with one fixed draw, the same for every model, so their numbers compare.
EVALUATION_BINARIZATION_SEED = 0
# Independent random streams of a run, folded into the run's seed.
_NOISE_STREAM, _VALIDATION_STREAM, _BINARIZATION_STREAM = 1, 2, 3


# ---------------------------------------------------------------------------
# Data


def load_data(config, data_dir=None):
    """The dataset of `config`, from `data_dir`, else the folder recorded in the configuration, else the defaults."""
    return utils.load_dataset(
        config.dataset,
        data_dir or config.data_dir,
        train_examples=config.train_examples,
        validation_examples=config.validation_examples,
    )


def evaluation_images(config, split):
    """Images of a validation or test split as the model sees them: binarized with one fixed draw if it was trained so."""
    if config.binarize == "none":
        return split.images
    return utils.binarize(split.images, EVALUATION_BINARIZATION_SEED)


def training_images(config, split):
    """Training images: grey levels, or one seeded draw for static binarization (dynamic draws per batch)."""
    if config.binarize == "static":
        return utils.binarize(split.images, [config.seed, _BINARIZATION_STREAM])
    return split.images


def batch_indices(seed, first_step, steps, batch_size, examples):
    """Example indices of `steps` batches starting at `first_step`, shape [steps, batch_size].

    The examples form one stream, reshuffled every epoch with a generator keyed
    on (seed, epoch); a batch may straddle two epochs, as in the original.  The
    result depends only on its arguments, so a resumed run sees the same batches.
    """
    positions = first_step * batch_size + np.arange(steps * batch_size)
    epochs, offsets = np.divmod(positions, examples)
    indices = np.empty_like(positions)
    for epoch in np.unique(epochs):
        order = np.random.default_rng([seed, int(epoch)]).permutation(examples)
        chosen = epochs == epoch
        indices[chosen] = order[offsets[chosen]]
    return indices.reshape(steps, batch_size).astype(np.int32)


# ---------------------------------------------------------------------------
# The compiled training and validation steps


def _stream_seed(seed, stream):
    return network.fold_in(tf.constant([seed, 0], tf.int64), stream)


class Trainer:
    """A model, its optimizer and the compiled functions that train and validate it.

    `train_interval` runs many steps in one XLA-compiled call, gathering each
    batch by index from the training images held as one tensor: on a CPU the
    per-step Python dispatch and the many small kernels of Adam and LWTA cost
    more than the matrix products.  `jit_compile=False` gives the plain graph,
    which draws the same random numbers (see :func:`network.uniform`).
    """

    def __init__(self, config, train_images, validation_images, jit_compile=True):
        keras.utils.set_random_seed(config.seed)
        self.config = config
        self.model = network.VAE(**config.model_arguments())
        self.optimizer = keras.optimizers.Adam(config.learning_rate, epsilon=1e-8)  # TF1's Adam epsilon
        self.optimizer.build(self.model.trainable_variables)
        self.train_images = tf.constant(train_images)
        self.validation_images = tf.constant(validation_images)
        self.noise_seed = _stream_seed(config.seed, _NOISE_STREAM)
        self.validation_seed = _stream_seed(config.seed, _VALIDATION_STREAM)
        self.binarization_seed = _stream_seed(config.seed, _BINARIZATION_STREAM)
        # Partials, not bound methods: TensorFlow counts traces per method across instances, and several
        # Trainers that each trace once (compare_learning.py's runs) would draw its "excessive retracing" warning.
        self.train_interval = tf.function(
            functools.partial(Trainer._train_interval, self),
            input_signature=[tf.TensorSpec([], tf.int64), tf.TensorSpec([None, None], tf.int32)],
            jit_compile=jit_compile,
        )
        self.validation_loss = tf.function(
            functools.partial(Trainer._validation_loss, self), input_signature=[tf.TensorSpec([], tf.int64)],
            jit_compile=jit_compile,
        )

    def beta(self, step):
        """The KL weight at `step`: grows linearly from 0 over the warm-up, then stays at --beta."""
        if self.config.kl_warmup_steps == 0:
            return tf.constant(self.config.beta, tf.float32)
        progress = tf.cast(step + 1, tf.float32) / self.config.kl_warmup_steps
        return self.config.beta * tf.minimum(progress, 1.0)

    def train_step(self, images, step):
        """One Adam update on `images`; returns the batch's negative ELBO (beta = 1), in nats per image."""
        if self.config.binarize == "dynamic":
            draw = network.uniform(tf.shape(images), network.fold_in(self.binarization_seed, step))
            images = tf.cast(draw < images, images.dtype)
        seed = network.fold_in(self.noise_seed, step)
        with tf.GradientTape() as tape:
            mean, log_variance, logits = self.model.forward(images, training=True, seed=seed)
            _, reconstruction, kl = utils.negative_elbo(images, mean, log_variance, logits, self.config.loss)
            objective = tf.reduce_mean(reconstruction + self.beta(step) * kl)
        variables = self.model.trainable_variables
        self.optimizer.apply(tape.gradient(objective, variables), variables)
        return tf.reduce_mean(reconstruction + kl)

    def _train_interval(self, first_step, indices):
        """Run one update per row of `indices` inside one compiled call; returns each step's loss."""
        count = tf.shape(indices)[0]
        losses = tf.TensorArray(tf.float32, size=count)
        for offset in tf.range(count):
            images = tf.gather(self.train_images, indices[offset])
            losses = losses.write(offset, self.train_step(images, first_step + tf.cast(offset, tf.int64)))
        return losses.stack()

    def _validation_loss(self, step):
        """Negative ELBO on the whole validation set, inference mode, z sampled (seeded by `step`)."""
        seed = network.fold_in(self.validation_seed, step)
        mean, log_variance, logits = self.model.forward(self.validation_images, training=False, seed=seed)
        total, _, _ = utils.negative_elbo(self.validation_images, mean, log_variance, logits, self.config.loss)
        return tf.reduce_mean(total)

    def step(self):
        return int(self.optimizer.iterations.numpy())


# ---------------------------------------------------------------------------
# Model directories


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint."""

    def __init__(self, step, model_dir, signal_number):
        super().__init__(
            f"interrupted at step {step}; checkpoint saved in {model_dir}. "
            f"Continue with: python script.py train --model-path {model_dir} --resume"
        )
        self.exit_status = 128 + signal_number


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def drop_events_after(folder, step):
    """Remove the TensorBoard events past `step` from `folder`, so that a run resumed at `step` does not draw
    the steps that its killed or diverged predecessor logged after its last checkpoint a second time."""
    for path in Path(folder).glob("events.out.tfevents.*"):
        records, complete = _read_records(path)
        kept = [record for record in records if tf.compat.v1.Event.FromString(record).step <= step]
        if len(kept) < len(records) or not complete:
            utils.atomic_write(path, functools.partial(_write_records, kept))


def _read_records(path):
    """(the records of a TFRecord file, False if its last record was cut short, as by a kill)."""
    records = []
    try:
        for record in tf.data.TFRecordDataset(str(path)):
            records.append(record.numpy())
    except tf.errors.DataLossError:
        return records, False
    return records, True


def _write_records(records, path):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def has_model(model_dir):
    return (Path(model_dir) / CHECKPOINT_FILE).exists()


def save_checkpoint(model_dir, trainer, history, elapsed):
    """Write the checkpoint atomically, then the readable config.json and metrics.csv."""
    model_dir = Path(model_dir)
    arrays = {f"model_{i:03d}": variable.numpy() for i, variable in enumerate(trainer.model.weights)}
    arrays.update({f"optimizer_{i:03d}": variable.numpy() for i, variable in enumerate(trainer.optimizer.variables)})
    arrays["history"] = np.asarray(history, dtype=np.float64).reshape(-1, len(METRICS_COLUMNS))
    arrays["elapsed"] = np.float64(elapsed)
    arrays["config"] = np.array(trainer.config.to_json())
    arrays["block_layout"] = np.array(BLOCK_LAYOUT)
    utils.atomic_write(model_dir / CHECKPOINT_FILE, lambda temporary: np.savez(temporary, **arrays))
    utils.atomic_write_text(model_dir / CONFIG_FILE, trainer.config.to_json())
    write_metrics_csv(model_dir / METRICS_FILE, history)


def write_metrics_csv(path, history):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(METRICS_COLUMNS)
    for step, training, validation, elapsed in history:
        writer.writerow([int(step), repr(float(training)), repr(float(validation)), f"{elapsed:.3f}"])
    utils.atomic_write_text(path, buffer.getvalue())


def read_metrics_csv(path):
    """The metrics history as a list of (step, training loss, validation loss, elapsed seconds)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [(int(row["step"]), float(row["training_loss"]), float(row["validation_loss"]), float(row["elapsed_seconds"]))
            for row in rows]


def read_checkpoint(model_dir):
    """(config, arrays) of a model directory, with clear errors for every way it can be missing or broken."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise DataError(f"model directory {model_dir} does not exist; train one with: python script.py train --model-path {model_dir}")
    if not model_dir.is_dir():
        raise DataError(f"{model_dir} is not a directory; --model-path names the folder a training run wrote")
    path = model_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise DataError(f"{model_dir} holds no model ({CHECKPOINT_FILE} is missing)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        config = TrainConfig.from_dict(json.loads(str(arrays.pop("config"))))
    except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile) as error:
        raise DataError(f"{path} is truncated or corrupt ({error}); retrain, or restore it from a backup") from None
    _check_config_file(model_dir, config)
    return config, arrays


def _check_config_file(model_dir, config):
    """config.json is a readable copy; if someone edited it, say so rather than ignore it."""
    path = model_dir / CONFIG_FILE
    if not path.exists():
        return
    try:
        readable = TrainConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as error:
        raise DataError(f"{path} is not a valid configuration ({error})") from None
    if readable.model_arguments() != config.model_arguments():
        raise DataError(f"{path} does not match the weights in {CHECKPOINT_FILE} (the model's architecture differs)")


def _assign(variables, arrays, prefix, what):
    names = sorted(name for name in arrays if name.startswith(prefix))
    if len(names) != len(variables):
        raise DataError(f"{what}: the checkpoint holds {len(names)} arrays but the model has {len(variables)} variables")
    for variable, name in zip(variables, names):
        if tuple(arrays[name].shape) != tuple(variable.shape):
            raise DataError(
                f"{what}: {variable.path} has shape {tuple(arrays[name].shape)} in the checkpoint "
                f"but {tuple(variable.shape)} in its configuration"
            )
        variable.assign(arrays[name])


def load_model(model_dir, layer_structure=None):
    """Rebuild a trained model from its directory alone; returns (model, config)."""
    config, arrays = read_checkpoint(model_dir)
    if layer_structure is not None and layer_structure != config.layer_structure:
        raise UsageError(
            f"--layer-structure {layer_structure} disagrees with the model in {model_dir}, "
            f"which is {config.layer_structure}; drop the flag or pick another directory"
        )
    try:
        model = network.VAE(**config.model_arguments())
    except ValueError as error:
        raise DataError(f"{model_dir}: invalid configuration ({error})") from None
    _assign(model.weights, arrays, "model_", f"{model_dir}/{CHECKPOINT_FILE} does not match its configuration")
    if block_layout(arrays) == EARLIER_BLOCK_LAYOUT:
        network.adjacent_to_strided(model)
    return model, config


def block_layout(arrays):
    return str(arrays.get("block_layout", EARLIER_BLOCK_LAYOUT))


def _restore_training_state(trainer, model_dir, arrays):
    """Load the checkpoint `arrays` of `model_dir` into `trainer`: weights, optimizer state; returns (history, elapsed)."""
    what = f"{model_dir}/{CHECKPOINT_FILE} does not match its configuration"
    if block_layout(arrays) == EARLIER_BLOCK_LAYOUT and trainer.config.layer_structure != "none":
        raise DataError(f"{model_dir} was trained with adjacent LWTA blocks by an earlier version; it can be "
                        "evaluated, reconstructed and sampled, but not resumed")
    _assign(trainer.model.weights, arrays, "model_", what)
    _assign(trainer.optimizer.variables, arrays, "optimizer_", what)
    history = [tuple(row) for row in arrays["history"].tolist()]
    return history, float(arrays["elapsed"])


def prepare_model_dir(model_dir, resume, overwrite):
    """Check what is in `model_dir` against --resume / --overwrite before any work starts."""
    model_dir = Path(model_dir)
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if model_dir.exists() and not model_dir.is_dir():
        raise UsageError(f"--model-path {model_dir} is a file; it must name a directory")
    if resume and not has_model(model_dir):
        raise UsageError(f"--resume: {model_dir} holds no checkpoint to resume from")
    if has_model(model_dir) and not resume and not overwrite:
        raise UsageError(f"{model_dir} already exists; pass --resume to continue it or --overwrite to replace it")
    utils.check_writable(model_dir / CHECKPOINT_FILE)


# ---------------------------------------------------------------------------
# Training


class _StopRequest:
    """Turns SIGINT/SIGTERM into a flag the training loop checks between intervals."""

    def __init__(self):
        self.signal_number = None

    def __enter__(self):
        self.previous = {}
        for number in (signal.SIGINT, signal.SIGTERM):
            self.previous[number] = signal.signal(number, self._request)
        return self

    def _request(self, number, frame):
        self.signal_number = number

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)


class _Progress:
    """A Keras progress bar on a terminal, a line every tenth of the work otherwise.

    Counts `unit`s (steps, images) up to `total`; what is shown holds the named
    `metrics` and the rate since the previous display.
    """

    def __init__(self, total, done=0, label="", unit="step", metrics=()):
        self.total, self.label, self.unit = total, label, unit
        self.rate_name = f"{unit}s/s"
        self.bar = (keras.utils.Progbar(total, stateful_metrics=[*metrics, self.rate_name], unit_name=unit)
                    if sys.stdout.isatty() else None)
        self.next_line = done
        self.last_time, self.last_done = time.perf_counter(), done

    def update(self, done, values):
        """Show `done` units and `values`, a {metric name: number} dictionary, if it is time to."""
        if self.bar is None and done < self.next_line and done != self.total:
            return
        now = time.perf_counter()
        rate = (done - self.last_done) / max(now - self.last_time, 1e-9)
        self.last_time, self.last_done = now, done
        if self.bar is not None:
            self.bar.update(done, [*values.items(), (self.rate_name, rate)])
        else:
            shown = "".join(f"  {name} {value:.3f}" for name, value in values.items())
            print(f"{self.label}{self.unit} {done}/{self.total}{shown}  {rate:.0f} {self.rate_name}", flush=True)
            self.next_line = done + max(1, self.total // 10)


def _first_nonfinite(losses):
    bad = np.flatnonzero(~np.isfinite(losses))
    return int(bad[0]) if bad.size else None


def train(config, model_dir, overwrite=False, dataset=None, progress=True, label=""):
    """Train a new model into `model_dir`; returns the metrics history.

    `dataset` may be passed to reuse loaded data (figure scripts train several
    models on one copy).  Raises TrainingInterrupted after saving a checkpoint on
    SIGINT/SIGTERM, and TrainingDiverged (keeping the last checkpoint) on a
    non-finite loss.
    """
    prepare_model_dir(model_dir, resume=False, overwrite=overwrite)
    config.validate()
    dataset = dataset or load_data(config)
    shutil.rmtree(Path(model_dir) / TENSORBOARD_DIR, ignore_errors=True)  # curves of a replaced run
    return _run(config, Path(model_dir), None, dataset, progress, label)


def resume(model_dir, overrides=None, dataset=None, progress=True, label=""):
    """Continue the run saved in `model_dir` from its checkpoint; returns the whole metrics history.

    `overrides` holds the flags the user gave: --steps and --checkpoint-interval
    may change, any other value that differs from the saved run is an error.
    """
    prepare_model_dir(model_dir, resume=True, overwrite=False)
    saved, arrays = read_checkpoint(model_dir)
    config = _resumed_config(saved, overrides or {})
    config.validate()
    return _run(config, Path(model_dir), arrays, dataset, progress, label)


def _resumed_config(saved, overrides):
    """The saved configuration with the changeable `overrides` applied; any other difference is a UsageError."""
    changeable = {"steps", "checkpoint_interval", "data_dir"}
    for name, wanted in overrides.items():
        had = getattr(saved, name)
        if name not in changeable and wanted != had:
            raise UsageError(
                f"--{name.replace('_', '-')} {wanted} disagrees with the saved run's {had}; "
                "a resumed run keeps its configuration (only --steps and --checkpoint-interval may change)"
            )
    return dataclasses.replace(saved, **{name: overrides[name] for name in changeable & set(overrides)})


def _run(config, model_dir, checkpoint, dataset, progress, label):
    """The training loop; `checkpoint` holds the arrays of a resumed run, None for a new one."""
    for name in (CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE):
        utils.remove_stale_temporaries(model_dir / name)
    dataset = dataset or load_data(config)
    trainer = Trainer(config, training_images(config, dataset.train), evaluation_images(config, dataset.validation))
    history, elapsed = [], 0.0
    if checkpoint is not None:
        history, elapsed = _restore_training_state(trainer, model_dir, checkpoint)
        drop_events_after(model_dir / TENSORBOARD_DIR, trainer.step())
    step = trainer.step()
    summary_writer = tf.summary.create_file_writer(str(model_dir / TENSORBOARD_DIR))
    display = _Progress(config.steps, step, label, metrics=("training loss", "validation loss")) if progress else None
    last_checkpoint = step

    def save():
        summary_writer.flush()  # the curves first: whenever a checkpoint exists, the events of its steps are on disk
        save_checkpoint(model_dir, trainer, history, elapsed)

    with _StopRequest() as stop, summary_writer.as_default():
        while step < config.steps:
            started = time.perf_counter()
            count = min(config.validation_interval, config.steps - step)
            indices = batch_indices(config.seed, step, count, config.batch_size, len(trainer.train_images))
            losses = trainer.train_interval(tf.constant(step, tf.int64), tf.constant(indices)).numpy()
            bad = _first_nonfinite(losses)
            if bad is not None:
                kept = (f"the last good checkpoint (step {last_checkpoint}) is kept in {model_dir}"
                        if last_checkpoint > 0 else "no checkpoint of this run was saved")
                raise TrainingDiverged(
                    f"the training loss became {losses[bad]} at step {step + bad + 1}; {kept}. "
                    "Try a smaller --learning-rate"
                )
            step += count
            validation_loss = float(trainer.validation_loss(tf.constant(step, tf.int64)))
            elapsed += time.perf_counter() - started
            history.append((step, float(np.mean(losses)), validation_loss, elapsed))
            tf.summary.scalar("loss/training", history[-1][1], step=step)
            tf.summary.scalar("loss/validation", validation_loss, step=step)
            if display:
                display.update(step, {"training loss": history[-1][1], "validation loss": validation_loss})
            if step // config.checkpoint_interval > last_checkpoint // config.checkpoint_interval or stop.signal_number:
                save()
                last_checkpoint = step
            if stop.signal_number:
                raise TrainingInterrupted(step, model_dir, stop.signal_number)
    if last_checkpoint != step or not has_model(model_dir):
        save()
    summary_writer.close()
    return history


# ---------------------------------------------------------------------------
# Reconstruction


def png_path(path):
    """`path` as a Path, with ".png" appended unless it already ends so."""
    path = Path(path)
    return path if path.suffix.lower() == ".png" else path.with_name(path.name + ".png")


def reconstruct_images(model, images, sample=False, seed=1):
    """Inference-mode reconstructions: decode the posterior mean, or a sampled z with `sample`."""
    mean, log_variance = model.encode(images, training=False)
    z = model.reparameterize(mean, log_variance, seed=tf.constant([seed, 0], tf.int64)) if sample else mean
    return model.decode(z, training=False).numpy()


def reconstruct(model_dir, output_path, index=0, grid=None, sample=False, layer_structure=None, seed=1, data_dir=None):
    """Write the reconstruction of validation image `index` (or a grid of the first `grid`) as a grayscale PNG."""
    output_path = png_path(output_path)
    utils.check_writable(output_path)
    model, config = load_model(model_dir, layer_structure)
    validation = load_data(config, data_dir).validation
    images = evaluation_images(config, validation)
    count = len(images)
    if grid is not None:
        if not 1 <= grid <= count:
            raise UsageError(f"--grid must be between 1 and {count} (the validation images), got {grid}")
        originals = images[:grid]
        reconstructions = reconstruct_images(model, originals, sample, seed)
        picture = np.concatenate([utils.tile_images(originals, grid), utils.tile_images(reconstructions, grid)])
    else:
        if not 0 <= index < count:
            raise UsageError(f"--mnist-index {index} is outside the validation split (0 to {count - 1})")
        picture = utils.tile_images(reconstruct_images(model, images[index : index + 1], sample, seed), 1)
    utils.save_grayscale_png(output_path, picture)
    return output_path


# ---------------------------------------------------------------------------
# Pictures of the generative model


def first_rows(array, limit):
    """The first `limit` rows of `array` (all of them when `limit` is None)."""
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    return array[:limit]


def sample(model_dir, output_path, count=100, seed=1):
    """Decode `count` prior draws z ~ N(0, I) (inference mode) into a square-ish grid; returns the PNG's path."""
    if count < 1:
        raise UsageError(f"--count must be at least 1, got {count}")
    output_path = png_path(output_path)
    utils.check_writable(output_path)
    model, _ = load_model(model_dir)
    z = network.normal([count, model.latent_dim], tf.constant([seed, 0], tf.int64))
    digits = model.decode(z, training=False).numpy()
    utils.save_grayscale_png(output_path, utils.tile_images(digits, math.ceil(math.sqrt(count))))
    return output_path


def principal_plane(points):
    """(coordinates [count, 2], axis names): the points themselves in 2-D, else their first two principal components.

    A 1-D latent space is drawn on a line (second coordinate 0).
    """
    dimensions = points.shape[1]
    if dimensions == 1:
        return np.column_stack([points[:, 0], np.zeros(len(points))]), ("z1", "")
    if dimensions == 2:
        return points, ("z1", "z2")
    centred = points - points.mean(axis=0)
    _, singular_values, directions = np.linalg.svd(centred, full_matrices=False)
    explained = singular_values**2 / max(np.sum(singular_values**2), np.finfo(float).tiny)
    names = tuple(f"principal component {i + 1} ({explained[i]:.0%} of the variance)" for i in range(2))
    return centred @ directions[:2].T, names


def latent_figure(coordinates, labels, axis_names, title):
    """A scatter plot of `coordinates` coloured by label (0-9), with a colour bar."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    figure = Figure(figsize=(7, 6), layout="constrained")
    axes = figure.subplots()
    points = axes.scatter(coordinates[:, 0], coordinates[:, 1], c=labels, cmap="tab10", vmin=-0.5, vmax=9.5,
                          s=4, alpha=0.7, linewidths=0)
    figure.colorbar(points, ax=axes, ticks=range(10), label="label")
    axes.set(xlabel=axis_names[0], ylabel=axis_names[1], title=title)
    return figure


def manifold(model, side=MANIFOLD_SIDE):
    """Decoded digits over the latent plane of a 2-D model, [side * 28, side * 28] pixels.

    The grid points are evenly spaced in prior probability (the inverse normal
    CDF of (i + 0.5) / side), so each covers the same prior mass; z2 grows upwards.
    """
    values = [statistics.NormalDist().inv_cdf((i + 0.5) / side) for i in range(side)]
    z = np.array([(z1, z2) for z2 in reversed(values) for z1 in values], dtype=np.float32)
    return utils.tile_images(model.decode(z, training=False).numpy(), side)


def latent(model_dir, output_path, data_dir=None, limit=None):
    """Plot the test images' posterior means (inference mode) coloured by label; returns the paths written.

    More than two latent dimensions are projected on their first two principal
    components.  A 2-D model also gets its decoded manifold, written next to the
    plot as <stem>_manifold.png.  `limit` keeps the first test images only.
    """
    output_path = png_path(output_path)
    utils.check_writable(output_path)
    model, config = load_model(model_dir)
    test = load_data(config, data_dir).test
    images, labels = first_rows(evaluation_images(config, test), limit), first_rows(test.labels, limit)
    mean, _ = model.encode(images, training=False)
    coordinates, axis_names = principal_plane(mean.numpy())
    title = f"{config.dataset} test set: posterior means of {len(images)} images ({config.layer_structure})"
    utils.save_figure(latent_figure(coordinates, labels, axis_names, title), output_path, dpi=120)
    if model.latent_dim != 2:
        return [output_path]
    manifold_path = output_path.with_name(f"{output_path.stem}_manifold.png")
    utils.save_grayscale_png(manifold_path, manifold(model))
    return [output_path, manifold_path]


# ---------------------------------------------------------------------------
# Evaluation: the importance-weighted bound on log p(x) (Burda et al. 2015)

EVALUATION_FILE = "evaluation.json"
DECODE_ROWS = 2500  # samples decoded at once inside a call: their activations stay in the CPU's cache


def chunk_shape(image_count, importance_samples, chunk_size):
    """(images, samples) per compiled call: about `chunk_size` image-samples, the K samples split evenly,
    and at most MAX_CHUNK_IMAGES images."""
    if chunk_size < 1:
        raise ValueError(f"chunk size must be at least 1, got {chunk_size}")
    sample_chunks = -(-importance_samples // chunk_size)
    samples = -(-importance_samples // sample_chunks)
    return min(image_count, MAX_CHUNK_IMAGES, max(1, chunk_size // samples)), samples


def importance_noise(seed, indices, importance_samples, latent_dim):
    """epsilon ~ N(0, I), [images, K, latent]: image i's draws depend on (seed, i) alone, never on the chunking.

    `indices` has a static length; one draw per image, unrolled, compiles into
    fused loops twice as fast as a `map_fn` over the images.
    """
    base = tf.constant([seed, 0], tf.int64)
    return tf.stack([network.normal([importance_samples, latent_dim], network.fold_in(base, index))
                     for index in tf.unstack(indices)])


def pad(array, size):
    """`array` padded with zero rows to `size` rows, so that every compiled call sees one shape."""
    return np.pad(array, [(0, size - len(array))] + [(0, 0)] * (array.ndim - 1))


def sum_last_axis(values):
    """Sum over the last axis, as a product with a vector of ones.

    XLA on the CPU runs a long sum over the last axis of a fused elementwise
    expression as a slow reduce-window (seen in TensorFlow's profiler); a
    matrix-vector product with ones runs as one fast kernel.
    """
    return tf.linalg.matvec(values, tf.ones(values.shape[-1:], values.dtype))


@tf.function(jit_compile=True)
def posterior_samples(mean, log_variance, noise):
    """z = mean + exp(log_variance / 2) * noise, [n, samples, latent], and log p(z) - log q(z|x), [n, samples].

    With p(z) = N(0, I) and q(z|x) = N(mean, exp(log_variance)), the log(2 pi)
    terms cancel: log p(z) - log q(z|x) = (sum(noise^2 - z^2) + sum(log_variance)) / 2.
    """
    z = mean[:, None] + tf.exp(0.5 * log_variance)[:, None] * noise
    half_squares_difference = 0.5 * sum_last_axis(tf.square(noise) - tf.square(z))
    return z, half_squares_difference + 0.5 * tf.reduce_sum(log_variance, axis=-1)[:, None]


def log_weights(log_likelihood, images, mean, log_variance, noise):
    """log w = log p(x|z) + log p(z) - log q(z|x) at z = mean + exp(log_variance / 2) * noise.

    `images` [n, D], `mean` and `log_variance` [n, latent], `noise` [n, samples,
    latent].  `log_likelihood(x, z)` gets x as [n, 1, D] and z as [n, samples,
    latent].  Returns (log w, log p(x|z)), each [n, samples].
    """
    z, log_prior_ratio = posterior_samples(mean, log_variance, noise)
    log_p_x_given_z = log_likelihood(images[:, None], z)
    return log_p_x_given_z + log_prior_ratio, log_p_x_given_z


def decoder_log_likelihood(model, loss):
    """log p(x|z) of a VAE, for :func:`log_weights`: x [n, 1, D], z [n, samples, latent] -> [n, samples].

    The decoder's matrix products run in TensorFlow's own kernels, which are
    faster than XLA's at these shapes, on about DECODE_ROWS samples at a time.
    XLA compiles the per-pixel likelihood and the LWTA competition, each into
    one pass; ReLU stays fused into TensorFlow's matrix product.
    """
    @tf.function(jit_compile=True)
    def per_pixel(x, logits):
        return -utils.reconstruction_loss(tf.broadcast_to(x, tf.shape(logits)), logits, loss, sum_pixels=sum_last_axis)

    if model.layer_structure == "none":
        decode_logits = functools.partial(model.decode_logits, training=False)
    else:
        compete = tf.function(functools.partial(model.decoder_activation, training=False), jit_compile=True)
        decode_logits = lambda z: model.decoder_output(compete(model.decoder_hidden(z)))  # noqa: E731

    def decode_part(x, z):
        logits = decode_logits(tf.reshape(z, [-1, z.shape[-1]]))
        return per_pixel(x, tf.reshape(logits, tf.concat([tf.shape(z)[:-1], [-1]], 0)))

    def log_likelihood(x, z):
        return tf.concat([decode_part(x, part) for part in decode_parts(z)], axis=1)

    return log_likelihood


def decode_parts(z):
    """z, [images, samples, latent], cut along the samples into parts of about DECODE_ROWS image-samples."""
    images, samples = z.shape[:2]
    parts = min(samples, max(1, images * samples // DECODE_ROWS))
    return tf.split(z, [len(part) for part in np.array_split(np.arange(samples), parts)], axis=1)


@tf.function(jit_compile=True)
def chunk_noise(seed, indices, importance_samples, latent_dim, chunk_samples, first_sample):
    """Samples first_sample, ..., first_sample + chunk_samples - 1 of :func:`importance_noise` (zero past the K-th).

    XLA fuses the slice into the draws, so when K exceeds the chunk size (one
    image per call then; one sample chunk at the defaults) a call computes
    about its own samples' draws, not all K.
    """
    noise = importance_noise(seed, indices, importance_samples, latent_dim)
    padded = tf.pad(noise, [[0, 0], [0, -importance_samples % chunk_samples], [0, 0]])
    return tf.slice(padded, tf.stack([0, first_sample, 0]), [-1, chunk_samples, -1])


def chunk_weights(log_likelihood, importance_samples, chunk_samples, seed, images, mean, log_variance, indices,
                   first_sample):
    """:func:`log_weights` of one chunk of samples; each image's K draws are made in the call, the chunk sliced."""
    noise = chunk_noise(seed, indices, importance_samples, mean.shape[-1], chunk_samples, first_sample)
    return log_weights(log_likelihood, images, mean, log_variance, noise)


def _sums_over_samples(weigh, x, mean, log_variance, indices, count, importance_samples, chunk_samples):
    """(logsumexp_k log w_k, sum_k log p(x|z_k)) for the first `count` (real) images of one padded image chunk `x`.

    The samples go through `weigh` (:func:`log_weights` of one sample chunk) in
    chunks of `chunk_samples`; the log-sum-exp runs across chunks.
    """
    log_sum, log_likelihood_sum = np.full(count, -np.inf), np.zeros(count)
    for start in range(0, importance_samples, chunk_samples):
        real = min(chunk_samples, importance_samples - start)
        weights, log_likelihoods = (tensor.numpy()[:count, :real].astype(np.float64)
                                    for tensor in weigh(x, mean, log_variance, indices, tf.constant(start)))
        log_sum = np.logaddexp(log_sum, np.logaddexp.reduce(weights, axis=1))
        log_likelihood_sum += log_likelihoods.sum(axis=1)
    return log_sum, log_likelihood_sum


def importance_weighted_bounds(encode, log_likelihood, images, importance_samples,
                               chunk_size=DEFAULT_CHUNK_SIZE, seed=1, progress=False):
    """Per-image estimate of log p(x) and the ELBO's parts, from K samples z_k ~ q(z|x), in nats.

    log p(x) ~ logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K,
    with p(z) = N(0, I), q(z|x) = N(mean, exp(log_variance)) from `encode(x) ->
    (mean, log_variance)`, and `log_likelihood(x, z) -> log p(x|z)` per row.  The
    same samples give the reconstruction term, mean_k -log p(x|z_k); the KL is
    analytic.  The work goes in chunks of about `chunk_size` image-samples: each
    image chunk is encoded once and its samples decoded in compiled calls of
    one fixed shape, so memory stays bounded.  Image i's draws depend on (seed,
    i) only, so the numbers do not depend on the chunking.  Returns NumPy arrays
    (log p(x) estimate, reconstruction, kl), each [images].
    """
    if importance_samples < 1:
        raise ValueError(f"importance samples must be at least 1, got {importance_samples}")
    images = np.asarray(images, np.float32)
    count = len(images)
    if count == 0:
        raise ValueError("no images to evaluate")
    chunk_images, chunk_samples = chunk_shape(count, importance_samples, chunk_size)
    encode_chunk = tf.function(encode)
    weigh = tf.function(functools.partial(chunk_weights, log_likelihood, importance_samples, chunk_samples, seed))
    log_sum, log_likelihood_sum, kl = np.zeros(count), np.zeros(count), np.zeros(count)
    display = _Progress(count, unit="image", metrics=("-log p(x)",)) if progress else None
    for start in range(0, count, chunk_images):
        stop = min(start + chunk_images, count)
        x = pad(images[start:stop], chunk_images)
        mean, log_variance = encode_chunk(x)
        log_sum[start:stop], log_likelihood_sum[start:stop] = _sums_over_samples(
            weigh, x, mean, log_variance, tf.range(start, start + chunk_images, dtype=tf.int64), stop - start,
            importance_samples, chunk_samples)
        kl[start:stop] = utils.kl_divergence(mean, log_variance).numpy()[: stop - start]
        if display:
            display.update(stop, {"-log p(x)": math.log(importance_samples) - np.mean(log_sum[:stop])})
    return log_sum - math.log(importance_samples), -log_likelihood_sum / importance_samples, kl


def mean_and_standard_error(values):
    """{"mean", "standard_error"} of per-image numbers (standard error None for a single image)."""
    values = np.asarray(values, np.float64)
    error = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
    return {"mean": float(np.mean(values)), "standard_error": error}


def evaluate(model_dir, split="test", importance_samples=DEFAULT_IMPORTANCE_SAMPLES, chunk_size=DEFAULT_CHUNK_SIZE,
             seed=1, data_dir=None, limit=None, progress=True):
    """-log p(x) (importance-weighted) and the negative ELBO of a saved model, per image in nats, inference mode.

    Evaluates the first `limit` images (default all) of the validation or test
    split and writes the settings, the means with their standard errors across
    images and the seconds taken to model_dir/evaluation.json; returns that dictionary.
    """
    if split not in ("validation", "test"):
        raise UsageError(f"--split must be validation or test, got {split!r}")
    for name, value in (("importance-samples", importance_samples), ("chunk-size", chunk_size)):
        if value < 1:
            raise UsageError(f"--{name} must be at least 1, got {value}")
    model, config = load_model(model_dir)
    path = Path(model_dir) / EVALUATION_FILE
    utils.check_writable(path)
    images = first_rows(evaluation_images(config, load_data(config, data_dir).split(split)), limit)
    started = time.perf_counter()
    log_likelihood, reconstruction, kl = importance_weighted_bounds(
        lambda x: model.encode(x, training=False),
        decoder_log_likelihood(model, config.loss),
        images, importance_samples, chunk_size, seed, progress,
    )
    per_image = {"negative_log_likelihood": -log_likelihood, "negative_elbo": reconstruction + kl,
                 "reconstruction": reconstruction, "kl": kl}
    results = {
        "settings": {"split": split, "importance_samples": importance_samples, "chunk_size": chunk_size,
                     "seed": seed, "images": len(images), "model": dataclasses.asdict(config)},
        "nats_per_image": {name: mean_and_standard_error(values) for name, values in per_image.items()},
        "seconds": time.perf_counter() - started,
    }
    utils.atomic_write_text(path, json.dumps(results, indent=2) + "\n")
    return results


# ---------------------------------------------------------------------------
# The original's experiments: train_*.py, create_comparison_figure.py, compare_learning.py


def experiment_config(name, **overrides):
    """The TrainConfig of experiment `name`: the original's settings, changed by `overrides` (TrainConfig fields)."""
    if name not in EXPERIMENTS:
        raise UsageError(f"unknown experiment {name!r}; use one of {', '.join(EXPERIMENTS)}")
    settings = EXPERIMENTS[name]
    config = TrainConfig(layer_structure=settings.layer_structure, learning_rate=settings.learning_rate,
                         batch_size=settings.batch_size, steps=settings.steps)
    config = dataclasses.replace(config, **overrides)
    if config.validation_examples < RECONSTRUCTED_DIGITS:
        raise UsageError(f"--validation-examples must be at least {RECONSTRUCTED_DIGITS}, the digits that are "
                         f"reconstructed; got {config.validation_examples}")
    return config


def write_reconstructions(model_dir, dataset=None):
    """Reconstruct the first validation digits of `dataset` (default: the model's own) with the saved model
    (posterior mean, inference mode) and write each as a 28x28 grayscale PNG; returns the paths."""
    model, config = load_model(model_dir)
    images = evaluation_images(config, (dataset or load_data(config)).validation)[:RECONSTRUCTED_DIGITS]
    paths = result_paths(model_dir)
    for path, reconstruction in zip(paths, reconstruct_images(model, images)):
        utils.save_grayscale_png(path, reconstruction.reshape(utils.IMAGE_SIDE, utils.IMAGE_SIDE))
    return paths


def train_and_reconstruct(name, models_dir="saved_models", overwrite=False, dataset=None, progress=True, **overrides):
    """One round of a train_*.py script: train experiment `name` into models_dir/name, then write its results.

    `overrides` change the original's settings (TrainConfig fields, e.g. steps=20).  Prints the settings
    first.  `dataset` may be passed to reuse loaded data.  Returns the metrics history.
    """
    config = experiment_config(name, **overrides)
    config.validate()
    model_dir = Path(models_dir) / name
    if has_model(model_dir) and not overwrite:
        raise UsageError(f"{model_dir} already exists; pass --overwrite to replace it or --resume to continue it")
    print(f"{name}: layer structure {config.layer_structure}, learning rate {config.learning_rate:g}, "
          f"batch size {config.batch_size}, {config.steps} steps, seed {config.seed}, {config.train_examples} "
          f"training and {config.validation_examples} validation images -> {model_dir}", flush=True)
    dataset = dataset or load_data(config)
    history = train(config, model_dir, overwrite=overwrite, dataset=dataset, progress=progress)
    write_reconstructions(model_dir, dataset)  # replaces a previous model's results, each file atomically
    return history


def resume_and_reconstruct(name, models_dir="saved_models", progress=True, **overrides):
    """Continue experiment `name` in models_dir/name from its checkpoint, then rewrite its results.

    `overrides` are the TrainConfig fields the user gave; as for :func:`resume`,
    only steps, checkpoint_interval and data_dir may differ from the saved run.
    Returns the whole metrics history.
    """
    model_dir = Path(models_dir) / name
    print(f"{name}: resuming {model_dir}", flush=True)
    history = resume(model_dir, overrides, progress=progress)
    write_reconstructions(model_dir)
    return history
