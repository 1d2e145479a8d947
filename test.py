"""Tests of the core: LWTA layers, the VAE, data loading, the loss, saving and the CLI.

MNIST is read from $MNIST_DATA_DIR (set by .ci/run) or Keras's cache/download.
"""

import dataclasses
import gzip
import io
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import func
import network
import utils
from conftest import run_cli, tiny_config, write_fake_mnist
from training import checkpoint, data, migration
from training.loop import Trainer
from training import progress as training_progress
from training.progress import Progress


# ---------------------------------------------------------------------------
# Deterministic LWTA


def as_blocks(array, block_size):
    """[n, W] -> [n, W/k, k]: block i holds units i, i + W/k, ... (the strided blocks of network._blocks)."""
    return array.reshape(len(array), block_size, -1).transpose(0, 2, 1)


@pytest.mark.parametrize("block_size", [2, 4])
def test_lwta_keeps_only_the_block_maximum(block_size):
    x = tf.random.stateless_normal((64, 40), seed=[1, 2])
    output = network.lwta(x, block_size).numpy()
    blocks = as_blocks(x.numpy(), block_size)
    output_blocks = as_blocks(output, block_size)
    winners = blocks.argmax(-1)
    expected = np.zeros_like(blocks)
    np.put_along_axis(expected, winners[..., None], np.take_along_axis(blocks, winners[..., None], -1), -1)
    np.testing.assert_array_equal(output_blocks, expected)
    assert (np.count_nonzero(output_blocks, axis=-1) == 1).all()


def test_lwta_passes_negative_winners_and_breaks_ties_to_the_first_unit():
    # Blocks of 2 over 6 units: (unit 0, unit 3), (1, 4), (2, 5).
    x = tf.constant([[-3.0, 2.0, 5.0, -1.0, 2.0, -5.0]])
    np.testing.assert_array_equal(network.lwta(x, 2).numpy(), [[0.0, 2.0, 5.0, -1.0, 0.0, 0.0]])


def test_lwta_gradient_reaches_only_the_winners():
    x = tf.Variable(tf.random.stateless_normal((8, 12), seed=[3, 4]))
    weights = tf.random.stateless_normal((8, 12), seed=[5, 6])
    with tf.GradientTape() as tape:
        objective = tf.reduce_sum(network.lwta(x, 4) * weights)
    gradient = tape.gradient(objective, x).numpy()
    winner_mask = network.lwta(x, 4).numpy() != 0
    np.testing.assert_allclose(gradient, np.where(winner_mask, weights.numpy(), 0.0))


def test_lwta_layer_matches_the_function():
    x = tf.random.stateless_normal((4, 10), seed=[7, 8])
    np.testing.assert_array_equal(network.LWTA(block_size=2)(x).numpy(), network.lwta(x, 2).numpy())


@pytest.mark.parametrize("function", [
    lambda x: network.lwta(x, 3),
    lambda x: network.probabilistic_lwta(x, training=True, block_size=3),
])
def test_block_size_must_divide_the_width(function):
    with pytest.raises(ValueError, match="does not divide"):
        function(tf.zeros((2, 10)))


def test_vae_rejects_a_block_size_that_does_not_divide_the_layers():
    with pytest.raises(ValueError, match="does not divide the layer width 500"):
        network.VAE("lwta", block_size=3)


# ---------------------------------------------------------------------------
# Probabilistic LWTA


@pytest.mark.parametrize("block_size", [2, 4])
def test_p_lwta_survivor_frequencies_match_the_softmax(block_size):
    draws = 20000
    block = np.array([0.5, 1.5, -0.3, 0.9][:block_size], dtype=np.float64)
    x = tf.constant(np.tile(block, (draws, 1)))
    output = network.probabilistic_lwta(x, training=True, block_size=block_size, seed=tf.constant([11, 12])).numpy()
    survivors = output != 0
    assert (survivors.sum(axis=1) == 1).all(), "exactly one survivor per block"
    np.testing.assert_array_equal(output[survivors], np.tile(block, (draws, 1))[survivors])  # raw, unscaled value
    probabilities = np.exp(block) / np.exp(block).sum()
    frequencies = survivors.mean(axis=0)
    # Each frequency is a mean of `draws` Bernoulli(p) variables: standard error sqrt(p(1-p)/draws).
    # Five standard errors: a correct sampler fails with probability below 1e-5.
    bound = 5 * np.sqrt(probabilities * (1 - probabilities) / draws)
    assert (np.abs(frequencies - probabilities) < bound).all(), (frequencies, probabilities, bound)


