"""What defines a training run, the original's experiments, and the defaults of the command lines.

Free of TensorFlow, so that script.py and the experiment scripts can parse
their flags, print --help and reject a bad value at once, before the seconds it
takes to import TensorFlow.
"""

import dataclasses
import json
import math
from pathlib import Path

import utils
from utils import DataError, UsageError

LAYER_STRUCTURES = ("none", "lwta", "p-lwta")
METRICS_COLUMNS = ("step", "training_loss", "validation_loss", "elapsed_seconds")  # a model's metrics.csv

# script.py evaluate
DEFAULT_IMPORTANCE_SAMPLES = 5000
DEFAULT_CHUNK_SIZE = 25000  # images x importance samples decoded per compiled call
MAX_CHUNK_IMAGES = 64  # each image of a call gets its own noise draw in the compiled graph
# script.py latent
MANIFOLD_SIDE = 20  # the decoded latent plane of a 2-D model: a 20 x 20 grid of digits


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run; saved as config.json and inside the checkpoint."""

    layer_structure: str = "none"
    block_size: int = 2
    hidden_units: int = 500
    latent_dim: int = 100
    compete_latent: bool = True
    loss: str = "mse"
    binarize: str = "none"
    dataset: str = "mnist"
    batch_size: int = 100
    steps: int = 1000
    learning_rate: float = 0.001
    beta: float = 1.0
    kl_warmup_steps: int = 0
    seed: int = 1
    train_examples: int = 10000
    validation_examples: int = 1000
    validation_interval: int = 10
    checkpoint_interval: int = 500
    data_dir: str | None = None

    def validate(self):
        """Raise UsageError for values no run can use."""
        import network  # TensorFlow, which the command line loads only after its flags parse
        positive = ("block_size", "hidden_units", "latent_dim", "batch_size", "steps", "train_examples",
                    "validation_examples", "validation_interval", "checkpoint_interval")
        for name in positive:
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise UsageError(f"--learning-rate must be a positive number, got {self.learning_rate}")
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            raise UsageError(f"--beta must be a non-negative number, got {self.beta}")
        if self.seed < 0:
            raise UsageError(f"--seed must be 0 or more, got {self.seed}")
        if self.kl_warmup_steps < 0:
            raise UsageError(f"--kl-warmup-steps must be 0 or more, got {self.kl_warmup_steps}")
        choices = (("layer_structure", LAYER_STRUCTURES), ("loss", utils.LOSSES),
                   ("binarize", utils.BINARIZATIONS), ("dataset", tuple(utils.DATASETS)))
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise UsageError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.batch_size > self.train_examples:
            raise UsageError(f"--batch-size {self.batch_size} is larger than the {self.train_examples} training examples")
        if self.layer_structure != "none":
            widths = [self.hidden_units] + ([self.latent_dim] if self.compete_latent else [])
            try:
                for width in widths:
                    network.check_block_size(width, self.block_size)
            except ValueError as error:
                raise UsageError(f"--block-size: {error}") from None

    def model_arguments(self):
        """The arguments of network.VAE."""
        return {
            "layer_structure": self.layer_structure,
            "block_size": self.block_size,
            "hidden_units": self.hidden_units,
            "latent_dim": self.latent_dim,
            "input_dim": utils.PIXELS,
            "compete_latent": self.compete_latent,
        }

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, values):
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise DataError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """The settings of one of the original's train_*.py scripts, and the model's label in figures."""

    layer_structure: str
    learning_rate: float
    batch_size: int
    steps: int
    label: str


# Folder name under saved_models/ -> the original's settings.  p-LWTA alone had learning rate 1e-4 and
# batch 1,000, so the original's comparison is not like for like; kept for fidelity.
EXPERIMENTS = {
    "default": Experiment("none", 1e-3, 100, 2000, "ReLU (none)"),
    "lwta": Experiment("lwta", 1e-3, 100, 2000, "LWTA"),
    "p-lwta": Experiment("p-lwta", 1e-4, 1000, 2000, "p-LWTA"),
}
RESULTS_DIR = "results"  # under a model's folder: its reconstructions by the train_*.py scripts
RECONSTRUCTED_DIGITS = 10  # the first validation digits, reconstructed after training


def result_paths(model_dir):
    """Where the reconstructions of a model go: model_dir/results/mnist_0.png ... mnist_9.png."""
    return [Path(model_dir) / RESULTS_DIR / f"mnist_{index}.png" for index in range(RECONSTRUCTED_DIGITS)]
