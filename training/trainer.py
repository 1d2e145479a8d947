"""A model of any family, its optimizer, and the compiled calls that train and validate it."""

import functools

import keras
import tensorflow as tf

import models
import network
from models.base import optimizer
from training import checkpoint, data


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

    def checkpoint_arrays(self, history, elapsed, partial):
        return checkpoint.checkpoint_arrays(self.config, self.model, self.optimizer, self.extra_state, history,
                                            elapsed, partial)

    def restore(self, arrays, model_dir):
        """Load checkpoint `arrays` into the model, the optimizer and the extra state; returns (history, elapsed,
        the per-step metrics of an interval cut short by an interruption)."""
        what = f"{model_dir}/{checkpoint.CHECKPOINT_FILE} does not match its configuration"
        checkpoint.assign(checkpoint.by_path(self.model.weights), arrays, checkpoint.MODEL, what)
        checkpoint.assign(checkpoint.by_path(self.optimizer.variables), arrays, checkpoint.OPTIMIZER, what)
        checkpoint.assign(self.extra_state, arrays, checkpoint.STATE, what)
        return checkpoint.history_of(arrays), float(arrays["elapsed"]), checkpoint.partial_of(arrays)