def test_p_lwta_inference_is_softmax_scaling_and_the_mean_of_training_outputs():
    draws = 20000
    x = tf.random.stateless_normal((1, 6), seed=[13, 14], dtype=tf.float64)
    inference = network.probabilistic_lwta(x, training=False, block_size=2).numpy()[0]
    values = as_blocks(x.numpy(), 2)[0]
    softmax = np.exp(values) / np.exp(values).sum(-1, keepdims=True)
    np.testing.assert_allclose(inference, (values * softmax).T.ravel(), rtol=1e-12)
    training = network.probabilistic_lwta(tf.tile(x, [draws, 1]), training=True, block_size=2,
                                          seed=tf.constant([15, 16])).numpy()
    standard_error = training.std(axis=0) / np.sqrt(draws)
    assert (np.abs(training.mean(axis=0) - inference) < 5 * standard_error + 1e-12).all()


def test_p_lwta_gradient_flows_only_through_the_survivor():
    x = tf.Variable(tf.random.stateless_normal((16, 8), seed=[17, 18]))
    seed = tf.constant([19, 20])
    with tf.GradientTape() as tape:
        output = network.probabilistic_lwta(x, training=True, block_size=2, seed=seed)
        objective = tf.reduce_sum(output)
    np.testing.assert_array_equal(tape.gradient(objective, x).numpy(), (output.numpy() != 0).astype(np.float32))


def test_p_lwta_draws_are_a_function_of_the_seed():
    x = tf.random.stateless_normal((50, 20), seed=[1, 1])
    first = network.probabilistic_lwta(x, True, 2, seed=tf.constant([5, 5])).numpy()
    again = network.probabilistic_lwta(x, True, 2, seed=tf.constant([5, 5])).numpy()
    other = network.probabilistic_lwta(x, True, 2, seed=tf.constant([5, 6])).numpy()
    np.testing.assert_array_equal(first, again)
    assert (first != other).any()


# ---------------------------------------------------------------------------
# The VAE


@pytest.mark.parametrize("structure", network.LAYER_STRUCTURES)
def test_every_structure_has_the_original_parameter_count(structure):
    model = network.VAE(structure)
    assert model.count_params() == 935984
    assert model.count_params() == 784 * 500 + 500 + 2 * (500 * 100 + 100) + 100 * 500 + 500 + 500 * 784 + 784


