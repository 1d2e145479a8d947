"""The experiment scripts: train_*.py, create_comparison_figure.py and compare_learning.py.

Each runs its real entry point for 20 steps on a slice of MNIST ($MNIST_DATA_DIR,
else Keras) and checks the files it writes.
"""

import contextlib
import csv
import io
import runpy
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

import compare_learning
import create_comparison_figure
import func
import utils
from conftest import ROOT
from experiments import EXPERIMENTS, MODELS_DIR, cli, result_paths, runs
from training import checkpoint

SMALL = ["--steps", "20", "--train-examples", "500", "--validation-examples", "100", "--batch-size", "100"]
SMALL_OVERRIDES = dict(steps=20, train_examples=500, validation_examples=100, batch_size=100)


def png(path):
    """(size, mode, pixels) of a PNG file."""
    with Image.open(path) as image:
        return image.size, image.mode, np.asarray(image)


def assert_one_line_error(captured, status, expected_status, message):
    assert status == expected_status, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], captured.err
    assert "Traceback" not in captured.err


def no_training(*args, **kwargs):
    raise AssertionError("nothing should be trained here")


def posterior_mean_reconstructions(model, images):
    """What the train scripts write: each image decoded from its posterior mean, inference mode."""
    return model.decode(model.encode(images, training=False)[0], training=False).numpy()


def losses(history):
    """(step, training loss, validation loss) of each row of a metrics history."""
    return [(row["step"], row["training_loss"], row["validation_loss"]) for row in history]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The three train_*.py scripts, run as programs with SMALL flags into one folder; returns (folder, stdout per name)."""
    models_dir = tmp_path_factory.mktemp("experiments") / "saved_models"
    outputs = {}
    for name, settings in EXPERIMENTS.items():
        script = settings.script
        stdout = io.StringIO()
        with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout), pytest.raises(SystemExit) as exit:
            patch.setattr(sys, "argv", [script, *SMALL, "--output-dir", str(models_dir)])
            runpy.run_path(str(ROOT / script), run_name="__main__")
        assert exit.value.code == 0, stdout.getvalue()
        outputs[name] = stdout.getvalue()
    return models_dir, outputs


@pytest.fixture(scope="module")
def validation_images():
    return func.load_data(func.configure(validation_examples=100)).validation.images


# ---------------------------------------------------------------------------
# train_*.py


def test_settings_are_the_originals():
    expected = {"none": ("train_default.py", 1e-3, 100), "lwta": ("train_LWTA.py", 1e-3, 100),
                "p-lwta": ("train_pLWTA.py", 1e-4, 1000)}
    assert list(EXPERIMENTS) == list(expected)
    for name, (script, learning_rate, batch_size) in expected.items():
        assert EXPERIMENTS[name].script == script
        config = runs.experiment_config(name)
        training = config.training
        assert (config.model, config.model_config.layer_structure) == ("vae", name)
        assert (training.learning_rate, training.batch_size, training.steps) == (learning_rate, batch_size, 2000)
    config = runs.experiment_config("lwta", steps=7, seed=3)
    assert (config.training.steps, config.training.seed, config.training.learning_rate) == (7, 3, 1e-3)
    assert MODELS_DIR == "saved_models/original"
    for name in EXPERIMENTS:
        assert cli.train_parser(name).parse_args([]).output_dir == MODELS_DIR  # the model: <output-dir>/<name>


def test_train_scripts_save_each_model_with_its_reconstructions(trained, validation_images):
    models_dir, outputs = trained
    assert sorted(path.name for path in models_dir.iterdir()) == sorted(EXPERIMENTS)
    for name, settings in EXPERIMENTS.items():
        model, config = func.load_model(models_dir / name)
        assert (config.model_config.layer_structure, config.training.learning_rate, config.training.steps) == (
            settings.layer_structure, settings.learning_rate, 20)
        assert f"layer structure {settings.layer_structure}, learning rate {settings.learning_rate:g}" in outputs[name]
        expected = utils.to_uint8(posterior_mean_reconstructions(model, validation_images[:10]))
        for index, path in enumerate(result_paths(models_dir / name)):
            assert path == models_dir / name / "results" / f"mnist_{index}.png"
            size, mode, pixels = png(path)
            assert (size, mode) == ((28, 28), "L")
            assert np.abs(pixels.astype(int) - expected[index].reshape(28, 28)).max() <= 1


def test_existing_model_without_overwrite_is_a_one_line_error(trained, capsys):
    models_dir, _ = trained
    path = models_dir / "lwta" / checkpoint.CHECKPOINT_FILE
    before = path.read_bytes()
    status = cli.main("lwta", [*SMALL, "--output-dir", str(models_dir)])
    assert_one_line_error(capsys.readouterr(), status, 2, "already exists; pass --overwrite")
    assert path.read_bytes() == before


def test_train_script_resumes_its_model_and_rewrites_the_reconstructions(trained, validation_images, tmp_path, capsys):
    models_dir = tmp_path / "saved_models"
    shutil.copytree(trained[0] / "lwta", models_dir / "lwta")
    before = checkpoint.read_metrics_csv(models_dir / "lwta" / checkpoint.METRICS_FILE)
    for path in result_paths(models_dir / "lwta"):
        path.unlink()
    assert cli.main("lwta", ["--output-dir", str(models_dir), "--resume", "--steps", "30"]) == 0
    assert "saved" in capsys.readouterr().out
    model, config = func.load_model(models_dir / "lwta")
    assert (config.training.steps, config.training.train_examples) == (30, 500), \
        "the saved run's settings, --steps changed"
    after = checkpoint.read_metrics_csv(models_dir / "lwta" / checkpoint.METRICS_FILE)
    assert losses(after[:2]) == losses(before) and after[-1]["step"] == 30
    expected = utils.to_uint8(posterior_mean_reconstructions(model, validation_images[:10]))
    for index, path in enumerate(result_paths(models_dir / "lwta")):
        assert np.abs(png(path)[2].astype(int) - expected[index].reshape(28, 28)).max() <= 1


@pytest.mark.parametrize("flags, message", [
    (["--resume", "--learning-rate", "0.01"], "--learning-rate 0.01 disagrees with the saved run's 0.001"),
    (["--resume", "--overwrite"], "not allowed with argument"),
])
def test_train_script_resume_mistakes_are_one_line_errors(trained, flags, message, capsys):
    models_dir, _ = trained
    path = models_dir / "lwta" / checkpoint.CHECKPOINT_FILE
    before = path.read_bytes()
    try:
        status = cli.main("lwta", [*flags, "--output-dir", str(models_dir)])
    except SystemExit as exit:  # argparse's own errors
        status = exit.code
    assert_one_line_error(capsys.readouterr(), status, 2, message)
    assert path.read_bytes() == before


def test_bad_flag_is_a_one_line_usage_error(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main("none", ["--steps", "0"])
    assert_one_line_error(capsys.readouterr(), exit.value.code, 2, "--steps")


# ---------------------------------------------------------------------------
# create_comparison_figure.py


def expect_small_settings(monkeypatch):
    """Make SMALL_OVERRIDES, with which the `trained` models were trained, the experiments' own settings: the
    figure refuses models trained otherwise than their train_*.py script's settings."""
    real = runs.experiment_config
    monkeypatch.setattr(runs, "experiment_config",
                        lambda name, **overrides: real(name, **{**SMALL_OVERRIDES, **overrides}))


