"""Evaluation and pictures: the importance-weighted estimator against a model whose likelihood is known,
chunking, binarization, and the evaluate, sample and latent commands on a tiny trained model.

Statistical checks use fixed seeds and tolerances of a few standard errors
computed from the sample itself.  The commands run in-process through
script.main, the code path of the command line.
"""

import csv
import json
import math
import os
import statistics
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import func
import models
import network
import script
import utils
from evaluation import DEFAULT_CHUNK_SIZE, MAX_CHUNK_IMAGES
from evaluation.importance import chunk_shape, importance_weighted_bounds, posterior_samples
from models.vae import family as vae_family
from pictures.draw import MANIFOLD_SIDE, manifold, manifold_values, principal_plane
from training import checkpoint, data
from training.loop import Trainer

TINY = ["--steps", "10", "--train-examples", "200", "--validation-examples", "50", "--hidden-units", "20",
        "--latent-dim", "2"]


# ---------------------------------------------------------------------------
# A latent-variable model with a known likelihood


class LinearGaussian:
    """z ~ N(0, I), x | z ~ N(W z + b, I / 2); so x ~ N(b, W W^T + I / 2) exactly.

    The variance 1/2 makes log p(x|z) the "mse" decoder's.  q(z|x) is a
    deliberately imperfect Gaussian: the exact posterior's mean shifted, its
    marginal variances inflated and its correlations dropped.
    """

    variance = 0.5

    def __init__(self, latent_dim=2, data_dim=5, shift=0.3, inflation=2.0, seed=0):
        rng = np.random.default_rng(seed)
        self.weights = rng.normal(size=(data_dim, latent_dim))
        self.bias = rng.normal(size=data_dim)
        posterior_covariance = np.linalg.inv(np.eye(latent_dim) + self.weights.T @ self.weights / self.variance)
        self.gain = posterior_covariance @ self.weights.T / self.variance  # exact posterior mean = gain (x - b)
        self.shift = shift
        self.q_log_variance = np.log(inflation * np.diag(posterior_covariance))

    def sample(self, count, seed):
        rng = np.random.default_rng(seed)
        z = rng.normal(size=(count, self.weights.shape[1]))
        noise = rng.normal(size=(count, self.weights.shape[0]))
        return (z @ self.weights.T + self.bias + math.sqrt(self.variance) * noise).astype(np.float32)

    def q(self, x):
        """(mean, log_variance) of q(z|x), NumPy float64."""
        mean = (np.asarray(x, np.float64) - self.bias) @ self.gain.T + self.shift
        return mean, np.broadcast_to(self.q_log_variance, mean.shape)

    def log_marginal(self, x):
        """The exact log p(x)."""
        covariance = self.weights @ self.weights.T + self.variance * np.eye(len(self.bias))
        difference = np.asarray(x, np.float64) - self.bias
        _, log_determinant = np.linalg.slogdet(covariance)
        mahalanobis = np.sum(difference * np.linalg.solve(covariance, difference.T).T, axis=1)
        return -0.5 * (len(self.bias) * math.log(2 * math.pi) + log_determinant + mahalanobis)

    def expected_log_likelihood(self, x):
        """E_q[log p(x|z)], exactly."""
        mean, log_variance = self.q(x)
        residual = np.asarray(x, np.float64) - mean @ self.weights.T - self.bias
        trace = np.exp(log_variance) @ np.sum(self.weights**2, axis=0)
        dimension = len(self.bias)
        return -0.5 * dimension * math.log(2 * math.pi * self.variance) - (
            np.sum(residual**2, axis=1) + trace) / (2 * self.variance)

    def kl(self, x):
        mean, log_variance = self.q(x)
        return 0.5 * np.sum(np.exp(log_variance) + mean**2 - 1 - log_variance, axis=1)

    def log_weights(self, x, count, seed):
        """log p(x, z_k) - log q(z_k|x) for `count` draws z_k ~ q(z|x) per image, NumPy float64."""
        mean, log_variance = self.q(x)
        epsilon = np.random.default_rng(seed).normal(size=(len(mean), count, mean.shape[1]))
        z = mean[:, None] + np.exp(0.5 * log_variance)[:, None] * epsilon
        residual = np.asarray(x, np.float64)[:, None] - z @ self.weights.T - self.bias
        log_likelihood = (-np.sum(residual**2, axis=-1) / (2 * self.variance)
                          - 0.5 * len(self.bias) * math.log(2 * math.pi * self.variance))
        log_prior = -0.5 * np.sum(z**2 + math.log(2 * math.pi), axis=-1)
        log_q = -0.5 * np.sum(epsilon**2 + log_variance[:, None] + math.log(2 * math.pi), axis=-1)
        return log_likelihood + log_prior - log_q

    # The callables of importance_weighted_bounds, in TensorFlow.

    def encode(self, x):
        gain, bias = tf.constant(self.gain, tf.float32), tf.constant(self.bias, tf.float32)
        mean = tf.matmul(x - bias, gain, transpose_b=True) + self.shift
        return mean, tf.broadcast_to(tf.constant(self.q_log_variance, tf.float32), tf.shape(mean))

    def log_likelihood(self, x, z):
        mean = tf.matmul(z, tf.constant(self.weights, tf.float32), transpose_b=True) + tf.constant(self.bias, tf.float32)
        return -tf.reduce_sum(tf.square(x - mean), axis=-1) / (2 * self.variance) - 0.5 * len(self.bias) * math.log(
            2 * math.pi * self.variance)


