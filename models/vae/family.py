"""The VAE family: network.VAE trained on the negative ELBO, with a Gaussian posterior and an N(0, I) prior."""

import functools

import tensorflow as tf

import network
import utils
from models.base import COMMANDS, Family, ImportanceModel

DECODE_ROWS = 2500  # samples decoded at once in evaluation: their activations stay in the CPU's cache


def kl_weight(config, step):
    """The KL weight at `step`: grows linearly from 0 over the warm-up, then stays at --beta."""
    settings = config.model_config
    if settings.kl_warmup_steps == 0:
        return tf.constant(settings.beta, tf.float32)
    progress = tf.cast(step + 1, tf.float32) / settings.kl_warmup_steps
    return settings.beta * tf.minimum(progress, 1.0)


def decode_parts(z):
    """z, [images, samples, latent], cut along the samples into parts of about DECODE_ROWS image-samples."""
    images, samples = z.shape[:2]
    parts = min(samples, max(1, images * samples // DECODE_ROWS))
    sizes = [samples // parts + (index < samples % parts) for index in range(parts)]
    return tf.split(z, sizes, axis=1)


def decoder_log_likelihood(model, loss):
    """log p(x|z) of a VAE: x [n, 1, D], z [n, samples, latent] -> [n, samples].

    The decoder's matrix products run in TensorFlow's own kernels, which are
    faster than XLA's at these shapes, on about DECODE_ROWS samples at a time.
    XLA compiles the per-pixel likelihood and the LWTA competition, each into
    one pass; ReLU stays fused into TensorFlow's matrix product.
    """
    @tf.function(jit_compile=True)
    def per_pixel(x, logits):
        return -utils.reconstruction_loss(tf.broadcast_to(x, tf.shape(logits)), logits, loss, sum_pixels=utils.sum_last_axis)

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


def active_units(mean, threshold=0.01):
    """Latent units whose posterior mean varies across `mean`'s images with variance above `threshold`
    (Burda et al. 2015): the units the model uses."""
    return tf.reduce_sum(tf.cast(tf.math.reduce_variance(mean, axis=0) > threshold, tf.float32))


class VAEFamily(Family):
    name = "vae"
    commands = COMMANDS

    def build(self, config):
        return network.VAE(**config.model_config.network_arguments(), name="vae")

    def metric_names(self):
        return ("loss", "reconstruction", "kl")

    def validation_only_metrics(self):
        return ("active_units",)

    def _metrics(self, model, config, images, seed, training):
        mean, log_variance, logits = model.forward(images, training=training, seed=seed)
        _, reconstruction, kl = utils.negative_elbo(images, mean, log_variance, logits, config.model_config.loss)
        return reconstruction, kl, mean

    def objective(self, model, config, images, seed, step):
        reconstruction, kl, _ = self._metrics(model, config, images, seed, training=True)
        objective = tf.reduce_mean(reconstruction + kl_weight(config, step) * kl)
        return objective, {"loss": tf.reduce_mean(reconstruction + kl),
                           "reconstruction": tf.reduce_mean(reconstruction), "kl": tf.reduce_mean(kl)}

    def validation_metrics(self, model, config, images, seed):
        reconstruction, kl, mean = self._metrics(model, config, images, seed, training=False)
        return {"loss": tf.reduce_mean(reconstruction + kl), "reconstruction": tf.reduce_mean(reconstruction),
                "kl": tf.reduce_mean(kl), "active_units": active_units(mean)}

    def reconstruct(self, model, images, sample=False, seed=1):
        mean, log_variance = model.encode(images, training=False)
        z = model.reparameterize(mean, log_variance, seed=tf.constant([seed, 0], tf.int64)) if sample else mean
        return model.decode(z, training=False).numpy()

    def encode_mean(self, model, images):
        return model.encode(images, training=False)[0].numpy()

    def decode(self, model, z):
        return model.decode(tf.constant(z, tf.float32), training=False).numpy()

    def sample_prior(self, model, count, seed):
        return network.normal([count, model.latent_dim], tf.constant([seed, 0], tf.int64)).numpy()

    def latent_dim(self, model):
        return model.latent_dim

    def importance_model(self, model, config):
        return ImportanceModel(encode=lambda x: model.encode(x, training=False),
                               log_likelihood=decoder_log_likelihood(model, config.model_config.loss))


FAMILY = VAEFamily()
