"""Importance-weighted evaluation: the bound on log p(x) of Burda et al. (2015) and the negative ELBO.

Serves every family with a Gaussian posterior q(z|x) and an N(0, I) prior: the
family provides the encoder and log p(x|z) (models.base.ImportanceModel).
"""

import functools
import json
import math
import sys
import time
from fileio import atomic
from pathlib import Path

import numpy as np
import tensorflow as tf

import models
import network
import utils
from evaluation import DEFAULT_CHUNK_SIZE, DEFAULT_IMPORTANCE_SAMPLES, MAX_CHUNK_IMAGES
from training import checkpoint, data
from training.progress import Progress
from utils import DataError, UsageError

DEFAULT_SEED = 1  # of the importance samples
EVALUATIONS_DIR = "evaluations"  # under a model's folder: the records of partial or non-default evaluations



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


@tf.function(jit_compile=True)
def posterior_samples(mean, log_variance, noise):
    """z = mean + exp(log_variance / 2) * noise, [n, samples, latent], and log p(z) - log q(z|x), [n, samples].

    With p(z) = N(0, I) and q(z|x) = N(mean, exp(log_variance)), the log(2 pi)
    terms cancel: log p(z) - log q(z|x) = (sum(noise^2 - z^2) + sum(log_variance)) / 2.
    """
    z = mean[:, None] + tf.exp(0.5 * log_variance)[:, None] * noise
    half_squares_difference = 0.5 * utils.sum_last_axis(tf.square(noise) - tf.square(z))
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
    display = Progress(count, unit="image") if progress else None
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
             seed=DEFAULT_SEED, data_dir=None, limit=None, progress=True, report=None):
    """-log p(x) (importance-weighted) and the negative ELBO of a saved model, per image in nats, inference mode.

    Evaluates the first `limit` images (default all) of the validation or test
    split and records the settings (with ``trained_steps``, the steps the model
    has actually trained, next to the configured ones in ``model``), the means
    with their standard errors across images and the seconds taken.  Only a
    full default evaluation, every test image with K = DEFAULT_IMPORTANCE_SAMPLES
    and seed DEFAULT_SEED, goes to model_dir/evaluation.json; any other (a
    --limit below the split's size, the validation split, another K or seed)
    goes to model_dir/evaluations/<split>_k<K>_seed<S>_images<N>.json (see
    :func:`record_path`; the chunk size does not change the numbers).  Non-finite
    numbers (NaN weights) are written as null, with a warning on stderr.
    `report(results)`, when given, is called before the file is written (the
    command line prints its table there), so that a failed write loses no
    numbers.  Returns the results, NaN kept as float, with ``path``, the file
    written, added.
    """
    if split not in ("validation", "test"):
        raise UsageError(f"--split must be validation or test, got {split!r}")
    for name, value in (("importance-samples", importance_samples), ("chunk-size", chunk_size)):
        if value < 1:
            raise UsageError(f"--{name} must be at least 1, got {value}")
    model, config = checkpoint.load_model(model_dir)
    trained_steps = checkpoint.trained_steps(checkpoint.read(model_dir)[1])
    family = models.family(config.model)
    all_images = data.evaluation_images(config, data.load_data(config, data_dir).split(split))
    images = first_rows(all_images, limit)
    path = record_path(model_dir, split, importance_samples, seed, len(images), len(images) == len(all_images))
    atomic.check_writable(path)
    importance_model = family.importance_model(model, config)
    started = time.perf_counter()
    with np.errstate(invalid="ignore"):  # NaN weights give NaN numbers, reported once below, not per operation
        log_likelihood, reconstruction, kl = importance_weighted_bounds(
            importance_model.encode, importance_model.log_likelihood, images, importance_samples, chunk_size, seed,
            progress)
    per_image = {"negative_log_likelihood": -log_likelihood, "negative_elbo": reconstruction + kl,
                 "reconstruction": reconstruction, "kl": kl}
    results = {
        "settings": {"split": split, "importance_samples": importance_samples, "chunk_size": chunk_size,
                     "seed": seed, "images": len(images), "trained_steps": trained_steps,
                     "model": config.to_dict()},
        "nats_per_image": {name: mean_and_standard_error(values) for name, values in per_image.items()},
        "seconds": time.perf_counter() - started,
    }
    not_finite = []
    text = json.dumps(finite_or_none(results, not_finite), indent=2, allow_nan=False) + "\n"
    if report:
        report(results)
    if not_finite:
        print(f"warning: {', '.join(not_finite)} are not finite (NaN weights?); written as null in {path}",
              file=sys.stderr, flush=True)
    try:
        atomic.atomic_write_text(path, text)
    except OSError as error:  # a full disk, or the file's place taken by a folder
        raise DataError(f"cannot write {path}: {error.strerror or error}") from None
    return {**results, "path": str(path)}


def record_path(model_dir, split, importance_samples, seed, images, complete):
    """Where evaluate records its results: model_dir/evaluation.json for a full default evaluation (all
    test images, `complete`, with K = DEFAULT_IMPORTANCE_SAMPLES and seed DEFAULT_SEED), else
    model_dir/evaluations/<split>_k<K>_seed<S>_images<N>.json, so that no partial or differently
    configured run replaces the headline record."""
    if split == "test" and importance_samples == DEFAULT_IMPORTANCE_SAMPLES and seed == DEFAULT_SEED and complete:
        return Path(model_dir) / checkpoint.EVALUATION_FILE
    return Path(model_dir) / EVALUATIONS_DIR / f"{split}_k{importance_samples}_seed{seed}_images{images}.json"


def finite_or_none(value, not_finite, name=""):
    """`value` (nested dicts and lists of numbers) with each NaN or infinity replaced by None; the names of
    the dictionaries holding them (e.g. nats_per_image.kl) are appended to `not_finite`, once each."""
    if isinstance(value, dict):
        return {key: finite_or_none(item, not_finite, f"{name}.{key}" if name else str(key))
                for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item, not_finite, name) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        owner = name.rpartition(".")[0] or name
        if owner not in not_finite:
            not_finite.append(owner)
        return None
    return value


def first_rows(array, limit):
    """The first `limit` rows of `array` (all of them when `limit` is None)."""
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    return array[:limit]
