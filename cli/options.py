"""The settings of the commands other than train, as settings dataclasses: their flags are generated."""

import dataclasses

from evaluation import DEFAULT_CHUNK_SIZE, DEFAULT_IMPORTANCE_SAMPLES, MAX_CHUNK_IMAGES
from models.vae.config import LAYER_STRUCTURES
from settings import MAX_SEED, setting
from utils import MAX_ENLARGEMENT

MAX_IMPORTANCE_SAMPLES = 10**6  # a million samples of one image already take minutes
MAX_CHUNK_SIZE = 10**6  # about 2.5 GiB of activations for the 784-500-100 network
MAX_PICTURES = 10000  # digits in one picture


def seed_setting(what):
    return setting(1, f"seed of {what}", minimum=0, maximum=MAX_SEED)


def scale_setting():
    return setting(1, "draw every pixel as a SCALE x SCALE block (nearest neighbour), e.g. for papers", minimum=1,
                   maximum=MAX_ENLARGEMENT)


@dataclasses.dataclass(frozen=True)
class ReconstructOptions:
    mnist_index: int = setting(0, "index into the validation split", flag="--mnist-index", aliases=("--mnist_index",))
    grid: int | None = setting(None, "instead, a grid of the first N validation digits above their reconstructions",
                               minimum=1, maximum=MAX_PICTURES)
    sample: bool = setting(False, "decode a sampled z instead of the posterior mean")
    seed: int = seed_setting("--sample")
    layer_structure: str | None = setting(None, "if given, must match the saved model", choices=LAYER_STRUCTURES)
    scale: int = scale_setting()


@dataclasses.dataclass(frozen=True)
class EvaluateOptions:
    split: str = setting("test", "images to evaluate", choices=("test", "validation"))
    importance_samples: int = setting(DEFAULT_IMPORTANCE_SAMPLES, "K, samples per image (as in Burda et al. 2015)",
                                      minimum=1, maximum=MAX_IMPORTANCE_SAMPLES)
    chunk_size: int = setting(DEFAULT_CHUNK_SIZE, f"images x samples decoded per compiled call, at most "
                                                  f"{MAX_CHUNK_IMAGES} images; memory grows with it, by about 2.5 KiB "
                                                  "each for the 784-500-100 network", minimum=1,
                              maximum=MAX_CHUNK_SIZE)
    seed: int = seed_setting("the importance samples")
    limit: int | None = setting(None, "use only the first N images of the split (none given: all)", minimum=1)


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    count: int = setting(100, "digits to draw (100: a 10 x 10 grid)", minimum=1, maximum=MAX_PICTURES)
    seed: int = seed_setting("the prior samples")
    scale: int = scale_setting()


@dataclasses.dataclass(frozen=True)
class LatentOptions:
    limit: int | None = setting(None, "use only the first N test images (none given: all)", minimum=1)


def options(cls, args):
    """The `cls` options of parsed `args`."""
    return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})