def test_comparison_figure_stacks_originals_and_saved_reconstructions(trained, validation_images, tmp_path, monkeypatch):
    models_dir, _ = trained
    monkeypatch.setattr(func, "train", no_training)
    expect_small_settings(monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert create_comparison_figure.main(["--models-dir", str(models_dir)]) == 0
    size, mode, grid = png(tmp_path / "comparison.png")
    assert (size, mode) == ((280, 112), "L")
    assert np.array_equal(grid[:28], utils.tile_images(utils.to_uint8(validation_images[:10]), 10))
    for row, name in enumerate(EXPERIMENTS, 1):
        saved = np.stack([png(path)[2] for path in result_paths(models_dir / name)])
        assert np.array_equal(grid[28 * row : 28 * (row + 1)], utils.tile_images(saved, 10))

    assert create_comparison_figure.main(["--models-dir", str(models_dir), "--labelled", "--output", "labelled.png"]) == 0
    width, height = png(tmp_path / "labelled.png")[0]
    assert width > 3 * 280 and height > 3 * 112


def test_comparison_figure_fills_in_missing_results(trained, tmp_path, monkeypatch):
    """Missing p-LWTA model: trained in-process; lwta results deleted: rewritten from its saved model."""
    models_dir = tmp_path / "saved_models"
    for name in ("none", "lwta"):
        shutil.copytree(trained[0] / name, models_dir / name)
    result_paths(models_dir / "lwta")[3].unlink()
    trained_names = []
    real = runs.train_and_reconstruct

    def small_training(name, directory, **kwargs):
        trained_names.append(name)
        return real(name, directory, progress=False, **kwargs)

    monkeypatch.setattr(runs, "train_and_reconstruct", small_training)
    expect_small_settings(monkeypatch)  # and so the missing model is trained at SMALL_OVERRIDES
    output = tmp_path / "comparison.png"
    assert create_comparison_figure.main(["--models-dir", str(models_dir), "--output", str(output)]) == 0
    assert trained_names == ["p-lwta"]
    rewritten = result_paths(models_dir / "lwta")[3]
    assert np.array_equal(png(rewritten)[2], png(result_paths(trained[0] / "lwta")[3])[2])
    assert all(path.is_file() for name in EXPERIMENTS for path in result_paths(models_dir / name))
    assert png(output)[:2] == ((280, 112), "L")
    _, config = func.load_model(models_dir / "p-lwta")
    assert (config.model_config.layer_structure, config.training.learning_rate, config.training.steps) == (
        "p-lwta", 1e-4, 20)


def test_labelled_figure_needs_a_known_suffix(tmp_path, capsys):
    status = create_comparison_figure.main(["--labelled", "--output", str(tmp_path / "figure.unknown")])
    assert_one_line_error(capsys.readouterr(), status, 2, "suffix names the format")


# ---------------------------------------------------------------------------
# compare_learning.py


def test_compare_learning_trains_six_runs_on_one_dataset(tmp_path, monkeypatch, caplog):
    loads = []
    real_load = func.load_data
    monkeypatch.setattr(func, "load_data", lambda *args: loads.append(args) or real_load(*args))
    monkeypatch.chdir(tmp_path)
    status = compare_learning.main(["--steps", "20", "--train-examples", "500", "--validation-examples", "100",
                                    "--models-dir", "models"])
    assert status == 0 and len(loads) == 1
    # Each run traces its two compiled functions once: six runs in a row draw no "excessive retracing" warning.
    assert not [record for record in caplog.records if "retracing" in record.getMessage()]
    with open(tmp_path / "compare_learning.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert tuple(reader.fieldnames) == compare_learning.CSV_COLUMNS
    assert len(rows) == 6 * 2
    runs = {(float(row["learning_rate"]), row["layer_structure"]) for row in rows}
    assert runs == {(rate, structure) for rate in (1e-3, 1e-4) for structure in ("none", "lwta", "p-lwta")}
    assert [int(row["step"]) for row in rows] == [10, 20] * 6
    saved = checkpoint.read_metrics_csv(
        tmp_path / "models" / "compare_learning" / "lr0.0001" / "p-lwta" / checkpoint.METRICS_FILE)
    assert [float(row["validation_loss"]) for row in rows[-2:]] == [row["validation_loss"] for row in saved]
    for suffix in (".png", ".pdf"):
        assert (tmp_path / f"compare_learning{suffix}").stat().st_size > 1000


def write_curves(path):
    """A CSV like compare_learning's: two learning rates, three models, losses falling with the step."""
    curves = {(rate, structure): [{"step": step, "training_loss": 600.0 - step / 10,
                                   "validation_loss": 590.0 - step / 10 - offset, "elapsed_seconds": step / 100}
                                  for step in (10, 20, 30)]
              for rate in (0.001, 0.0001) for offset, structure in enumerate(("none", "lwta", "p-lwta"))}
    compare_learning.write_csv(path, curves)
    return curves


def test_from_csv_redraws_without_training_or_data(tmp_path, monkeypatch):
    curves = write_curves(tmp_path / "curves.csv")
    for path in (tmp_path / "curves.png", tmp_path / "curves.pdf"):
        path.write_bytes(b"old")
    monkeypatch.setattr(func, "train", no_training)
    monkeypatch.setattr(func, "load_data", no_training)
    assert compare_learning.main(["--from-csv", "--output-prefix", str(tmp_path / "curves")]) == 0
    assert png(tmp_path / "curves.png")[0][0] > 1000
    assert (tmp_path / "curves.pdf").read_bytes().startswith(b"%PDF")
    assert compare_learning.read_csv(tmp_path / "curves.csv") == curves


def test_figure_has_one_panel_per_learning_rate(tmp_path):
    curves = write_curves(tmp_path / "curves.csv")
    panels = compare_learning.draw(curves).axes
    assert [panel.get_title() for panel in panels] == ["Learning rate: 0.001", "Learning rate: 0.0001"]
    for panel, rate in zip(panels, (0.001, 0.0001)):
        bottom, top = panel.get_ylim()
        shown = [row["validation_loss"] for (curve_rate, _), history in curves.items() if curve_rate == rate
                 for row in history]
        assert bottom < min(shown) and max(shown) < top  # every loss is visible
        assert panel.get_ylabel() == "Validation loss (negative ELBO, nats per image)"
        assert [text.get_text() for text in panel.get_legend().get_texts()] == ["ReLU (none)", "LWTA", "p-LWTA"]
        assert list(panel.lines[2].get_ydata()) == [row["validation_loss"] for row in curves[rate, "p-lwta"]]
    assert panels[-1].get_xlabel() == "Step"


def test_from_csv_without_a_csv_is_a_one_line_error(tmp_path, capsys):
    status = compare_learning.main(["--from-csv", "--output-prefix", str(tmp_path / "missing")])
    assert_one_line_error(capsys.readouterr(), status, 1, "run without --from-csv")
