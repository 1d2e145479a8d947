"""Pictures of a trained model: reconstructions, prior samples, the latent space and its decoded manifold."""

import math
import statistics
from pathlib import Path

import numpy as np

import models
import utils
from evaluation.importance import first_rows
from fileio import atomic
from training import checkpoint, data
from utils import UsageError

MANIFOLD_SIDE = 20  # the decoded latent plane of a 2-D model: a 20 x 20 grid of digits
ROW_LENGTH = 10  # reconstruct --grid: at most 10 digits a row, as in the comparison figure
GAP = 2  # background pixels between the digits of a grid, so that neighbours do not merge
PAIR_GAP = 6  # background pixels between one pair of rows (originals, reconstructions) and the next
SEPARATOR_GREY = 0.5  # the 1-pixel line between originals and their reconstructions: neither digit nor background
MANIFOLD_DPI = 100
MANIFOLD_ZOOM = 2  # figure pixels per manifold pixel: room for a tick label under every digit
MANIFOLD_MARGINS = {"left": 70, "bottom": 55, "right": 20, "top": 40}  # figure pixels for the labels and title


def load_for(model_dir, command):
    """(model, RunConfig) of `model_dir`, or UsageError when its family cannot serve `command`."""
    model, config = checkpoint.load_model(model_dir)
    require(config.model, command)
    return model, config


def require(family_name, command):
    """UsageError unless family `family_name` serves `command`."""
    if command not in models.family(family_name).commands:
        raise UsageError(f"the {family_name} model family cannot serve {command}")


def check_layer_structure(config, layer_structure, model_dir):
    """reconstruct's --layer-structure, kept from the original's command line, must match the saved model."""
    saved = getattr(config.model_config, "layer_structure", None)
    if layer_structure is not None and layer_structure != saved:
        raise UsageError(f"--layer-structure {layer_structure} disagrees with the model in {model_dir}, "
                         f"which is {saved}; drop the flag or pick another directory")


def describe(config):
    """A short name of a run's model for titles: its family and, for the VAE, its layer structure."""
    return config.model_config.run_name() if config.model == "vae" else config.model


def png_path(path):
    """`path` as a Path, with ".png" appended unless it already ends so."""
    path = Path(path)
    return path if path.suffix.lower() == ".png" else path.with_name(path.name + ".png")


def check_scale(scale):
    """UsageError unless `scale` is a whole enlargement factor from 1 to utils.MAX_ENLARGEMENT."""
    if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= utils.MAX_ENLARGEMENT:
        raise UsageError(f"--scale must be an integer from 1 to {utils.MAX_ENLARGEMENT}, got {scale!r}")


def save_picture(path, pixels, scale):
    """Write grey levels in [0, 1] as a grayscale PNG, every pixel a `scale` x `scale` block."""
    utils.save_grayscale_png(path, utils.enlarge(pixels, scale))


def stack(blocks, gap):
    """2-D blocks of one width, top to bottom, `gap` rows of background apart."""
    spacer = np.zeros((gap, blocks[0].shape[1]), dtype=blocks[0].dtype)
    return np.concatenate([part for block in blocks for part in (spacer, block)][1:])


def paired_rows(originals, reconstructions, columns=ROW_LENGTH):
    """Rows of at most `columns` originals, each directly above their reconstructions with a grey line between;
    the row pairs PAIR_GAP apart, so that each reconstruction is read against its own original."""
    columns = min(columns, len(originals))
    pairs = []
    for start in range(0, len(originals), columns):
        top, bottom = (utils.tile_images(images[start : start + columns], columns, GAP)
                       for images in (originals, reconstructions))
        line = np.full((1, top.shape[1]), SEPARATOR_GREY, dtype=top.dtype)
        pairs.append(np.concatenate([top, line, bottom]))
    return stack(pairs, PAIR_GAP)


def reconstruct(model_dir, output_path, index=0, grid=None, sample=False, layer_structure=None, seed=1, data_dir=None,
                scale=1):
    """Write the reconstruction of validation image `index` (or the first `grid` above their reconstructions)
    as a grayscale PNG, every pixel enlarged to `scale` x `scale`."""
    check_scale(scale)
    output_path = png_path(output_path)
    atomic.check_writable(output_path)
    model, config = load_for(model_dir, "reconstruct")
    check_layer_structure(config, layer_structure, model_dir)
    images = data.evaluation_images(config, data.load_data(config, data_dir).validation)
    family = models.family(config.model)
    count = len(images)
    if grid is not None:
        if not 1 <= grid <= count:
            raise UsageError(f"--grid must be between 1 and {count} (the validation images), got {grid}")
        originals = images[:grid]
        reconstructions = family.reconstruct(model, originals, sample, seed)
        picture = paired_rows(originals, reconstructions)
    else:
        if not 0 <= index < count:
            raise UsageError(f"--mnist-index {index} is outside the validation split (0 to {count - 1})")
        picture = utils.tile_images(family.reconstruct(model, images[index : index + 1], sample, seed), 1)
    save_picture(output_path, picture, scale)
    return output_path


# ---------------------------------------------------------------------------
# Pictures of the generative model


def sample(model_dir, output_path, count=100, seed=1, scale=1):
    """Decode `count` prior draws z ~ N(0, I) (inference mode) into a square-ish grid, every pixel enlarged to
    `scale` x `scale`; returns the PNG's path."""
    if count < 1:
        raise UsageError(f"--count must be at least 1, got {count}")
    check_scale(scale)
    output_path = png_path(output_path)
    atomic.check_writable(output_path)
    model, config = load_for(model_dir, "sample")
    digits = prior_samples(model, config, count, seed)
    save_picture(output_path, utils.tile_images(digits, math.ceil(math.sqrt(count)), GAP), scale)
    return output_path


