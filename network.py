"""The variational autoencoder and its local winner-take-all (LWTA) layers.

Three hidden-layer structures share one 784-500-100-500-784 architecture:

* ``none``: ReLU hidden layers (the plain VAE);
* ``lwta``: linear units in blocks; the largest unit of each block keeps its
  value and the others output 0 (Srivastava et al. 2013);
* ``p-lwta``: probabilistic LWTA; in training one survivor per block is drawn
  from the softmax of the block's values, in inference every unit is scaled by
  its softmax probability (the expected training output).

Random draws are stateless: every draw is a pure function of an explicit
``seed`` tensor of shape [2], so a training run can derive all its noise from
``(--seed, step)`` and be resumed exactly.  Where no seed is given, Keras's
global seed generator (set by ``keras.utils.set_random_seed``) is used.
"""

import functools

import keras
import numpy as np
import tensorflow as tf

from models.vae.config import LAYER_STRUCTURES


def check_block_size(width, block_size):
    """Raise ValueError unless `block_size` is valid for a layer of `width` units."""
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block size must be a positive integer, got {block_size!r}")
    if width % block_size:
        raise ValueError(
            f"block size {block_size} does not divide the layer width {width}; "
            f"choose a divisor of {width}"
        )


def _blocks(x, block_size):
    """The last axis of `x` cut into `block_size` equal slices; block i is unit i of every slice.

    Block i thus holds units i, i + W/k, ..., i + (k-1)W/k of a layer of W
    units (strided blocks).  Srivastava et al. and the original group adjacent
    units (ik, ..., ik + k-1) instead; with independently initialised weights
    the two are the same model up to a relabelling of the units (see
    training.migration.relabel_adjacent_blocks), and strided blocks keep every operation on
    contiguous vectors of W/k units, which is about 10% faster a training step.
    """
    check_block_size(x.shape[-1], block_size)
    return tf.split(x, block_size, axis=-1)


# Seed derivations use Philox; TensorFlow's kernels and XLA compute them alike.
RANDOM_ALGORITHM = "philox"


def fold_in(seed, data):
    """A new stateless seed from `seed` and an integer `data` (a step, a stream number)."""
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(data, tf.int64), alg=RANDOM_ALGORITHM)


def split_seed(seed, count):
    """`count` independent seeds derived from `seed` (a list of None when `seed` is None)."""
    if seed is None:
        return [None] * count
    return tf.unstack(tf.random.experimental.stateless_split(seed, count, alg=RANDOM_ALGORITHM))


@tf.function(jit_compile=True)
def _threefry_uniform(shape, seed, dtype):
    """Seeded U[0, 1) draws from XLA's ThreeFry (TensorFlow's own kernels have none), always compiled: compiling
    it on its own (inlined into callers that are compiled already) gives one seed the same numbers in eager,
    graph and XLA code.  bench.py times it against XLA's Philox."""
    return tf.random.stateless_uniform(shape, tf.cast(seed, tf.int64), dtype=dtype, alg="threefry")


def uniform(shape, seed, dtype=tf.float32):
    """U[0, 1) draws: stateless from `seed`, or from Keras's global generator when `seed` is None."""
    if seed is None:
        return keras.random.uniform(shape, dtype=dtype)
    return _threefry_uniform(shape, seed, dtype)


def normal(shape, seed, dtype=tf.float32):
    """N(0, 1) draws, seeded like :func:`uniform`.

    Seeded draws invert the normal CDF at uniform numbers moved half a step off
    0 (so no draw is infinite): about twice as fast under XLA as its own normal sampler (see bench.py).
    """
    if seed is None:
        return keras.random.normal(shape, dtype=dtype)
    half_step = 0.5 * np.finfo(dtype.as_numpy_dtype).eps
    return tf.math.ndtri(uniform(shape, seed, dtype) + half_step)


def _first_winner(values):
    """Index of the largest of `values` (a list of equal-shape tensors), elementwise; the first wins a tie."""
    best, winner = values[0], tf.zeros_like(values[0], tf.int32)
    for index, value in enumerate(values[1:], start=1):
        better = value > best
        best, winner = tf.where(better, value, best), tf.where(better, index, winner)
    return winner