def test_vae_shapes_and_where_the_competition_applies():
    x = tf.random.stateless_uniform((5, 784), seed=[1, 2])
    model = network.VAE("lwta")
    mean, log_variance = model.encode(x)
    assert mean.shape == log_variance.shape == (5, 100)
    # As in the original, one unit of every block of the mean and log-variance heads is zeroed ...
    assert (np.count_nonzero(as_blocks(mean.numpy(), 2), axis=-1) == 1).all()
    assert (np.count_nonzero(as_blocks(log_variance.numpy(), 2), axis=-1) == 1).all()
    # ... unless the competition is restricted to the hidden layers.
    hidden_only = network.VAE("lwta", lwta_hidden_only=True)
    assert np.count_nonzero(hidden_only.encode(x)[0].numpy()) == 5 * 100
    reconstruction = model(x).numpy()
    assert reconstruction.shape == (5, 784) and ((reconstruction >= 0) & (reconstruction <= 1)).all()  # float32 sigmoid may saturate
    # Calling the model reconstructs from the posterior mean: deterministic.
    np.testing.assert_allclose(reconstruction, model.decode(mean).numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(model(x).numpy(), reconstruction)


def adjacent_reference(weights, x, structure, block_size):
    """The encoder and decoder means of the original's network (blocks of adjacent units), in NumPy float64.

    `weights` are the model's kernels and biases in the order of migration.WEIGHTS;
    p-LWTA is in inference mode, so the result is deterministic.
    """
    def compete(h):
        blocks = h.reshape(len(h), -1, block_size)
        if structure == "lwta":
            winners = blocks == blocks.max(-1, keepdims=True)
            return (blocks * winners).reshape(h.shape)
        softmax = np.exp(blocks - blocks.max(-1, keepdims=True))
        return (blocks * softmax / softmax.sum(-1, keepdims=True)).reshape(h.shape)

    w = [np.asarray(array, np.float64) for array in weights]
    hidden = compete(x @ w[0] + w[1])
    mean, log_variance = compete(hidden @ w[2] + w[3]), compete(hidden @ w[4] + w[5])
    decoded = 1 / (1 + np.exp(-(compete(mean @ w[6] + w[7]) @ w[8] + w[9])))
    return mean, log_variance, decoded


def layer_weights(model):
    """{"encoder_hidden/kernel": array, ...}: the model's weights named by layer, without the model's name."""
    return {variable.path.split("/", 1)[1]: variable.numpy() for variable in model.weights}


@pytest.mark.parametrize("structure", ["lwta", "p-lwta"])
def test_strided_blocks_are_the_originals_adjacent_blocks_relabelled(structure):
    """Weights trained with adjacent blocks, relabelled by the migration, give the original's function."""
    x = np.random.default_rng(0).random((16, 784))
    model = network.VAE(structure, block_size=4)
    adjacent = layer_weights(model)
    assert sorted(adjacent) == sorted(migration.WEIGHTS)
    relabelled = dict(adjacent)
    model_config = func.configure(layer_structure=structure, block_size=4).model_config
    migration.relabel_adjacent_blocks(relabelled, dataclasses.asdict(model_config))
    for variable in model.weights:
        variable.assign(relabelled[variable.path.split("/", 1)[1]])
    mean, log_variance = model.encode(tf.constant(x, tf.float32))
    expected_mean, expected_log_variance, expected_decoded = adjacent_reference(
        [adjacent[name] for name in migration.WEIGHTS], x, structure, 4)
    latent = migration.strided_order(100, 4)  # the latent units are relabelled too
    np.testing.assert_allclose(mean.numpy(), expected_mean[:, latent], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(log_variance.numpy(), expected_log_variance[:, latent], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.decode(mean).numpy(), expected_decoded, rtol=1e-4, atol=1e-5)


def adjacent_from_strided(values, model_config):
    """The adjacent-block weights (or Adam moments) {"layer/kind": array} whose relabelling into strided blocks
    gives `values`: the inverse of the migration, spelled out with index arrays."""
    pixels = np.arange(utils.PIXELS)
    hidden = migration.strided_order(model_config["hidden_units"], model_config["block_size"])
    latent = (np.arange(model_config["latent_dim"]) if model_config["lwta_hidden_only"]
              else migration.strided_order(model_config["latent_dim"], model_config["block_size"]))
    adjacent = {}
    for layer, inputs, outputs in (("encoder_hidden", pixels, hidden), ("mean", hidden, latent),
                                   ("log_variance", hidden, latent), ("decoder_hidden", latent, hidden),
                                   ("decoder_output", hidden, pixels)):
        kernel, bias = values[f"{layer}/kernel"], values[f"{layer}/bias"]
        adjacent[f"{layer}/kernel"] = np.empty_like(kernel)
        adjacent[f"{layer}/kernel"][np.ix_(inputs, outputs)] = kernel
        adjacent[f"{layer}/bias"] = np.empty_like(bias)
        adjacent[f"{layer}/bias"][outputs] = bias
    return adjacent


def write_format_1(model_dir, block_layout=None):
    """Rewrite the checkpoint of `model_dir` in format 1: arrays named by position (the weights, then Adam's
    iteration, learning rate and moments), one flat configuration with `compete_latent`, a four-column history.

    Without a `block_layout` mark (the earliest checkpoints) or with "adjacent", the weights and Adam's
    moments are stored in adjacent blocks, so that loading must relabel them back into today's arrays.
    """
    path = model_dir / checkpoint.CHECKPOINT_FILE
    with np.load(path) as npz:
        arrays = {name: npz[name] for name in npz.files}
    config = json.loads(str(arrays["config"]))
    weights = {name: arrays[f"model/vae/{name}"] for name in migration.WEIGHTS}
    moments = [{name: arrays[f"optimizer/adam/vae_{name.replace('/', '_')}_{kind}"] for name in migration.WEIGHTS}
               for kind in ("momentum", "velocity")]
    if block_layout in (None, "adjacent"):
        weights, *moments = (adjacent_from_strided(values, config["model_config"]) for values in (weights, *moments))
    old = {f"model_{index:03d}": weights[name] for index, name in enumerate(migration.WEIGHTS)}
    old["optimizer_000"] = arrays["optimizer/adam/iteration"]
    old["optimizer_001"] = arrays["optimizer/adam/learning_rate"]
    for index, name in enumerate(migration.WEIGHTS):
        old[f"optimizer_{2 + 2 * index:03d}"], old[f"optimizer_{3 + 2 * index:03d}"] = (m[name] for m in moments)
    flat = {**config["model_config"], **config["training"]}
    flat["compete_latent"] = not flat.pop("lwta_hidden_only")
    old["config"] = np.array(json.dumps(flat))
    old["history"] = arrays["history"][:, :4]
    old["elapsed"] = arrays["elapsed"]
    if block_layout is not None:
        old["block_layout"] = np.array(block_layout)
    np.savez(path, **old)


def test_checkpoint_with_adjacent_blocks_loads_relabelled_and_resumes(tmp_path):
    """A format-1 checkpoint without the strided-blocks mark is relabelled on loading (the relabelling itself is
    checked against the original's network above), Adam's moments with it, so it resumes to the same run."""
    config = tiny_config(layer_structure="lwta", steps=10)
    func.train(config, tmp_path / "strided", progress=False)
    shutil.copytree(tmp_path / "strided", tmp_path / "adjacent")
    write_format_1(tmp_path / "adjacent")
    model, _ = func.load_model(tmp_path / "strided")
    with np.load(tmp_path / "adjacent" / checkpoint.CHECKPOINT_FILE) as npz:
        assert "format" not in npz.files and "block_layout" not in npz.files
        assert not np.array_equal(npz["model_000"], model.encoder_hidden.kernel.numpy())  # the units are permuted

    loaded, loaded_config = func.load_model(tmp_path / "adjacent")
    assert loaded_config == config
    for variable, expected in zip(loaded.weights, model.weights):
        np.testing.assert_array_equal(variable.numpy(), expected.numpy(), err_msg=variable.path)
    x = func.load_data(config).validation.images[:8]
    np.testing.assert_array_equal(loaded.encode(x)[0].numpy(), model.encode(x)[0].numpy())

    strided = func.resume(tmp_path / "strided", {"steps": 20}, progress=False)
    adjacent = func.resume(tmp_path / "adjacent", {"steps": 20}, progress=False)
    first = ("step", "training_loss", "validation_loss")
    assert [[row[column] for column in first] for row in adjacent] == [[row[column] for column in first]
                                                                       for row in strided]
    with np.load(tmp_path / "strided" / checkpoint.CHECKPOINT_FILE) as expected, \
            np.load(tmp_path / "adjacent" / checkpoint.CHECKPOINT_FILE) as resumed:
        assert int(resumed["format"]) == 2
        state = [name for name in expected.files if name.startswith(("model/", "optimizer/"))]
        assert sorted(state) == sorted(name for name in resumed.files if name.startswith(("model/", "optimizer/")))
        for name in state:
            np.testing.assert_array_equal(resumed[name], expected[name], err_msg=name)


def test_initialisation_is_truncated_normal_with_stddev_0_1():
    keras_seed = 3
    tf.keras.utils.set_random_seed(keras_seed)
    kernel = network.VAE("none").encoder_hidden.kernel.numpy().ravel()
    bias = network.VAE("none").encoder_hidden.bias.numpy()
    assert np.abs(kernel).max() <= 0.2 + 1e-6 and np.abs(bias).max() <= 0.2 + 1e-6
    # A normal(0, 0.1) truncated at 2 sigma has standard deviation 0.1 * 0.8796.
    expected = 0.1 * 0.8796
    assert abs(kernel.std() - expected) < 5 * expected / math.sqrt(2 * kernel.size)
    assert bias.std() > 0.05, "biases are random too, not zeros"


# ---------------------------------------------------------------------------
# Loss


def test_loss_matches_a_hand_computed_case():
    x = tf.constant([[0.0, 1.0, 0.5, 0.25]])
    logits = tf.constant([[0.0, 2.0, -1.0, 0.5]])
    mean = tf.constant([[0.5, -1.0]])
    log_variance = tf.constant([[0.0, math.log(2.0)]])
    probabilities = 1 / (1 + np.exp(-np.array([0.0, 2.0, -1.0, 0.5])))
    squared_error = ((np.array([0.0, 1.0, 0.5, 0.25]) - probabilities) ** 2).sum()
    kl = 0.5 * ((1 + 0.25 - 1 - 0) + (2 + 1 - 1 - math.log(2)))
    total, reconstruction, kl_value = utils.negative_elbo(x, mean, log_variance, logits, "mse")
    np.testing.assert_allclose(reconstruction.numpy(), [squared_error + 2 * math.log(math.pi)], rtol=1e-6)
    np.testing.assert_allclose(kl_value.numpy(), [kl], rtol=1e-6)
    np.testing.assert_allclose(total.numpy(), [squared_error + 2 * math.log(math.pi) + kl], rtol=1e-6)
    targets = np.array([0.0, 1.0, 0.5, 0.25])
    bce = -(targets * np.log(probabilities) + (1 - targets) * np.log(1 - probabilities)).sum()
    np.testing.assert_allclose(utils.reconstruction_loss(x, logits, "bce").numpy(), [bce], rtol=1e-6)


def test_mse_loss_is_the_gaussian_negative_log_likelihood_with_variance_one_half():
    x = tf.random.stateless_uniform((3, 784), seed=[1, 1])
    logits = tf.random.stateless_normal((3, 784), seed=[2, 2])
    mean = tf.sigmoid(logits).numpy()
    gaussian = -(-0.5 * np.log(2 * np.pi * 0.5) - (x.numpy() - mean) ** 2 / (2 * 0.5)).sum(-1)
    np.testing.assert_allclose(utils.reconstruction_loss(x, logits, "mse").numpy(), gaussian, rtol=1e-5)


def test_original_scale_conversion():
    squared_error, kl = 30.0, 12.0
    nats = squared_error + kl + 392 * math.log(math.pi)
    assert utils.to_original_scale(nats) == pytest.approx((squared_error + kl) / 784)


# ---------------------------------------------------------------------------
# Data


def test_idx_round_trip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8)
    utils.write_idx(tmp_path / "images.gz", images)
    utils.write_idx(tmp_path / "labels.gz", labels)
    np.testing.assert_array_equal(utils.read_idx(tmp_path / "images.gz"), images)
    np.testing.assert_array_equal(utils.read_idx(tmp_path / "labels.gz"), labels)


def test_splits_follow_the_original(tmp_path):
    dataset = utils.load_dataset(data_dir=write_fake_mnist(tmp_path / "mnist"), train_examples=700, validation_examples=30)
    assert dataset.validation.images.shape == (30, 784) and dataset.train.images.shape == (700, 784)
    np.testing.assert_allclose(dataset.validation.images[:, 0] * 255, np.arange(30), atol=1e-4)
    np.testing.assert_allclose(dataset.train.images[:, 0] * 255, (5000 + np.arange(700)) % 256, atol=1e-4)
    assert dataset.test.images.shape == (20, 784) and dataset.test.images.dtype == np.float32
    np.testing.assert_array_equal(dataset.train.labels, (5000 + np.arange(700)) % 10)


def test_real_mnist_splits():
    dataset = utils.load_dataset()
    assert dataset.train.images.shape == (10000, 784) and dataset.validation.images.shape == (1000, 784)
    assert dataset.test.images.shape == (10000, 784)
    assert dataset.train.images.min() == 0.0 and dataset.train.images.max() == 1.0
    # The original's comparison figure shows the first ten training digits as its validation row.
    np.testing.assert_array_equal(dataset.validation.labels[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])


def test_environment_variable_names_the_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_DATA_DIR", str(write_fake_mnist(tmp_path / "env")))
    assert utils.load_dataset(train_examples=10, validation_examples=5).test.images.shape == (20, 784)


def test_npz_folder(tmp_path):
    rng = np.random.default_rng(1)
    arrays = dict(x_train=rng.integers(0, 256, (6000, 28, 28), dtype=np.uint8), y_train=np.zeros(6000, np.uint8),
                  x_test=rng.integers(0, 256, (10, 28, 28), dtype=np.uint8), y_test=np.zeros(10, np.uint8))
    np.savez(tmp_path / "mnist.npz", **arrays)
    dataset = utils.load_dataset(data_dir=tmp_path, train_examples=100, validation_examples=10)
    np.testing.assert_allclose(dataset.validation.images, arrays["x_train"][:10].reshape(10, 784) / 255.0, rtol=1e-6)


@pytest.mark.parametrize("damage, message", [
    ("magic", "wrong magic number"),
    ("truncate", "truncated or corrupt"),
    ("count", "truncated or corrupt"),
])
def test_corrupt_idx_files_are_clear_errors(tmp_path, damage, message):
    folder = write_fake_mnist(tmp_path / "mnist")
    path = folder / "train-images-idx3-ubyte.gz"
    raw = utils.read_idx(path)
    header_and_body = gzip.decompress(path.read_bytes())
    if damage == "magic":
        path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + header_and_body[4:]))  # a labels magic
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    else:  # the header claims more images than the file holds
        count = (raw.shape[0] + 5).to_bytes(4, "big")
        path.write_bytes(gzip.compress(header_and_body[:4] + count + header_and_body[8:]))
    with pytest.raises(utils.DataError, match=message):
        utils.load_dataset(data_dir=folder, train_examples=10, validation_examples=5)


