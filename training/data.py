"""The images a run trains and validates on, and the order of its batches."""

import numpy as np

import utils

# Evaluation images are binarized with one fixed draw, the same for every model, so their numbers compare.
EVALUATION_BINARIZATION_SEED = 0
# Independent random streams of a run, folded into the run's seed.
NOISE_STREAM, VALIDATION_STREAM, BINARIZATION_STREAM = 1, 2, 3


def load_data(config, data_dir=None):
    """The dataset of the RunConfig `config`, from `data_dir`, else the folder it recorded, else the defaults."""
    training = config.training
    return utils.load_dataset(training.dataset, data_dir or training.data_dir,
                              train_examples=training.train_examples,
                              validation_examples=training.validation_examples)


def evaluation_images(config, split):
    """Images of a validation or test split as the model sees them: binarized with one fixed draw if it was trained so."""
    if config.training.binarize == "none":
        return split.images
    return utils.binarize(split.images, EVALUATION_BINARIZATION_SEED)


def training_images(config, split):
    """Training images: grey levels, or one seeded draw for static binarization (dynamic draws per batch)."""
    if config.training.binarize == "static":
        return utils.binarize(split.images, [config.training.seed, BINARIZATION_STREAM])
    return split.images


def batch_indices(seed, first_step, steps, batch_size, examples):
    """Example indices of `steps` batches starting at `first_step`, shape [steps, batch_size].

    The examples form one stream, reshuffled every epoch with a generator keyed
    on (seed, epoch); a batch may straddle two epochs, as in the original.  The
    result depends only on its arguments, so a resumed run sees the same batches.
    """
    positions = first_step * batch_size + np.arange(steps * batch_size)
    epochs, offsets = np.divmod(positions, examples)
    indices = np.empty_like(positions)
    for epoch in np.unique(epochs):
        order = np.random.default_rng([seed, int(epoch)]).permutation(examples)
        chosen = epochs == epoch
        indices[chosen] = order[offsets[chosen]]
    return indices.reshape(steps, batch_size).astype(np.int32)
