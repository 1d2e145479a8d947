"""Records that do not mislead: evaluate's files and the settings of the comparison figure's models."""

import json
import shutil

import numpy as np
import pytest

import create_comparison_figure
import func
import script
import utils
from conftest import TINY_SETTINGS, write_fake_mnist
from evaluation import importance
from experiments import EXPERIMENTS, result_paths, runs
from training import checkpoint

QUICK = ["--importance-samples", "5", "--limit", "3"]
TABLE_HEADING = "-log p(x), importance-weighted"


def copy_model(small_model, tmp_path):
    return shutil.copytree(small_model, tmp_path / "model")


def change_saved_config(model_dir, **changes):
    """Rewrite the configuration a checkpoint records, e.g. steps=100000 for a run interrupted before its end."""
    config, arrays = checkpoint.read(model_dir)
    checkpoint.save(model_dir, {**arrays, "config": np.array(config.replace(**changes).to_json())})


def strict_json(text):
    """The JSON document `text`, refusing NaN and Infinity, which are not JSON."""
    def refuse(constant):
        raise ValueError(f"{constant} is not valid JSON")
    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------------------
# evaluate


def test_record_path_names_non_default_settings(tmp_path):
    assert importance.record_path(tmp_path, "test", 5000, 1, 10000, True) == tmp_path / "evaluation.json"
    for settings, name in [(("test", 5000, 1, 3, False), "test_k5000_seed1_images3.json"),
                           (("validation", 5000, 1, 1000, True), "validation_k5000_seed1_images1000.json"),
                           (("test", 100, 1, 10000, True), "test_k100_seed1_images10000.json"),
                           (("test", 5000, 2, 10000, True), "test_k5000_seed2_images10000.json")]:
        assert importance.record_path(tmp_path, *settings) == tmp_path / "evaluations" / name


def test_partial_and_non_default_runs_never_replace_the_full_record(small_model, tmp_path, capsys):
    model_dir = copy_model(small_model, tmp_path)
    data_dir = write_fake_mnist(tmp_path / "data", test=5)  # a full default evaluation in seconds
    full = func.evaluate(model_dir, data_dir=data_dir, progress=False)
    record = (model_dir / "evaluation.json").read_bytes()
    assert json.loads(record)["settings"]["images"] == 5

    assert script.main(["evaluate", "--model-path", str(model_dir), "--data-dir", str(data_dir), "--limit", "3"]) == 0
    assert (model_dir / "evaluation.json").read_bytes() == record
    assert full["path"] == str(model_dir / "evaluation.json")
    written = model_dir / "evaluations" / "test_k5000_seed1_images3.json"
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"wrote {written}"
    assert json.loads(written.read_text())["settings"]["images"] == 3
    assert script.main(["evaluate", "--model-path", str(model_dir), "--data-dir", str(data_dir), *QUICK,
                        "--split", "validation"]) == 0
    assert f"wrote {model_dir / 'evaluations' / 'validation_k5_seed1_images3.json'}" in capsys.readouterr().out
    assert (model_dir / "evaluation.json").read_bytes() == record


def test_the_record_holds_the_steps_the_model_trained(small_model, tmp_path):
    model_dir = copy_model(small_model, tmp_path)
    change_saved_config(model_dir, steps=100000)  # as a run interrupted at step 20 of 100,000 leaves it
    results = func.evaluate(model_dir, importance_samples=5, limit=3, progress=False)
    settings = json.loads(open(results["path"]).read())["settings"]
    assert settings["trained_steps"] == TINY_SETTINGS["steps"] == results["settings"]["trained_steps"]
    assert settings["model"]["training"]["steps"] == 100000


def test_an_unwritable_record_loses_no_numbers(small_model, tmp_path, capsys):
    model_dir = copy_model(small_model, tmp_path)
    record = model_dir / "evaluations" / "test_k5_seed1_images3.json"
    record.mkdir(parents=True)  # the write fails only at the end, as on a full disk
    assert script.main(["evaluate", "--model-path", str(model_dir), *QUICK]) == 1
    captured = capsys.readouterr()
    assert_one_line(captured.err, f"cannot write {record}")
    assert TABLE_HEADING in captured.out and "3 test images, K = 5" in captured.out


