"""Pictures a researcher reads: reconstruction grids in row pairs, gaps between digits, --scale, the manifold's
z axes and the learning curves' y-range.

The commands run in-process through script.main, the code path of the command
line, on the tiny trained models of conftest (fixed seeds throughout).
"""

import numpy as np
import pytest
from PIL import Image

import compare_learning
import func
import models
import script
import utils
from conftest import tiny_config
from pictures.draw import manifold, manifold_figure, manifold_values, png_path

SIDE = utils.IMAGE_SIDE
PITCH = SIDE + 2  # a digit and the gap after it
PAIR_HEIGHT = 2 * SIDE + 1  # originals, the grey line, reconstructions
PAIR_PITCH = PAIR_HEIGHT + 6  # a row pair and the gap after it
LINE_GREY = 128  # utils.to_uint8(0.5)


def picture(*argv):
    """Run `script.py argv` (its --output-path the last argument) and return the PNG's grey levels."""
    assert script.main([*map(str, argv)]) == 0
    with Image.open(png_path(argv[-1])) as image:
        assert image.mode == "L"
        return np.asarray(image)


def reconstruct(model_dir, path, *flags):
    return picture("reconstruct", "--model-path", model_dir, *flags, "--output-path", path)


def sample(model_dir, path, *flags):
    return picture("sample", "--model-path", model_dir, *flags, "--output-path", path)


def digit(grid, top, left):
    return grid[top : top + SIDE, left : left + SIDE]


@pytest.fixture(scope="module")
def planar_model(tmp_path_factory):
    """A tiny model with a 2-D latent space, for the manifold."""
    folder = tmp_path_factory.mktemp("planar") / "model"
    func.train(tiny_config(latent_dim=2, seed=5), folder, progress=False)
    return folder


# ---------------------------------------------------------------------------
# The image helpers


def test_tile_images_leaves_gaps_of_background_between_digits():
    images = np.arange(1, 4, dtype=np.float32)[:, None] * np.ones((3, utils.PIXELS), np.float32)
    grid = utils.tile_images(images, 2, gap=2)
    assert grid.shape == (2 * SIDE + 2, 2 * SIDE + 2)
    expected = np.zeros_like(grid)
    for index, (top, left) in enumerate(((0, 0), (0, PITCH), (PITCH, 0))):
        expected[top : top + SIDE, left : left + SIDE] = index + 1
    np.testing.assert_array_equal(grid, expected)
    # Without a gap, the layout of comparison.png: digits edge to edge.
    assert utils.tile_images(np.ones((10, utils.PIXELS)), 10).shape == (SIDE, 10 * SIDE)
    assert utils.tile_images(np.ones((10, utils.PIXELS)), 10).all()


def test_enlarge_makes_every_pixel_a_block():
    pixels = np.array([[0.0, 1.0], [0.5, 0.25]])
    enlarged = utils.enlarge(pixels, 3)
    assert enlarged.shape == (6, 6)
    for row in range(2):
        for column in range(2):
            assert (enlarged[3 * row : 3 * row + 3, 3 * column : 3 * column + 3] == pixels[row, column]).all()
    np.testing.assert_array_equal(utils.enlarge(pixels, 1), pixels)


# ---------------------------------------------------------------------------
# reconstruct --grid and --scale


def test_reconstruct_grid_wraps_into_row_pairs_of_originals_above_reconstructions(small_model, tmp_path):
    count = 23  # two full rows of 10 and one of 3
    grid = reconstruct(small_model, tmp_path / "grid", "--grid", count)
    model, config = func.load_model(small_model)
    originals = func.evaluation_images(config, func.load_data(config).validation)[:count]
    reconstructions = models.family(config.model).reconstruct(model, originals)
    assert grid.shape == (3 * PAIR_PITCH - 6, 10 * PITCH - 2)
    expected = np.zeros_like(grid)
    for index in range(count):
        pair, column = divmod(index, 10)
        top, left = pair * PAIR_PITCH, column * PITCH
        expected[top + SIDE, :] = LINE_GREY  # the line under a row of originals, across the whole width
        expected[top : top + SIDE, left : left + SIDE] = utils.to_uint8(originals[index]).reshape(SIDE, SIDE)
        expected[top + SIDE + 1 : top + PAIR_HEIGHT, left : left + SIDE] = (
            utils.to_uint8(reconstructions[index]).reshape(SIDE, SIDE))
    np.testing.assert_array_equal(grid, expected)


def test_reconstruct_scale_enlarges_every_pixel(small_model, tmp_path):
    plain = reconstruct(small_model, tmp_path / "plain", "--grid", 3)
    assert plain.shape == (PAIR_HEIGHT, 3 * PITCH - 2)
    np.testing.assert_array_equal(reconstruct(small_model, tmp_path / "big", "--grid", 3, "--scale", 3),
                                  np.repeat(np.repeat(plain, 3, axis=0), 3, axis=1))
    one = reconstruct(small_model, tmp_path / "one", "--mnist-index", 4)
    assert one.shape == (SIDE, SIDE)
    np.testing.assert_array_equal(reconstruct(small_model, tmp_path / "one_big", "--mnist-index", 4, "--scale", 2),
                                  np.kron(one, np.ones((2, 2), np.uint8)))


@pytest.mark.parametrize("command", ["reconstruct", "sample"])
@pytest.mark.parametrize("scale, problem", [("0", "must be at least 1"), ("17", "must be at most 16"),
                                            ("2.5", "must be an integer")])