def _keep(values, survivor):
    """Each unit where it is its block's `survivor`, 0 elsewhere; gradients reach the survivors only."""
    return tf.concat(
        [tf.where(survivor == index, value, tf.zeros_like(value)) for index, value in enumerate(values)], axis=-1
    )


def lwta(x, block_size=2):
    """Deterministic local winner-take-all over the last axis of `x`.

    Units form blocks of `block_size` (strided, see :func:`_blocks`).  In each
    block the unit with the largest value keeps it, negative values included,
    and the others output 0.  On an exact tie the first unit wins, as
    ``argmax`` does; the original kept every tied unit.  Gradients reach only
    the winners.
    """
    values = _blocks(x, block_size)
    return _keep(values, _first_winner(values))


def probabilistic_lwta(x, training, block_size=2, seed=None):
    """Probabilistic local winner-take-all over the last axis of `x`.

    Training: in each block exactly one unit survives, drawn from the softmax of
    the block's values; it keeps its raw value, unscaled, and the others output
    0.  The draw inverts the block's cumulative softmax at one uniform number per
    block (for blocks of 2: unit 0 survives when u < p0, as in the original).  No
    gradient flows through the choice, only through the survivor's value.

    Inference: every unit is multiplied by its softmax probability, which is the
    expected training output for a fixed input.
    """
    values = _blocks(x, block_size)
    largest = functools.reduce(tf.maximum, values)
    weights = [tf.exp(value - largest) for value in values]  # softmax numerators, the largest is 1
    total = tf.add_n(weights)
    if not training:
        return tf.concat([value * weight / total for value, weight in zip(values, weights)], axis=-1)
    threshold = uniform(tf.shape(total), seed, x.dtype) * total
    below = tf.zeros_like(total, tf.int32)  # how many cumulative weights lie at or below the threshold
    cumulative = tf.zeros_like(total)
    for weight in weights[:-1]:
        cumulative += weight
        below += tf.cast(cumulative <= threshold, tf.int32)
    return _keep(values, tf.stop_gradient(below))


class LWTA(keras.layers.Layer):
    """Keras layer for :func:`lwta`."""

    def __init__(self, block_size=2, **kwargs):
        super().__init__(**kwargs)
        self.block_size = block_size

    def build(self, input_shape):
        check_block_size(input_shape[-1], self.block_size)

    def call(self, inputs, training=False, seed=None):
        return lwta(inputs, self.block_size)


class ProbabilisticLWTA(keras.layers.Layer):
    """Keras layer for :func:`probabilistic_lwta`."""

    def __init__(self, block_size=2, **kwargs):
        super().__init__(**kwargs)
        self.block_size = block_size

    def build(self, input_shape):
        check_block_size(input_shape[-1], self.block_size)

    def call(self, inputs, training=False, seed=None):
        return probabilistic_lwta(inputs, training, self.block_size, seed)


class Rectifier(keras.layers.Layer):
    """ReLU with the call signature of the competition layers (the `none` structure)."""

    def call(self, inputs, training=False, seed=None):
        return tf.nn.relu(inputs)


class Linear(keras.layers.Layer):
    """No activation: the mean and log-variance heads when they do not compete."""

    def call(self, inputs, training=False, seed=None):
        return inputs


def _hidden_activation(layer_structure, block_size):
    if layer_structure == "lwta":
        return LWTA(block_size)
    if layer_structure == "p-lwta":
        return ProbabilisticLWTA(block_size)
    return Rectifier()


def _dense(units, name):
    """Dense layer initialised like the original: truncated normal (stddev 0.1) weights *and* biases."""
    return keras.layers.Dense(
        units,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.1),
        bias_initializer=keras.initializers.TruncatedNormal(stddev=0.1),
        name=name,
    )