def test_missing_folder_and_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(utils.DataError, match="does not exist"):
        utils.load_dataset(data_dir=tmp_path / "nowhere")
    with pytest.raises(utils.DataError, match="missing train-labels-idx1-ubyte.gz, t10k-images"):
        (tmp_path / "partial").mkdir()
        utils.write_idx(tmp_path / "partial" / "train-images-idx3-ubyte.gz", np.zeros((1, 28, 28)))
        utils.load_dataset(data_dir=tmp_path / "partial")


def test_batches_cover_each_epoch_once_and_straddle_epochs():
    indices = data.batch_indices(seed=3, first_step=0, steps=7, batch_size=30, examples=100).ravel()
    assert sorted(indices[:100]) == list(range(100)) and sorted(indices[100:200]) == list(range(100))
    assert (indices[:100] != indices[100:200]).any(), "reshuffled every epoch"
    later = data.batch_indices(seed=3, first_step=4, steps=3, batch_size=30, examples=100).ravel()
    np.testing.assert_array_equal(later, indices[120:210])


# ---------------------------------------------------------------------------
# Training, saving, loading


METRIC_COLUMNS = ("step", "training_loss", "validation_loss", "elapsed_seconds", "training_reconstruction",
                  "training_kl", "validation_reconstruction", "validation_kl", "validation_active_units")