def test_scale_out_of_range_is_a_usage_error(small_model, tmp_path, capsys, command, scale, problem):
    output = tmp_path / "x.png"
    with pytest.raises(SystemExit) as exit:
        script.main([command, "--model-path", str(small_model), "--output-path", str(output), "--scale", scale])
    assert exit.value.code == 2
    assert f"argument --scale: {problem}" in capsys.readouterr().err and not output.exists()


def test_library_rejects_a_bad_scale_before_writing(small_model, tmp_path):
    for call in (lambda: func.sample(small_model, tmp_path / "x.png", scale=0),
                 lambda: func.reconstruct(small_model, tmp_path / "x.png", scale=utils.MAX_ENLARGEMENT + 1)):
        with pytest.raises(utils.UsageError, match="--scale must be an integer from 1 to 16"):
            call()
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------
# sample


def test_sample_grid_has_gaps_between_digits_and_scales(small_model, tmp_path):
    grid = sample(small_model, tmp_path / "samples", "--count", 10, "--seed", 3)
    assert grid.shape == (3 * PITCH - 2, 4 * PITCH - 2)  # 10 digits in 4 columns
    model, config = func.load_model(small_model)
    digits = utils.to_uint8(func.prior_samples(model, config, 10, seed=3)).reshape(-1, SIDE, SIDE)
    expected = np.zeros_like(grid)
    for index, pixels in enumerate(digits):
        row, column = divmod(index, 4)
        expected[row * PITCH : row * PITCH + SIDE, column * PITCH : column * PITCH + SIDE] = pixels
    np.testing.assert_array_equal(grid, expected)
    np.testing.assert_array_equal(sample(small_model, tmp_path / "big", "--count", 10, "--seed", 3, "--scale", 2),
                                  utils.enlarge(grid, 2))


# ---------------------------------------------------------------------------
# The manifold of a 2-D model


def test_manifold_ticks_name_the_z_of_each_digit(planar_model):
    model, config = func.load_model(planar_model)
    family = models.family(config.model)
    values = manifold_values(5)
    grid = manifold(family, model, values)
    assert grid.shape == (5 * PITCH - 2, 5 * PITCH - 2)
    assert not grid[:, SIDE : SIDE + 2].any() and not grid[SIDE : SIDE + 2, :].any()  # the gaps
    axes = manifold_figure(grid, values, "manifold").axes[0]
    labels = [f"{value:.2f}" for value in values]
    assert [label.get_text() for label in axes.get_xticklabels()] == labels
    assert [label.get_text() for label in axes.get_yticklabels()] == labels
    bottom, top = axes.get_ylim()
    assert bottom < top  # y, and so z2, grows upwards
    image = axes.get_images()[0]
    shown = image.get_array()
    height = shown.shape[0]
    # The digit under each (x tick, y tick) is the decoding of that tick's (z1, z2).
    for i, j in ((0, 4), (4, 0), (1, 3), (2, 2)):
        x, y = axes.get_xticks()[i], axes.get_yticks()[j]
        row, column = int(height - y), int(x)  # the image's row 0 is at the top, its y = height
        decoded = family.decode(model, np.array([[values[i], values[j]]], np.float32)).reshape(SIDE, SIDE)
        centre = shown[row - SIDE // 2 : row + SIDE // 2, column - SIDE // 2 : column + SIDE // 2]
        np.testing.assert_allclose(centre, decoded, atol=1e-5, err_msg=f"z = ({values[i]}, {values[j]})")


def test_latent_writes_the_manifold_as_a_figure_with_axes(planar_model, tmp_path):
    assert script.main(["latent", "--model-path", str(planar_model), "--output-path", str(tmp_path / "latent"),
                        "--limit", "50"]) == 0
    grid_side = 20 * PITCH - 2
    with Image.open(tmp_path / "latent_manifold.png") as image:
        assert image.mode in ("RGB", "RGBA")  # a drawn figure, not the bare grey grid
        assert image.size[0] > 2 * grid_side and image.size[1] > 2 * grid_side  # every pixel at least 2 x 2
    assert sorted(path.name for path in tmp_path.iterdir()) == ["latent.png", "latent_manifold.png"]


# ---------------------------------------------------------------------------
# The learning curves of compare_learning.py


def falling_curves(steps=range(10, 1010, 10)):
    """Three models at two rates: a huge loss in the first steps, then between 100 and about 112."""
    def loss(step, offset):
        return 1e6 if step <= 20 else 100.0 + offset + 10.0 * np.exp(-step / 300)

    return {(rate, structure): [{"step": step, "training_loss": 0.0, "validation_loss": loss(step, offset),
                                 "elapsed_seconds": 0.0} for step in steps]
            for rate in (0.001, 0.0001) for offset, structure in enumerate(("none", "lwta", "p-lwta"))}


def test_learning_curves_y_range_fits_the_late_steps():
    curves = falling_curves()
    curves[0.001, "lwta"][-1]["validation_loss"] = float("nan")  # a diverged value is left out of the range
    figure = compare_learning.draw(curves)
    late = [row["validation_loss"] for history in curves.values() for row in history
            if row["step"] >= 100 and np.isfinite(row["validation_loss"])]
    for panel in figure.axes:
        bottom, top = panel.get_ylim()
        assert bottom < min(late) and top > max(late)  # every late loss is visible
        assert top - bottom < 1.2 * (max(late) - min(late))  # and fills the panel: the early 1e6 is off the top