def prior_samples(model, config, count=16, seed=1):
    """`count` digits decoded from prior draws (inference mode), pixel probabilities [count, 784]."""
    require(config.model, "sample")
    family = models.family(config.model)
    return family.decode(model, family.sample_prior(model, count, seed))


def principal_plane(points):
    """(coordinates [count, 2], axis names): the points themselves in 2-D, else their first two principal components.

    A 1-D latent space is drawn on a line (second coordinate 0).
    """
    dimensions = points.shape[1]
    if dimensions == 1:
        return np.column_stack([points[:, 0], np.zeros(len(points))]), ("z1", "")
    if dimensions == 2:
        return points, ("z1", "z2")
    centred = points - points.mean(axis=0)
    _, singular_values, directions = np.linalg.svd(centred, full_matrices=False)
    explained = singular_values**2 / max(np.sum(singular_values**2), np.finfo(float).tiny)
    names = tuple(f"principal component {i + 1} ({explained[i]:.0%} of the variance)" for i in range(2))
    return centred @ directions[:2].T, names


def latent_figure(coordinates, labels, axis_names, title):
    """A scatter plot of `coordinates` coloured by label (0-9), with a colour bar."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    figure = Figure(figsize=(7, 6), layout="constrained")
    axes = figure.subplots()
    points = axes.scatter(coordinates[:, 0], coordinates[:, 1], c=labels, cmap="tab10", vmin=-0.5, vmax=9.5,
                          s=4, alpha=0.7, linewidths=0)
    figure.colorbar(points, ax=axes, ticks=range(10), label="label")
    axes.set(xlabel=axis_names[0], ylabel=axis_names[1], title=title)
    return figure


def manifold_values(side=MANIFOLD_SIDE):
    """The z1 (and z2) values of the manifold's columns (and rows), ascending.

    They are evenly spaced in prior probability (the inverse normal CDF of
    (i + 0.5) / side), so each digit covers the same prior mass.
    """
    return [statistics.NormalDist().inv_cdf((i + 0.5) / side) for i in range(side)]


def manifold(family, model, values):
    """Decoded digits of a 2-D model at every (z1, z2) in `values` x `values`, one grid GAP pixels apart;
    z1 grows rightwards and z2 upwards."""
    z = np.array([(z1, z2) for z2 in reversed(values) for z1 in values], dtype=np.float32)
    return utils.tile_images(family.decode(model, z), len(values), GAP)


def manifold_figure(grid, values, title):
    """The manifold `grid` with axes whose ticks, one per digit, give its z1 and z2, so that a reader can tell
    where in the latent plane each digit lies.  Each grid pixel is MANIFOLD_ZOOM x MANIFOLD_ZOOM figure pixels."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    height, width = grid.shape
    margins = MANIFOLD_MARGINS
    figure_width = width * MANIFOLD_ZOOM + margins["left"] + margins["right"]
    figure_height = height * MANIFOLD_ZOOM + margins["bottom"] + margins["top"]
    figure = Figure(figsize=(figure_width / MANIFOLD_DPI, figure_height / MANIFOLD_DPI), dpi=MANIFOLD_DPI)
    axes = figure.add_axes((margins["left"] / figure_width, margins["bottom"] / figure_height,
                            width * MANIFOLD_ZOOM / figure_width, height * MANIFOLD_ZOOM / figure_height))
    # extent: one unit per grid pixel, y = 0 at the bottom, so z2 grows upwards with y.
    axes.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto",
                extent=(0, width, 0, height))
    # The i-th digit from the left, and from the bottom (the grid is square), is centred here.
    centres = [utils.IMAGE_SIDE / 2 + i * (utils.IMAGE_SIDE + GAP) for i in range(len(values))]
    labels = [f"{value:.2f}" for value in values]
    axes.set_xticks(centres, labels, fontsize="small")
    axes.set_yticks(centres, labels, fontsize="small")
    axes.set(xlabel="z1", ylabel="z2", title=title)
    return figure


def latent(model_dir, output_path, data_dir=None, limit=None):
    """Plot the test images' posterior means (inference mode) coloured by label; returns the paths written.

    More than two latent dimensions are projected on their first two principal
    components.  A 2-D model also gets its decoded manifold, with z1 and z2 on its
    axes, written next to the plot as <stem>_manifold.png.  `limit` keeps the
    first test images only.
    """
    output_path = png_path(output_path)
    atomic.check_writable(output_path)
    model, config = load_for(model_dir, "latent")
    family = models.family(config.model)
    test = data.load_data(config, data_dir).test
    images, labels = first_rows(data.evaluation_images(config, test), limit), first_rows(test.labels, limit)
    coordinates, axis_names = principal_plane(family.encode_mean(model, images))
    title = f"{config.training.dataset} test set: posterior means of {len(images)} images ({describe(config)})"
    utils.save_figure(latent_figure(coordinates, labels, axis_names, title), output_path, dpi=120)
    if family.latent_dim(model) != 2:
        return [output_path]
    manifold_path = output_path.with_name(f"{output_path.stem}_manifold.png")
    values = manifold_values()
    title = f"Digits decoded over the latent plane ({describe(config)})"
    utils.save_figure(manifold_figure(manifold(family, model, values), values, title), manifold_path,
                      dpi=MANIFOLD_DPI)
    return [output_path, manifold_path]