def bounds(model, x, importance_samples, seed, chunk_size=DEFAULT_CHUNK_SIZE):
    return importance_weighted_bounds(model.encode, model.log_likelihood, x, importance_samples, chunk_size, seed)


def test_the_estimate_approaches_the_exact_log_likelihood_as_k_grows():
    model = LinearGaussian()
    x = model.sample(20, seed=1)
    exact = model.log_marginal(x)
    error_1 = np.abs(bounds(model, x, 1, seed=2)[0] - exact)
    error_1000 = np.abs(bounds(model, x, 1000, seed=3)[0] - exact)
    # log(mean of K weights) has standard deviation ~ s / sqrt(K) and bias ~ -s^2 / (2K), where s is the
    # relative standard deviation of one weight, w / p(x), estimated here from 20,000 independent draws.
    relative_spread = np.std(np.exp(model.log_weights(x, 20000, seed=4) - exact[:, None]), axis=1)
    allowed = 5 * relative_spread / math.sqrt(1000) + relative_spread**2 / 1000
    assert np.all(error_1000 <= allowed), (error_1000, allowed)
    assert error_1000.mean() < error_1.mean() / 10


def test_one_sample_agrees_with_the_elbo_in_expectation():
    model = LinearGaussian()
    x = model.sample(4000, seed=5)
    log_likelihood, reconstruction, kl = bounds(model, x, 1, seed=6)
    np.testing.assert_allclose(kl, model.kl(x), rtol=1e-5, atol=1e-5)  # analytic, no sampling
    elbo = model.expected_log_likelihood(x) - model.kl(x)
    for estimate, expected in ((log_likelihood, elbo), (-reconstruction, model.expected_log_likelihood(x))):
        difference = estimate - expected
        assert abs(difference.mean()) <= 4 * difference.std(ddof=1) / math.sqrt(len(x))


def test_the_numbers_do_not_depend_on_the_chunking():
    model = network.VAE("p-lwta", hidden_units=20, latent_dim=4)
    log_likelihood = lambda x, z: -utils.reconstruction_loss(x, model.decode_logits(z), "mse")  # noqa: E731
    images = np.random.default_rng(7).random((7, utils.PIXELS), dtype=np.float32)
    one_call = importance_weighted_bounds(model.encode, log_likelihood, images, 10, chunk_size=70, seed=8)
    # 3: one image and 3 samples per call (the last sample chunk padded); 25: 2 images of 10 samples (the
    # last image chunk padded).
    assert chunk_shape(7, 10, 3) == (1, 3) and chunk_shape(7, 10, 25) == (2, 10)
    assert chunk_shape(7, 10, 1000) == (7, 10)  # never more images per call than there are
    assert chunk_shape(1000, 1, 25000) == (MAX_CHUNK_IMAGES, 1)  # each image's draw is in the graph
    for chunk_size in (3, 25):
        chunked = importance_weighted_bounds(model.encode, log_likelihood, images, 10, chunk_size, seed=8)
        for expected, actual in zip(one_call, chunked):
            np.testing.assert_allclose(actual, expected, rtol=1e-5)
    other_seed = importance_weighted_bounds(model.encode, log_likelihood, images, 10, chunk_size=70, seed=9)
    assert not np.allclose(other_seed[0], one_call[0], rtol=1e-6)


