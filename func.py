"""The library front: train, resume, reconstruct, evaluate, sample, latent and export, for every model family.

script.py, the experiment scripts and notebooks call these; the work lives in
models/ (the families), training/ (the shared loop and model directories),
evaluation/ and pictures/.

    import func
    config = func.configure(layer_structure="lwta", steps=1000)     # any family's settings, by name
    func.train(config, "saved_models/lwta")
    model, config = func.load_model("saved_models/lwta")
"""

from pathlib import Path

import keras

import models
from evaluation.importance import evaluate
from fileio import atomic
from pictures.draw import latent, prior_samples, reconstruct, require, sample
from settings.run import RunConfig, configure
from training.checkpoint import EVALUATION_FILE, has_model, load_model
from training.data import evaluation_images, load_data
from training.loop import TrainingDiverged, TrainingInterrupted, resume, train
from utils import UsageError

__all__ = ["RunConfig", "TrainingDiverged", "TrainingInterrupted", "EVALUATION_FILE", "configure", "default_model_path",
           "evaluate", "evaluation_images", "export", "has_model", "latent", "load_data", "load_model", "prior_samples",
           "reconstruct", "resume", "sample", "train"]
MODELS_DIR = "saved_models"


def default_model_path(config):
    """Where `script.py train` puts a model without --model-path: saved_models/<name>, <name>-<dataset> off MNIST."""
    name = config.model_config.run_name() if config.model == models.DEFAULT else f"{config.model}"
    dataset = config.training.dataset
    return Path(MODELS_DIR) / (name if dataset == "mnist" else f"{name}-{dataset}")


def export(model_dir, output_path):
    """Write the model of `model_dir` as a Keras archive (.keras), loadable with keras.saving.load_model."""
    output_path = Path(output_path)
    if output_path.suffix != ".keras":
        raise UsageError(f"--output-path {output_path} must end in .keras, the Keras archive format")
    atomic.check_writable(output_path)
    model, config = load_model(model_dir)
    require(config.model, "export")
    exported = models.family(config.model).export_model(model)
    atomic.atomic_write(output_path, lambda temporary: keras.saving.save_model(exported, temporary))
    return output_path

