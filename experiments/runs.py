"""Training and reconstructing the original's experiments (imports TensorFlow)."""

from pathlib import Path

import func
import models
import utils
from experiments import EXPERIMENTS, MODELS_DIR, RECONSTRUCTED_DIGITS, result_paths
from utils import UsageError


def experiment_config(name, **overrides):
    """The RunConfig of experiment `name`: the original's settings, changed by `overrides` (settings by name)."""
    if name not in EXPERIMENTS:
        raise UsageError(f"unknown experiment {name!r}; use one of {', '.join(EXPERIMENTS)}")
    settings = EXPERIMENTS[name]
    config = func.configure(layer_structure=settings.layer_structure, learning_rate=settings.learning_rate,
                            batch_size=settings.batch_size, steps=settings.steps).replace(**overrides)
    if config.training.validation_examples < RECONSTRUCTED_DIGITS:
        raise UsageError(f"--validation-examples must be at least {RECONSTRUCTED_DIGITS}, the digits that are "
                         f"reconstructed; got {config.training.validation_examples}")
    return config


def write_reconstructions(model_dir, dataset=None):
    """Reconstruct the first validation digits of `dataset` (default: the model's own) with the saved model
    (posterior mean, inference mode) and write each as a 28x28 grayscale PNG; returns the paths."""
    model, config = func.load_model(model_dir)
    images = func.evaluation_images(config, (dataset or func.load_data(config)).validation)[:RECONSTRUCTED_DIGITS]
    reconstructions = models.family(config.model).reconstruct(model, images)
    paths = result_paths(model_dir)
    for path, reconstruction in zip(paths, reconstructions):
        utils.save_grayscale_png(path, reconstruction.reshape(utils.IMAGE_SIDE, utils.IMAGE_SIDE))
    return paths


def train_and_reconstruct(name, models_dir=MODELS_DIR, overwrite=False, dataset=None, progress=True, **overrides):
    """One round of a train_*.py script: train experiment `name` into models_dir/name, then write its results.

    `overrides` change the original's settings (by name, e.g. steps=20).  Prints the settings
    first.  `dataset` may be passed to reuse loaded data.  Returns the metrics history.
    """
    config = experiment_config(name, **overrides)
    config.validate()
    model_dir = Path(models_dir) / name
    if func.has_model(model_dir) and not overwrite:
        raise UsageError(f"{model_dir} already exists; pass --overwrite to replace it or --resume to continue it")
    training = config.training
    print(f"{name}: layer structure {config.model_config.layer_structure}, learning rate {training.learning_rate:g}, "
          f"batch size {training.batch_size}, {training.steps} steps, seed {training.seed}, {training.train_examples} "
          f"training and {training.validation_examples} validation images -> {model_dir}", flush=True)
    dataset = dataset or func.load_data(config)
    history = func.train(config, model_dir, overwrite=overwrite, dataset=dataset, progress=progress)
    write_reconstructions(model_dir, dataset)  # replaces a previous model's results, each file atomically
    return history


def resume_and_reconstruct(name, models_dir=MODELS_DIR, progress=True, **overrides):
    """Continue experiment `name` in models_dir/name from its checkpoint, then rewrite its results.

    `overrides` are the settings the user gave; as for func.resume, only steps,
    checkpoint_interval and data_dir may differ from the saved run.  Returns the whole metrics history.
    """
    model_dir = Path(models_dir) / name
    print(f"{name}: resuming {model_dir}", flush=True)
    history = func.resume(model_dir, overrides, progress=progress)
    write_reconstructions(model_dir)
    return history