def without_time(history):
    """The rows of a metrics history without their (machine-dependent) elapsed_seconds."""
    return [{column: value for column, value in row.items() if column != "elapsed_seconds"} for row in history]


def test_same_seed_same_numbers_and_another_seed_differs(tmp_path):
    dataset = utils.load_dataset(train_examples=300, validation_examples=50)
    runs = {name: func.train(tiny_config(layer_structure="p-lwta", seed=seed), tmp_path / name, dataset=dataset,
                             progress=False)
            for name, seed in (("a", 5), ("b", 5), ("c", 6))}
    assert all(tuple(row) == METRIC_COLUMNS for history in runs.values() for row in history)
    losses = {name: without_time(history) for name, history in runs.items()}
    assert losses["a"] == losses["b"]
    assert [row["validation_loss"] for row in losses["a"]] != [row["validation_loss"] for row in losses["c"]]
    assert without_time(checkpoint.read_metrics_csv(tmp_path / "a" / checkpoint.METRICS_FILE)) == losses["a"]


@pytest.mark.parametrize("structure", network.LAYER_STRUCTURES)
def test_save_load_round_trip_gives_identical_outputs(tmp_path, structure):
    dataset = utils.load_dataset(train_examples=300, validation_examples=50)
    config = tiny_config(layer_structure=structure, steps=10)
    func.train(config, tmp_path / "model", dataset=dataset, progress=False)
    trainer = Trainer(config, dataset.train.images, dataset.validation.images)
    saved_config, arrays = checkpoint.read(tmp_path / "model")
    assert saved_config == config
    trainer.restore(arrays, tmp_path / "model")
    assert trainer.step() == 10
    loaded, loaded_config = func.load_model(tmp_path / "model")
    assert loaded_config == config
    x = tf.constant(dataset.validation.images[:8])
    seed = tf.constant([1, 2], tf.int64)
    for training in (False, True):
        for loaded_part, trained_part in zip(loaded.forward(x, training=training, seed=seed),
                                             trainer.model.forward(x, training=training, seed=seed)):
            np.testing.assert_array_equal(loaded_part.numpy(), trained_part.numpy())
    np.testing.assert_array_equal(loaded(x).numpy(), trainer.model(x).numpy())
    saved = json.loads((tmp_path / "model" / checkpoint.CONFIG_FILE).read_text())
    assert saved["model"] == "vae" and saved["model_config"]["layer_structure"] == structure
    assert saved["training"]["steps"] == 10


