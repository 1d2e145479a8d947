"""The original's experiments: the three train_*.py runs, the comparison figure and the learning curves.

Free of TensorFlow, so that the scripts parse their flags at once.
"""

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Experiment:
    """The settings of one of the original's train_*.py scripts, and the model's label in figures."""

    layer_structure: str
    learning_rate: float
    batch_size: int
    steps: int
    label: str
    script: str


# Layer structure -> the original's settings.  p-LWTA alone had learning rate 1e-4 and batch 1,000, so the
# original's comparison is not like for like; kept for fidelity.
EXPERIMENTS = {
    "none": Experiment("none", 1e-3, 100, 2000, "ReLU (none)", "train_default.py"),
    "lwta": Experiment("lwta", 1e-3, 100, 2000, "LWTA", "train_LWTA.py"),
    "p-lwta": Experiment("p-lwta", 1e-4, 1000, 2000, "p-LWTA", "train_pLWTA.py"),
}
MODELS_DIR = "saved_models/original"  # the train scripts' models go to <MODELS_DIR>/<layer structure>
RESULTS_DIR = "results"  # under a model's folder: its reconstructions by the train_*.py scripts
RECONSTRUCTED_DIGITS = 10  # the first validation digits, reconstructed after training


def result_paths(model_dir):
    """Where the reconstructions of a model go: model_dir/results/mnist_0.png ... mnist_9.png."""
    return [Path(model_dir) / RESULTS_DIR / f"mnist_{index}.png" for index in range(RECONSTRUCTED_DIGITS)]