@pytest.mark.filterwarnings("error::RuntimeWarning")  # NumPy's "invalid value" warnings would be more lines
def test_non_finite_results_are_written_as_null_with_a_warning(small_model, tmp_path, capsys):
    model_dir = copy_model(small_model, tmp_path)
    path = model_dir / checkpoint.CHECKPOINT_FILE
    with np.load(path) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays["model/vae/decoder_output/kernel"] = np.full_like(arrays["model/vae/decoder_output/kernel"], np.nan)
    np.savez(path, **arrays)

    assert script.main(["evaluate", "--model-path", str(model_dir), *QUICK]) == 0
    captured = capsys.readouterr()
    warning = captured.err.strip().splitlines()
    assert len(warning) == 1 and "not finite" in warning[0] and "null" in warning[0], captured.err
    assert TABLE_HEADING in captured.out
    record = strict_json((model_dir / "evaluations" / "test_k5_seed1_images3.json").read_text())
    json.dumps(record, allow_nan=False)
    numbers = record["nats_per_image"]
    assert numbers["negative_log_likelihood"]["mean"] is None and numbers["reconstruction"]["mean"] is None
    assert isinstance(numbers["kl"]["mean"], float)  # the encoder is intact
    assert "negative_log_likelihood" in warning[0] and "nats_per_image.kl" not in warning[0]


# ---------------------------------------------------------------------------
# create_comparison_figure.py

FIGURE_SETTINGS = dict(TINY_SETTINGS, batch_size=100)


def no_training(*args, **kwargs):
    raise AssertionError("nothing should be trained here")


@pytest.fixture(scope="module")
def tiny_experiments(small_model, tmp_path_factory):
    """The three experiments at FIGURE_SETTINGS, shared read-only: copies of small_model (20 steps; every
    structure has the same weights' shapes) whose configurations say each experiment's structure, learning
    rate and batch size, and blank reconstructions."""
    models_dir = tmp_path_factory.mktemp("experiments") / "models"
    for name, experiment in EXPERIMENTS.items():
        shutil.copytree(small_model, models_dir / name)
        change_saved_config(models_dir / name, **FIGURE_SETTINGS, layer_structure=name,
                            learning_rate=experiment.learning_rate)
        for path in result_paths(models_dir / name):
            utils.save_grayscale_png(path, np.zeros((utils.IMAGE_SIDE, utils.IMAGE_SIDE)))
    return models_dir


def expect_tiny_settings(monkeypatch, **per_name):
    """Make the experiments' settings FIGURE_SETTINGS, changed for an experiment by per_name[name]."""
    real = runs.experiment_config
    monkeypatch.setattr(runs, "experiment_config",
                        lambda name, **overrides: real(name, **{**FIGURE_SETTINGS, **per_name.get(name, {}),
                                                                **overrides}))


def draw(models_dir, output):
    return create_comparison_figure.main(["--models-dir", str(models_dir), "--output", str(output)])


def test_comparison_figure_prints_each_models_settings(tiny_experiments, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(func, "train", no_training)
    expect_tiny_settings(monkeypatch)
    assert draw(tiny_experiments, tmp_path / "comparison.png") == 0
    output = capsys.readouterr().out
    for name, experiment in EXPERIMENTS.items():
        assert (f"{tiny_experiments / name}: --layer-structure {name}, --steps 20, --learning-rate "
                f"{experiment.learning_rate:g}, --batch-size 100") in output
    assert output.count("trained 20 steps") == 3 and (tmp_path / "comparison.png").is_file()


def test_comparison_figure_refuses_models_of_other_settings(tiny_experiments, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(func, "train", no_training)
    output = tmp_path / "comparison.png"
    assert draw(tiny_experiments, output) == 2  # the real settings: 2,000 steps, 10,000 training images
    captured = capsys.readouterr()
    assert_one_line(captured.err, str(tiny_experiments / "none"))
    for part in ("--steps 20 instead of 2000", "--train-examples 300 instead of 10000",
                 f"python train_default.py --output-dir {tiny_experiments} --overwrite"):
        assert part in captured.err
    assert captured.out.count("trained 20 steps") == 3 and not output.exists()

    expect_tiny_settings(monkeypatch, lwta={"steps": 40})  # only fewer steps: it may also be continued
    assert draw(tiny_experiments, output) == 2
    error = capsys.readouterr().err
    assert_one_line(error, str(tiny_experiments / "lwta"))
    assert "--steps 20 instead of 40" in error and "python train_LWTA.py" in error and "--resume --steps 40" in error


def test_comparison_figure_refuses_an_incomplete_model(tiny_experiments, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(func, "train", no_training)
    models_dir = shutil.copytree(tiny_experiments, tmp_path / "models")
    change_saved_config(models_dir / "p-lwta", steps=40)  # as a run interrupted at step 20 of 40 leaves it
    expect_tiny_settings(monkeypatch, **{"p-lwta": {"steps": 40}})
    output = tmp_path / "comparison.png"
    assert draw(models_dir, output) == 2
    error = capsys.readouterr().err
    assert_one_line(error, f"{models_dir / 'p-lwta'} is incomplete: trained 20 of its 40 steps")
    assert f"python train_pLWTA.py --output-dir {models_dir} --resume" in error and not output.exists()


def assert_one_line(error, message):
    lines = error.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in error, error