def test_validation_loss_is_the_negative_elbo_in_inference_mode(tmp_path):
    dataset = utils.load_dataset(train_examples=300, validation_examples=50)
    config = tiny_config(layer_structure="p-lwta", steps=10)
    history = func.train(config, tmp_path / "model", dataset=dataset, progress=False)
    model, _ = func.load_model(tmp_path / "model")
    x = tf.constant(dataset.validation.images)
    # The validation noise of step 10: the run's seed, its validation stream, then the step.
    stream = network.fold_in(tf.constant([config.training.seed, 0], tf.int64), data.VALIDATION_STREAM)
    mean, log_variance, logits = model.forward(x, training=False, seed=network.fold_in(stream, 10))
    total, reconstruction, kl = (tf.reduce_mean(part).numpy()
                                 for part in utils.negative_elbo(x, mean, log_variance, logits, "mse"))
    assert history[-1]["validation_loss"] == pytest.approx(float(total), rel=1e-6)
    assert history[-1]["validation_reconstruction"] == pytest.approx(float(reconstruction), rel=1e-6)
    assert history[-1]["validation_kl"] == pytest.approx(float(kl), rel=1e-5)
    # Active units (Burda et al. 2015): latent units whose posterior mean varies across the images by more than 0.01.
    assert history[-1]["validation_active_units"] == np.count_nonzero(np.var(mean.numpy(), axis=0) > 0.01)


