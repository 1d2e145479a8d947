"""What defines a training run: the shared training settings, the model family's own, and their JSON form."""

import dataclasses
import json

import models
import utils
from settings import MAX_COUNT, MAX_SEED, as_dict, checked, setting
from utils import DataError, UsageError

CONFIG_FORMAT = 2  # config.json and the checkpoint's configuration; 1 was one flat dictionary of VAE settings
# Settings a resumed run may change; any other must equal the saved run's.
RESUMABLE = ("steps", "checkpoint_interval", "data_dir")


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """The data, the optimizer and the schedule: shared by every model family."""

    dataset: str = setting("mnist", "dataset", choices=tuple(utils.DATASETS))
    binarize: str = setting("none", "binarize pixels: a fresh draw per batch, or one fixed draw",
                            choices=utils.BINARIZATIONS)
    train_examples: int = setting(10000, "training images, taken from image 5,000 of the training file",
                                  minimum=1, maximum=utils.MAX_TRAIN_EXAMPLES)
    validation_examples: int = setting(1000, "validation images, the first of the training file",
                                       minimum=1, maximum=utils.MAX_VALIDATION_EXAMPLES)
    data_dir: str | None = setting(None, "folder with the dataset's four IDX .gz files or its .npz (default: "
                                         "$MNIST_DATA_DIR, or $FASHION_MNIST_DATA_DIR with --dataset fashion-mnist, "
                                         "else Keras's cache or download)")
    batch_size: int = setting(100, "images per training step", minimum=1, maximum=utils.MAX_TRAIN_EXAMPLES)
    steps: int = setting(1000, "training steps, i.e. mini-batches", minimum=1, maximum=MAX_COUNT)
    learning_rate: float = setting(0.001, "Adam learning rate", minimum=1e-12, maximum=1e3)
    seed: int = setting(1, "seed of initialisation, shuffling and every random draw", minimum=0, maximum=MAX_SEED)
    validation_interval: int = setting(10, "steps between validation losses", minimum=1, maximum=100000)
    checkpoint_interval: int = setting(500, "steps between checkpoints", minimum=1, maximum=MAX_COUNT)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A model family's name, its settings and the training settings: everything that defines a run."""

    model: str = models.DEFAULT
    model_config: object = None
    training: TrainingConfig = TrainingConfig()

    def __post_init__(self):
        if self.model_config is None:
            object.__setattr__(self, "model_config", models.config_class(self.model)())

    def validate(self):
        """Raise UsageError for values no run can use, naming the flag."""
        checked(TrainingConfig, as_dict(self.training))
        checked(type(self.model_config), as_dict(self.model_config))
        if self.training.batch_size > self.training.train_examples:
            raise UsageError(f"--batch-size {self.training.batch_size} is larger than the "
                             f"{self.training.train_examples} training examples (--train-examples)")
        self.model_config.validate()

    def to_dict(self):
        return {"format": CONFIG_FORMAT, "model": self.model, "model_config": as_dict(self.model_config),
                "training": as_dict(self.training)}

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, values):
        """The configuration a model directory recorded (either format), every value checked; DataError if bad."""
        if not isinstance(values, dict):
            raise DataError(f"the configuration is a {type(values).__name__}, not a dictionary")
        values = values if values.get("format") == CONFIG_FORMAT else from_format_1(values)
        try:
            if set(values) != {"format", "model", "model_config", "training"}:
                raise UsageError(f"unexpected keys {sorted(map(str, values))}")
            family = values["model"]
            if family not in models.NAMES:
                raise UsageError(f"unknown model family {family!r}")
            return cls(family, checked(models.config_class(family), values["model_config"]),
                       checked(TrainingConfig, values["training"]))
        except UsageError as error:
            raise DataError(f"invalid configuration: {error}") from None

    def replace(self, **values):
        """A copy with settings changed by name, whichever of the two groups holds them."""
        training = {name: value for name, value in values.items() if name in field_names(TrainingConfig)}
        model = {name: value for name, value in values.items() if name in field_names(type(self.model_config))}
        unknown = set(values) - set(training) - set(model)
        if unknown:
            raise UsageError(f"{self.model} has no setting(s) {', '.join(sorted(unknown))}")
        return RunConfig(self.model, dataclasses.replace(self.model_config, **model),
                         dataclasses.replace(self.training, **training))


def field_names(cls):
    return {field.name for field in dataclasses.fields(cls)}


def configure(model=models.DEFAULT, **values):
    """A RunConfig of family `model` from settings given by name (e.g. steps=20, layer_structure="lwta")."""
    return RunConfig(model).replace(**values)


def from_format_1(values):
    """The format-1 configuration (one flat dictionary of VAE and training settings) in today's format.

    Format 1 had `compete_latent`, the negation of today's `lwta_hidden_only`.
    """
    values = dict(values)
    if "compete_latent" in values:
        values["lwta_hidden_only"] = not values.pop("compete_latent")
    model_names = field_names(models.config_class("vae"))
    return {"format": CONFIG_FORMAT, "model": "vae",
            "model_config": {name: value for name, value in values.items() if name in model_names},
            "training": {name: value for name, value in values.items() if name not in model_names}}