def test_posterior_samples_give_z_and_the_log_density_ratio():
    rng = np.random.default_rng(12)
    mean, log_variance, noise = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), rng.normal(size=(3, 5, 4))
    z, log_prior_ratio = posterior_samples(*(tf.constant(array, tf.float32) for array in (mean, log_variance, noise)))
    expected_z = mean[:, None] + np.exp(0.5 * log_variance)[:, None] * noise
    log_p_z = -0.5 * np.sum(expected_z**2 + math.log(2 * math.pi), axis=-1)
    log_q_z = -0.5 * np.sum(noise**2 + log_variance[:, None] + math.log(2 * math.pi), axis=-1)
    np.testing.assert_allclose(z.numpy(), expected_z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_prior_ratio.numpy(), log_p_z - log_q_z, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss", utils.LOSSES)
@pytest.mark.parametrize("layer_structure", network.LAYER_STRUCTURES)
def test_the_decoder_likelihood_in_parts_equals_one_pass(layer_structure, loss, monkeypatch):
    monkeypatch.setattr(vae_family, "DECODE_ROWS", 4)  # 2 images x 7 samples: decoded as 3 parts of 3, 2 and 2 samples
    model = network.VAE(layer_structure, hidden_units=20, latent_dim=4)
    rng = np.random.default_rng(11)
    x = tf.constant(rng.random((2, 1, utils.PIXELS), dtype=np.float32))
    z = tf.constant(rng.normal(size=(2, 7, 4)).astype(np.float32))
    expected = -utils.reconstruction_loss(tf.broadcast_to(x, (2, 7, utils.PIXELS)), model.decode_logits(z), loss)
    actual = tf.function(vae_family.decoder_log_likelihood(model, loss))(x, z)
    np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-5)


# ---------------------------------------------------------------------------
# Binarization


GREY_LEVELS = np.array([0.1, 0.5, 0.8], dtype=np.float32)


def grey_images(count=300):
    """`count` images whose pixels cycle through GREY_LEVELS."""
    return np.resize(GREY_LEVELS, (count, utils.PIXELS)).astype(np.float32)


def assert_bernoulli(binary, grey):
    """Pixels in {0, 1} whose mean per grey level is that level, within 5 standard errors."""
    assert set(np.unique(binary)) <= {0.0, 1.0}
    for level in GREY_LEVELS:
        pixels = binary[grey == level]
        assert abs(pixels.mean() - level) <= 5 * math.sqrt(level * (1 - level) / pixels.size), level


def test_binarize_is_a_seeded_bernoulli_draw():
    grey = grey_images()
    binary = utils.binarize(grey, seed=1)
    assert_bernoulli(binary, grey)
    np.testing.assert_array_equal(utils.binarize(grey, seed=1), binary)
    assert not np.array_equal(utils.binarize(grey, seed=2), binary)


def test_static_binarization_is_one_fixed_draw():
    split = utils.Split(grey_images(), np.zeros(300, np.int64))
    config = func.configure(binarize="static")
    first = data.training_images(config, split)
    assert_bernoulli(first, split.images)
    np.testing.assert_array_equal(data.training_images(config, split), first)
    np.testing.assert_array_equal(func.evaluation_images(config, split), func.evaluation_images(config, split))
    assert data.training_images(func.configure(binarize="none"), split) is split.images