def test_training_lowers_the_validation_loss(tmp_path):
    history = func.train(tiny_config(steps=60), tmp_path / "model", progress=False)
    assert history[-1]["validation_loss"] < history[0]["validation_loss"] - 10
    for row in history:
        for split in ("training", "validation"):
            assert row[f"{split}_loss"] == pytest.approx(row[f"{split}_reconstruction"] + row[f"{split}_kl"],
                                                         rel=1e-5)


def test_cli_train_then_reconstruct(tmp_path):
    model_dir = tmp_path / "model"
    trained = run_cli("train", "--layer-structure", "lwta", "--steps", 20, "--train-examples", 200,
                      "--validation-examples", 20, "--model-path", model_dir)
    assert trained.returncode == 0, trained.stderr
    assert {"checkpoint.npz", "config.json", "metrics.csv", "tensorboard"} <= {p.name for p in model_dir.iterdir()}
    assert any((model_dir / "tensorboard").iterdir())
    rows = checkpoint.read_metrics_csv(model_dir / "metrics.csv")
    assert [row["step"] for row in rows] == [10, 20]
    assert (model_dir / "metrics.csv").read_text().splitlines()[0] == ",".join(METRIC_COLUMNS)
    config = json.loads((model_dir / "config.json").read_text())
    assert config["format"] == 2 and config["model"] == "vae"
    assert config["model_config"]["layer_structure"] == "lwta"
    assert config["training"]["steps"] == 20 and config["training"]["learning_rate"] == 0.001

    for spelling in ("--mnist_index", "--mnist-index"):
        output = tmp_path / f"digit{spelling}"  # ".png" is appended
        made = run_cli("reconstruct", "--model-path", model_dir, "--output-path", output, spelling, 7)
        assert made.returncode == 0, made.stderr
        image = Image.open(f"{output}.png")
        assert image.size == (28, 28) and image.mode == "L"

    grid = run_cli("reconstruct", "--model-path", model_dir, "--output-path", tmp_path / "grid.png", "--grid", 5)
    assert grid.returncode == 0, grid.stderr
    # The 5 originals over their reconstructions, 2 pixels apart, with a 1-pixel line between the rows.
    assert Image.open(tmp_path / "grid.png").size == (5 * 28 + 4 * 2, 2 * 28 + 1)

    wrong = run_cli("reconstruct", "--model-path", model_dir, "--output-path", tmp_path / "x.png",
                    "--layer-structure", "none")
    assert wrong.returncode == 2 and "disagrees" in wrong.stderr and "Traceback" not in wrong.stderr


def test_default_model_folder_is_named_after_the_layer_structure_and_the_dataset():
    assert func.default_model_path(func.configure(layer_structure="p-lwta")) == Path("saved_models/p-lwta")
    assert func.default_model_path(func.configure(dataset="fashion-mnist")) == Path("saved_models/none-fashion-mnist")


def test_reconstruct_decodes_the_posterior_mean_unless_sampling(tmp_path):
    config = tiny_config(steps=10)
    func.train(config, tmp_path / "model", progress=False)
    paths = [func.reconstruct(tmp_path / "model", tmp_path / f"{name}.png", index=3, sample=sample, seed=seed)
             for name, sample, seed in (("mean1", False, 1), ("mean2", False, 2), ("sample1", True, 1), ("sample2", True, 2))]
    pixels = [np.asarray(Image.open(path)) for path in paths]
    np.testing.assert_array_equal(pixels[0], pixels[1])
    assert (pixels[2] != pixels[3]).any()
    model, _ = func.load_model(tmp_path / "model")
    validation = func.load_data(config).validation.images
    mean, _ = model.encode(validation[3:4])
    np.testing.assert_array_equal(pixels[0], utils.to_uint8(model.decode(mean).numpy().reshape(28, 28)))


