"""Checkpoints of format 1 in today's format 2, in one step on loading.

Format 1 (VAE only) named arrays by position: model_000 ... model_009 in the
order of the VAE's weights, optimizer_000 ... in the order of Adam's
variables, a flat configuration, and a four-column history.  Its LWTA blocks
were strided, or, marked ``block_layout = adjacent`` (or unmarked, the
earliest), made of adjacent units; those weights, and Adam's moments with
them, are relabelled into strided order, which computes the same function.
"""

import json

import numpy as np

from settings.run import from_format_1 as config_from_format_1
from training.checkpoint_names import FIRST_COLUMNS, FORMAT, MODEL, OPTIMIZER

LAYERS = ("encoder_hidden", "mean", "log_variance", "decoder_hidden", "decoder_output")
WEIGHTS = [f"{layer}/{kind}" for layer in LAYERS for kind in ("kernel", "bias")]
# The VAE's metrics history today (training.checkpoint.metrics_columns of its metrics).
COLUMNS = FIRST_COLUMNS + ("training_reconstruction", "training_kl", "validation_reconstruction", "validation_kl",
                           "validation_active_units")


def from_format_1(arrays):
    """Format-1 checkpoint arrays as format-2 arrays."""
    config = config_from_format_1(json.loads(str(arrays["config"])))
    weights = {name: arrays[f"model_{index:03d}"] for index, name in enumerate(WEIGHTS)}
    momentum = {name: arrays[f"optimizer_{2 + 2 * index:03d}"] for index, name in enumerate(WEIGHTS)}
    velocity = {name: arrays[f"optimizer_{3 + 2 * index:03d}"] for index, name in enumerate(WEIGHTS)}
    if str(arrays.get("block_layout", "adjacent")) == "adjacent" and config["model_config"].get(
            "layer_structure", "none") != "none":
        for values in (weights, momentum, velocity):
            relabel_adjacent_blocks(values, config["model_config"])
    migrated = {MODEL + "vae/" + name: array for name, array in weights.items()}
    migrated[OPTIMIZER + "adam/iteration"] = arrays["optimizer_000"]
    migrated[OPTIMIZER + "adam/learning_rate"] = arrays["optimizer_001"]
    for name in WEIGHTS:
        flat = "vae_" + name.replace("/", "_")
        migrated[f"{OPTIMIZER}adam/{flat}_momentum"] = momentum[name]
        migrated[f"{OPTIMIZER}adam/{flat}_velocity"] = velocity[name]
    migrated.update(history=_history(arrays["history"]), history_columns=np.array(COLUMNS), elapsed=arrays["elapsed"],
                    config=np.array(json.dumps(config)), format=np.int64(FORMAT))
    return migrated


def _history(rows):
    """The four format-1 columns, then the parts of the loss that format 1 did not record, as NaN."""
    rows = np.asarray(rows, np.float64).reshape(-1, len(FIRST_COLUMNS))
    return np.concatenate([rows, np.full((len(rows), len(COLUMNS) - len(FIRST_COLUMNS)), np.nan)], axis=1)


def strided_order(width, block_size):
    """`order[n]` is the adjacent-block unit that strided-block position n holds."""
    return np.arange(width).reshape(width // block_size, block_size).T.ravel()


def relabel_adjacent_blocks(values, model_config):
    """Move, in place, each competing layer's output units (and the next layer's inputs) into strided order."""
    block_size, hidden_units = model_config.get("block_size", 2), model_config.get("hidden_units", 500)
    latent_dim, pixels = model_config.get("latent_dim", 100), values["decoder_output/bias"].shape[0]
    hidden = strided_order(hidden_units, block_size)
    competing_latent = not model_config.get("lwta_hidden_only", False)
    latent = strided_order(latent_dim, block_size) if competing_latent else np.arange(latent_dim)
    for layer, inputs, outputs in (("encoder_hidden", np.arange(pixels), hidden), ("mean", hidden, latent),
                                   ("log_variance", hidden, latent), ("decoder_hidden", latent, hidden),
                                   ("decoder_output", hidden, np.arange(pixels))):
        values[f"{layer}/kernel"] = values[f"{layer}/kernel"][inputs][:, outputs]
        values[f"{layer}/bias"] = values[f"{layer}/bias"][outputs]