def test_dynamic_binarization_draws_anew_every_step(monkeypatch):
    grey = grey_images(100)
    config = func.configure(binarize="dynamic", hidden_units=20, latent_dim=2, train_examples=100)
    trainer = Trainer(config, data.training_images(config, utils.Split(grey, np.zeros(100))), grey[:10])
    seen = []
    forward = trainer.model.forward

    def recording_forward(images, **kwargs):
        seen.append(images.numpy())
        return forward(images, **kwargs)

    monkeypatch.setattr(trainer.model, "forward", recording_forward)
    for step in (0, 1, 0):
        trainer.train_step(tf.constant(grey), tf.constant(step, tf.int64))
    step_0, step_1, step_0_again = seen
    assert_bernoulli(step_0, grey)
    assert_bernoulli(step_1, grey)
    assert not np.array_equal(step_0, step_1)
    np.testing.assert_array_equal(step_0_again, step_0)  # a pure function of (seed, step): resumable


# ---------------------------------------------------------------------------
# The commands, on a tiny trained model


def train(model_dir, *flags):
    assert script.main(["train", *TINY, "--model-path", str(model_dir), *flags]) == 0
    return model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny model with a 2-D latent space, shared read-only by the tests."""
    return train(tmp_path_factory.mktemp("model") / "tiny")


def evaluate(model_dir, capsys, *flags):
    """Run the evaluate command; returns (the results in the file it says it wrote, its output)."""
    assert script.main(["evaluate", "--model-path", str(model_dir), *flags]) == 0
    output = capsys.readouterr().out
    written = [line.removeprefix("wrote ") for line in output.splitlines() if line.startswith("wrote ")]
    assert len(written) == 1, output
    path = Path(written[0])
    assert path.is_file() and model_dir in path.parents, path
    return json.loads(path.read_text()), output


def final_validation_loss(model_dir):
    with open(model_dir / checkpoint.METRICS_FILE, newline="") as handle:
        return float(list(csv.DictReader(handle))[-1]["validation_loss"])


def assert_matches_the_validation_loss(results, model_dir):
    """The negative ELBO of the validation split is what training reported, up to sampling noise.

    Training's validation loss is the same mean over the same images from one
    z per image, so the difference is far below the spread across images.
    """
    negative_elbo = results["nats_per_image"]["negative_elbo"]
    assert abs(negative_elbo["mean"] - final_validation_loss(model_dir)) <= 5 * negative_elbo["standard_error"]


def assert_kl_of_the_right_images(results, model_dir):
    """The mean KL, analytic and so free of sampling noise, is that of the model on the evaluated images.

    Catches evaluating other images (split, dataset, binarization, --limit) or
    the encoder in training mode or with its outputs mixed up.
    """
    model, config = func.load_model(model_dir)
    settings = results["settings"]
    images = func.evaluation_images(config, func.load_data(config).split(settings["split"]))[: settings["images"]]
    expected = np.mean(utils.kl_divergence(*model.encode(images, training=False)))
    assert results["nats_per_image"]["kl"]["mean"] == pytest.approx(float(expected), rel=1e-5)


def test_evaluate_reports_and_writes_the_bounds(model_dir, capsys):
    results, output = evaluate(model_dir, capsys, "--importance-samples", "20", "--limit", "30", "--chunk-size", "100",
                               "--seed", "3")
    assert "-log p(x), importance-weighted" in output
    assert set(results) == {"settings", "nats_per_image", "seconds"}
    assert {key: results["settings"][key] for key in ("split", "importance_samples", "chunk_size", "seed", "images",
                                                      "trained_steps")} == {
        "split": "test", "importance_samples": 20, "chunk_size": 100, "seed": 3, "images": 30, "trained_steps": 10}
    assert results["settings"]["model"]["model_config"]["latent_dim"] == 2
    numbers = results["nats_per_image"]
    assert set(numbers) == {"negative_log_likelihood", "negative_elbo", "reconstruction", "kl"}
    assert all(set(value) == {"mean", "standard_error"} for value in numbers.values())
    assert numbers["negative_elbo"]["mean"] == pytest.approx(numbers["reconstruction"]["mean"] + numbers["kl"]["mean"])
    assert_kl_of_the_right_images(results, model_dir)
    assert_matches_the_validation_loss(
        evaluate(model_dir, capsys, "--split", "validation", "--importance-samples", "20")[0], model_dir)


def test_evaluate_rejects_bad_input_in_one_line(model_dir, tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit:
        script.main(["evaluate", "--model-path", str(model_dir), "--importance-samples", "0"])
    assert exit.value.code == 2
    assert script.main(["evaluate", "--model-path", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err
    # An unwritable model directory (simulated: root may write anywhere) fails before any work.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert script.main(["evaluate", "--model-path", str(model_dir), "--limit", "1"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "cannot write" in error[0]
    with pytest.raises(utils.UsageError, match="--importance-samples must be at least 1"):
        func.evaluate(model_dir, importance_samples=0)


def test_sample_writes_a_seeded_grid(model_dir, tmp_path):
    def draw(name, seed):
        assert script.main(["sample", "--model-path", str(model_dir), "--output-path", str(tmp_path / name),
                            "--count", "10", "--seed", str(seed)]) == 0
        with Image.open(tmp_path / f"{name}.png") as image:
            # 10 digits in 4 columns, 2 pixels apart
            assert image.mode == "L" and image.size == (4 * 28 + 3 * 2, 3 * 28 + 2 * 2)
            return np.asarray(image)

    first = draw("first", seed=3)
    np.testing.assert_array_equal(draw("again", seed=3), first)
    assert not np.array_equal(draw("other", seed=4), first)


def test_latent_writes_the_scatter_and_the_manifold(model_dir, tmp_path):
    assert script.main(["latent", "--model-path", str(model_dir), "--output-path", str(tmp_path / "latent.png"),
                        "--limit", "200"]) == 0
    with Image.open(tmp_path / "latent.png") as image:
        assert image.format == "PNG" and image.size == (7 * 120, 6 * 120)
    with Image.open(tmp_path / "latent_manifold.png") as image:
        assert image.format == "PNG" and image.mode in ("RGB", "RGBA")  # a figure with z1 and z2 axes
        assert image.size[0] > 20 * 28 and image.size[1] > 20 * 28
    model, config = func.load_model(model_dir)
    values = manifold_values()
    assert len(values) == MANIFOLD_SIDE
    grid = manifold(models.family(config.model), model, values)
    corner = statistics.NormalDist().inv_cdf(0.5 / MANIFOLD_SIDE)  # top left: smallest z1, largest z2
    assert values[0] == pytest.approx(corner) and values[-1] == pytest.approx(-corner)
    top_left = model.decode(np.array([[corner, -corner]], np.float32)).numpy().reshape(28, 28)
    np.testing.assert_allclose(grid[:28, :28], top_left, rtol=1e-5, atol=1e-6)


def test_principal_plane_keeps_the_geometry_of_planar_codes():
    rng = np.random.default_rng(10)
    plane = rng.normal(size=(50, 2)) * [3.0, 1.0]
    basis = np.linalg.qr(rng.normal(size=(5, 2)))[0]  # orthonormal columns in a 5-D latent space
    coordinates, names = principal_plane(plane @ basis.T + 7.0)
    distances = lambda points: np.linalg.norm(points[:, None] - points[None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(distances(coordinates), distances(plane), atol=1e-9)
    assert names[0].startswith("principal component 1") and "%" in names[0]
    assert np.var(coordinates[:, 0]) > np.var(coordinates[:, 1])


@pytest.mark.parametrize("command", ["sample", "latent"])
def test_output_in_an_unwritable_folder_is_a_one_line_error(model_dir, tmp_path, capsys, command):
    (tmp_path / "file").write_text("not a folder")
    assert script.main([command, "--model-path", str(model_dir), "--output-path", str(tmp_path / "file" / "x.png")]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "cannot write" in error[0]


def test_fashion_mnist_trains_and_evaluates(tmp_path, capsys):
    """Also a binarized model with the Bernoulli decoder: evaluate must see the images as training did."""
    model_dir = train(tmp_path / "fashion", "--dataset", "fashion-mnist", "--binarize", "static", "--loss", "bce")
    results, _ = evaluate(model_dir, capsys, "--split", "validation", "--importance-samples", "10")
    assert results["settings"]["model"]["training"]["dataset"] == "fashion-mnist"
    assert_kl_of_the_right_images(results, model_dir)
    assert_matches_the_validation_loss(results, model_dir)