@keras.saving.register_keras_serializable(package="wta_vae")
class VAE(keras.Model):
    """784-`hidden_units`-`latent_dim`-`hidden_units`-784 VAE with a sigmoid output.

    `layer_structure` is ``none`` (ReLU), ``lwta`` or ``p-lwta``.  In the LWTA
    structures the hidden units are linear and compete in blocks of
    `block_size`; as in the original, the mean and log-variance heads compete
    too unless `lwta_hidden_only`.
    """

    def __init__(
        self,
        layer_structure="none",
        block_size=2,
        hidden_units=500,
        latent_dim=100,
        input_dim=784,
        lwta_hidden_only=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if layer_structure not in LAYER_STRUCTURES:
            raise ValueError(
                f"layer structure must be one of {', '.join(LAYER_STRUCTURES)}; got {layer_structure!r}"
            )
        for value, what in ((hidden_units, "hidden units"), (latent_dim, "latent dimension"), (input_dim, "input dimension")):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{what} must be a positive integer, got {value!r}")
        competes = layer_structure != "none"
        if competes:
            check_block_size(hidden_units, block_size)
            if not lwta_hidden_only:
                check_block_size(latent_dim, block_size)
        self.layer_structure = layer_structure
        self.block_size = block_size
        self.hidden_units = hidden_units
        self.latent_dim = latent_dim
        self.input_dim = input_dim
        self.lwta_hidden_only = lwta_hidden_only

        self.encoder_hidden = _dense(hidden_units, "encoder_hidden")
        self.mean_head = _dense(latent_dim, "mean")
        self.log_variance_head = _dense(latent_dim, "log_variance")
        self.decoder_hidden = _dense(hidden_units, "decoder_hidden")
        self.decoder_output = _dense(input_dim, "decoder_output")

        self.encoder_activation = _hidden_activation(layer_structure, block_size)
        self.decoder_activation = _hidden_activation(layer_structure, block_size)
        latent_competes = competes and not lwta_hidden_only
        self.mean_activation = _hidden_activation(layer_structure, block_size) if latent_competes else Linear()
        self.log_variance_activation = (
            _hidden_activation(layer_structure, block_size) if latent_competes else Linear()
        )
        self.build((None, input_dim))

    def build(self, input_shape):
        self.encoder_hidden.build((None, self.input_dim))
        self.mean_head.build((None, self.hidden_units))
        self.log_variance_head.build((None, self.hidden_units))
        self.decoder_hidden.build((None, self.latent_dim))
        self.decoder_output.build((None, self.hidden_units))
        self.built = True

    def encode(self, x, training=False, seed=None):
        """Posterior parameters q(z|x) = N(mean, exp(log_variance))."""
        hidden_seed, mean_seed, log_variance_seed = split_seed(seed, 3)
        hidden = self.encoder_activation(self.encoder_hidden(x), training=training, seed=hidden_seed)
        mean = self.mean_activation(self.mean_head(hidden), training=training, seed=mean_seed)
        log_variance = self.log_variance_activation(
            self.log_variance_head(hidden), training=training, seed=log_variance_seed
        )
        return mean, log_variance

    @staticmethod
    def reparameterize(mean, log_variance, seed=None):
        """z = mean + exp(log_variance / 2) * epsilon, epsilon ~ N(0, I)."""
        return mean + tf.exp(0.5 * log_variance) * normal(tf.shape(mean), seed, mean.dtype)

    def decode_logits(self, z, training=False, seed=None):
        """Pre-sigmoid decoder output (numerically stable for the Bernoulli loss)."""
        hidden = self.decoder_activation(self.decoder_hidden(z), training=training, seed=seed)
        return self.decoder_output(hidden)

    def decode(self, z, training=False, seed=None):
        """Pixel probabilities for latent codes `z`."""
        return tf.sigmoid(self.decode_logits(z, training=training, seed=seed))

    def forward(self, x, training=False, seed=None):
        """One stochastic pass: (mean, log_variance, decoder logits for a sampled z)."""
        encoder_seed, noise_seed, decoder_seed = split_seed(seed, 3)
        mean, log_variance = self.encode(x, training=training, seed=encoder_seed)
        z = self.reparameterize(mean, log_variance, seed=noise_seed)
        return mean, log_variance, self.decode_logits(z, training=training, seed=decoder_seed)

    def call(self, x, training=False):
        """The reconstruction of `x` (pixel probabilities) from the posterior mean: deterministic in inference."""
        return self.decode(self.encode(x, training=training)[0], training=training)

    def get_config(self):
        return {**super().get_config(), **self.architecture()}

    def architecture(self):
        """The constructor arguments that rebuild this model."""
        return {
            "layer_structure": self.layer_structure,
            "block_size": self.block_size,
            "hidden_units": self.hidden_units,
            "latent_dim": self.latent_dim,
            "input_dim": self.input_dim,
            "lwta_hidden_only": self.lwta_hidden_only,
        }