def test_progress_lines_show_the_rate_since_the_first_update(monkeypatch):
    """Not on a terminal: a line every tenth of the steps; the rate and the ETA count from the first update, which
    comes after the first compiled call, so they leave out the compiling."""
    clock = [0.0]
    monkeypatch.setattr(training_progress.time, "perf_counter", lambda: clock[0])
    stream = io.StringIO()
    progress = Progress(100, stream=stream)
    clock[0] = 100.0  # the first call compiled for 100 s
    for update, done in enumerate(range(5, 101, 5)):
        if update:
            clock[0] += 1 if update % 2 else 4  # 5 steps in 1 s, the next 5 in 4 s, and so on
        progress.update(done, {"loss": 1.0})
    lines = stream.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == [f"{done}/100" for done in (5, 15, 25, 35, 45, 55, 65, 75, 85, 95, 100)]
    assert lines[0] == "step 5/100  loss 1.000"  # no rate yet
    for line, done in zip(lines[1:-1], range(15, 100, 10)):
        assert "  loss 1.000  2.0 steps/s (500.00 ms/step)  ETA " in line, line  # 10 steps every 5 s
        eta = int(re.fullmatch(r".*ETA (\d+) s", line).group(1))
        assert abs(eta - (100 - done) / 2) <= 0.5, line
    assert lines[-1] == "step 100/100  loss 1.000  2.1 steps/s (484.21 ms/step)  ETA 0 s"  # 95 steps in 46 s


def numpy_metrics(metrics):
    return {name: value.numpy() for name, value in metrics.items()}


@pytest.mark.parametrize("structure", network.LAYER_STRUCTURES)
def test_fast_path_equals_the_straightforward_step(structure):
    """Many XLA-compiled steps per call, batches gathered in the graph, compute the plain graph's single steps:
    same weights, batches and noise (seeded draws are alike on both paths), so the same losses and updates."""
    dataset = utils.load_dataset(train_examples=300, validation_examples=50)
    config = tiny_config(layer_structure=structure, batch_size=32)
    indices = data.batch_indices(config.training.seed, 0, 12, config.training.batch_size, 300)
    fast = Trainer(config, dataset.train.images, dataset.validation.images)
    fast_metrics = numpy_metrics(fast.train_interval(tf.constant(0, tf.int64), tf.constant(indices)))
    assert set(fast_metrics) == {"loss", "reconstruction", "kl"}
    assert all(values.shape == (12,) for values in fast_metrics.values())
    plain = Trainer(config, dataset.train.images, dataset.validation.images, jit_compile=False)
    one_step = tf.function(plain.train_step)
    plain_steps = [numpy_metrics(one_step(tf.constant(dataset.train.images[batch]), tf.constant(step, tf.int64)))
                   for step, batch in enumerate(indices)]
    for name, values in fast_metrics.items():
        np.testing.assert_allclose(values, [metrics[name] for metrics in plain_steps], rtol=1e-5,
                                   err_msg=name)
    for fast_weight, plain_weight in zip(fast.model.weights, plain.model.weights):
        np.testing.assert_allclose(fast_weight.numpy(), plain_weight.numpy(), rtol=1e-4, atol=1e-6)
    assert fast.step() == plain.step() == 12
    fast_validation = numpy_metrics(fast.validation_metrics(tf.constant(12, tf.int64)))
    plain_validation = numpy_metrics(plain.validation_metrics(tf.constant(12, tf.int64)))
    assert set(fast_validation) == set(plain_validation) == {"loss", "reconstruction", "kl", "active_units"}
    for name in fast_validation:
        np.testing.assert_allclose(fast_validation[name], plain_validation[name], rtol=1e-5, err_msg=name)
    # Same seed, same path: identical.  A wrong step index or batch would break the match above.
    again = Trainer(config, dataset.train.images, dataset.validation.images)
    again_metrics = numpy_metrics(again.train_interval(tf.constant(0, tf.int64), tf.constant(indices)))
    for name, values in fast_metrics.items():
        np.testing.assert_array_equal(again_metrics[name], values, err_msg=name)


def test_p_lwta_frequencies_inside_compiled_code():
    """XLA draws its own random numbers: the survivor frequencies must still follow the softmax."""
    draws, block = 20000, np.array([0.2, -0.4], dtype=np.float32)
    compiled = tf.function(lambda x: network.probabilistic_lwta(x, True, 2, seed=tf.constant([3, 9], tf.int64)),
                           jit_compile=True)
    survivors = compiled(tf.constant(np.tile(block, (draws, 1)))).numpy() != 0
    assert (survivors.sum(axis=1) == 1).all()
    p = np.exp(block) / np.exp(block).sum()
    assert (np.abs(survivors.mean(axis=0) - p) < 5 * np.sqrt(p * (1 - p) / draws)).all()
