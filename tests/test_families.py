"""The contract every registered model family keeps, and the migration of format-1 model directories.

The contract runs over models.NAMES: train a few steps, save, load with
identical outputs, resume to the same result as an uninterrupted run, and
serve every command the family declares; a command it does not serve is a
usage error.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import func
import models
import script
from conftest import ROOT, tiny_config
from training import checkpoint

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def checkpoint_arrays(model_dir):
    with np.load(Path(model_dir) / checkpoint.CHECKPOINT_FILE) as npz:
        return {name: npz[name] for name in npz.files}


@pytest.fixture(scope="module", params=models.NAMES)
def trained(request, tmp_path_factory):
    """(family name, a model trained 20 steps straight, the folder it is in) for each family."""
    folder = tmp_path_factory.mktemp(request.param)
    func.train(tiny_config(request.param), folder / "straight", progress=False)
    return request.param, folder / "straight", folder


def test_saved_model_loads_with_identical_outputs(trained):
    name, model_dir, _ = trained
    images = func.evaluation_images(*_config_and_validation(model_dir))[:5]
    family = models.family(name)
    first, _ = func.load_model(model_dir)
    second, config = func.load_model(model_dir)
    assert config.model == name
    np.testing.assert_array_equal(family.reconstruct(first, images), family.reconstruct(second, images))
    for variable, same in zip(first.weights, second.weights):
        np.testing.assert_array_equal(variable.numpy(), same.numpy())


def _config_and_validation(model_dir):
    _, config = func.load_model(model_dir)
    return config, func.load_data(config).validation


def test_resumed_run_ends_where_an_uninterrupted_one_does(trained):
    name, model_dir, folder = trained
    halves = folder / "halves"
    func.train(tiny_config(name, steps=10), halves, progress=False)
    func.resume(halves, {"steps": 20}, progress=False)
    straight, resumed = checkpoint_arrays(model_dir), checkpoint_arrays(halves)
    assert set(straight) == set(resumed)
    for array in set(straight) - {"history", "elapsed", "config"}:
        np.testing.assert_array_equal(straight[array], resumed[array], err_msg=array)
    columns = [str(column) for column in straight["history_columns"]]
    elapsed = columns.index("elapsed_seconds")
    np.testing.assert_array_equal(np.delete(straight["history"], elapsed, 1), np.delete(resumed["history"], elapsed, 1))


def test_every_command_the_family_serves(trained, tmp_path):
    name, model_dir, _ = trained
    family = models.family(name)
    runs = {
        "reconstruct": ["--output-path", tmp_path / "reconstruction.png", "--grid", "3"],
        "evaluate": ["--importance-samples", "5", "--limit", "2"],
        "sample": ["--output-path", tmp_path / "samples.png", "--count", "4"],
        "latent": ["--output-path", tmp_path / "latent.png", "--limit", "30"],
        "export": ["--output-path", tmp_path / "model.keras"],
    }
    assert set(family.commands) <= set(runs)
    for command in family.commands:
        assert script.main([command, "--model-path", str(model_dir), *map(str, runs[command])]) == 0, command
    for written in ("reconstruction.png", "samples.png", "latent.png", "model.keras"):
        assert (tmp_path / written).is_file() == any(written in str(arg) for command in family.commands
                                                     for arg in runs[command])


def test_a_command_the_family_cannot_serve_is_a_usage_error(small_model, tmp_path, monkeypatch, capsys):
    family = models.family("vae")
    monkeypatch.setattr(type(family), "commands", tuple(c for c in family.commands if c != "sample"))
    status = script.main(["sample", "--model-path", str(small_model), "--output-path", str(tmp_path / "x.png")])
    assert status == 2
    assert capsys.readouterr().err.strip() == "script.py sample: error: the vae model family cannot serve sample"
    assert not (tmp_path / "x.png").exists()


def test_exported_archive_loads_in_a_fresh_process_and_computes_the_same(small_model, tmp_path):
    archive = tmp_path / "model.keras"
    assert script.main(["export", "--model-path", str(small_model), "--output-path", str(archive)]) == 0
    model, config = func.load_model(small_model)
    images = func.evaluation_images(config, func.load_data(config).validation)[:4]
    np.save(tmp_path / "images.npy", images)
    program = ("import sys, keras, numpy as np; import network; "
               f"model = keras.saving.load_model({str(archive)!r}); "
               f"np.save({str(tmp_path / 'out.npy')!r}, model(np.load({str(tmp_path / 'images.npy')!r})).numpy())")
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    expected = models.family(config.model).reconstruct(model, images)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------
# Format-1 model directories (written before checkpoints named their arrays)


@pytest.fixture
def format_1(tmp_path):
    return Path(shutil.copytree(FIXTURES / "model_format_1", tmp_path / "model"))


def test_format_1_directory_loads_and_computes_what_it_computed(format_1):
    expected = np.load(FIXTURES / "model_format_1_outputs.npz")
    model, config = func.load_model(format_1)
    assert config.model == "vae" and config.model_config.layer_structure == "lwta"
    assert config.model_config.lwta_hidden_only is False  # format 1's compete_latent = true
    mean, log_variance = model.encode(expected["images"], training=False)
    np.testing.assert_allclose(mean, expected["mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_variance, expected["log_variance"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.decode(mean, training=False), expected["decoded"], rtol=1e-5, atol=1e-6)
    results = func.evaluate(format_1, importance_samples=20, limit=3, progress=False)["nats_per_image"]
    assert results["negative_log_likelihood"]["mean"] == pytest.approx(float(expected["negative_log_likelihood"]),
                                                                       rel=1e-6)
    assert results["negative_elbo"]["mean"] == pytest.approx(float(expected["negative_elbo"]), rel=1e-6)


def test_format_1_directory_resumes_and_is_saved_in_todays_format(format_1):
    history = func.resume(format_1, {"steps": 30}, progress=False)
    assert [row["step"] for row in history] == [5, 10, 15, 20, 25, 30]
    arrays = checkpoint_arrays(format_1)
    assert int(arrays["format"]) == checkpoint.FORMAT
    assert "model/vae/encoder_hidden/kernel" in arrays and "optimizer/adam/iteration" in arrays
    assert int(arrays["optimizer/adam/iteration"]) == 30


def readme_block(marker):
    """The code block of README.md that follows the comment `marker`."""
    text = (ROOT / "README.md").read_text()
    after = text[text.index(marker):]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_python_api_snippet_runs(tmp_path, monkeypatch):
    func.train(tiny_config(layer_structure="lwta"), tmp_path / "saved_models" / "lwta", progress=False)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(readme_block("<!-- python-api"), namespace)
    assert namespace["reconstructions"].shape == (8, 784) and namespace["digits"].shape == (16, 784)
    assert namespace["results"]["settings"]["images"] == 100
    assert np.isfinite(namespace["results"]["nats_per_image"]["negative_log_likelihood"]["mean"])
