"""Every flag's range is checked before any work, messages name the flag the user gave, and signals and odd paths
end in one line: each case runs a program of the project in a subprocess."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import assert_clean_failure, command, run_cli

TINY = ["--train-examples", "300", "--validation-examples", "50", "--hidden-units", "40", "--latent-dim", "10",
        "--steps", "10"]


@pytest.mark.parametrize("arguments, message", [
    (["train", "--seed", "4294967296"], "--seed: must be at most 4294967295"),
    (["train", "--seed", str(2**64)], "--seed: must be at most"),
    (["train", "--validation-interval", "1000000000"], "--validation-interval: must be at most 100000"),
    (["train", "--block-size", "500", "--layer-structure", "lwta"], "--block-size: must be at most 16"),
    (["train", "--learning-rate", "nan"], "--learning-rate: must be a finite number"),
    (["train", "--model", "vae", "--steps", "10", "--model-pat", "x"], "unrecognized arguments: --model-pat"),
    (["sample", "--model-path", "m", "--output-path", "x.png", "--count", "100000000"], "--count: must be at most"),
    (["sample", "--model-path", "m", "--output-path", "x.png", "--seed", "4294967296"], "--seed: must be at most"),
    (["evaluate", "--model-path", "m", "--importance-samples", "3000000000"], "--importance-samples: must be at most"),
    (["evaluate", "--model-path", "m", "--chunk-size", str(10**12)], "--chunk-size: must be at most"),
])
def test_out_of_range_flags_are_usage_errors_before_any_work(arguments, message, tmp_path):
    result = run_cli(*arguments, cwd=tmp_path, timeout=60)
    assert_clean_failure(result, 2, message)
    assert list(tmp_path.iterdir()) == []


def test_abbreviated_flags_are_not_taken_for_longer_ones(tmp_path):
    result = run_cli("reconstruct", "--model", "m", "--output-path", "x.png", cwd=tmp_path, timeout=60)
    assert_clean_failure(result, 2, "the following arguments are required: --model-path")


def test_a_latent_width_the_blocks_do_not_divide_names_the_latent_width(tmp_path):
    result = run_cli("train", "--layer-structure", "lwta", "--latent-dim", "5", "--model-path", tmp_path / "m")
    assert_clean_failure(result, 2, "--latent-dim 5 is not a multiple of the LWTA block size 2")
    assert "--lwta-hidden-only" in result.stderr


def test_a_dangling_symlink_as_model_path_and_a_tensorboard_file_are_one_line_errors(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    assert_clean_failure(run_cli("train", *TINY, "--model-path", tmp_path / "link"), 2, "which does not exist")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "tensorboard").write_text("not a folder")
    assert_clean_failure(run_cli("train", *TINY, "--model-path", tmp_path / "model"), 1, "tensorboard is a file")


def test_ctrl_c_during_tensorflows_start_is_one_line(tmp_path):
    process = subprocess.Popen(command("train", *TINY, "--model-path", tmp_path / "m"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # parsing is done in 0.1 s; importing TensorFlow takes seconds
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_sigterm_while_writing_a_figure_leaves_no_temporary(small_model, tmp_path):
    """SIGTERM at many moments of `latent` (which saves a matplotlib figure): never a temporary left behind."""
    for delay in (4.5, 6.5):
        output = tmp_path / f"latent{delay}.png"
        process = subprocess.Popen(command("latent", "--model-path", small_model, "--output-path", output),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
        assert "Traceback" not in stderr
        assert not [path for path in tmp_path.iterdir() if ".tmp" in path.name], sorted(os.listdir(tmp_path))


def test_an_output_path_that_is_a_symlink_is_written_through(small_model, tmp_path):
    target = tmp_path / "target.png"
    target.write_bytes(b"old")
    (tmp_path / "link.png").symlink_to(target)
    result = run_cli("sample", "--model-path", small_model, "--output-path", tmp_path / "link.png", "--count", "4")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "link.png").is_symlink() and target.read_bytes()[:4] == b"\x89PNG"


def test_bench_help_answers_without_tensorflow():
    started = time.monotonic()
    result = run_cli("--help", program="bench.py", timeout=60)
    assert result.returncode == 0 and "--quick" in result.stdout and result.stderr == ""
    assert time.monotonic() - started < 3.0, "bench.py --help imported TensorFlow"


def test_the_readmes_default_folders_never_collide():
    """script.py train's default folders, per structure and dataset, and the train scripts' folders are distinct."""
    import func
    from experiments import EXPERIMENTS, MODELS_DIR

    folders = [func.default_model_path(func.configure(layer_structure=structure, dataset=dataset))
               for structure in EXPERIMENTS for dataset in ("mnist", "fashion-mnist")]
    folders += [Path(MODELS_DIR) / name for name in EXPERIMENTS]
    assert len(set(folders)) == len(folders)
    assert Path("saved_models/lwta") in folders  # the quick start's folder, as README.md writes it


def test_progress_rates_leave_out_the_first_call_and_agree(monkeypatch):
    """The first update (after compiling) starts the clock; steps/s and ms/step are one measurement."""
    import io

    from training import progress

    clock = iter([100.0, 101.0, 103.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    stream = io.StringIO()
    display = progress.Progress(1000, stream=stream)
    display.update(10, {"training loss": 500.0})  # after 100 s of compiling: no rate yet
    display.update(110, {})  # 100 steps in 1 s
    display.update(1000, {})  # 890 more in 2 s: 990 steps in 3 s since the first update
    lines = stream.getvalue().splitlines()
    assert lines[0] == "step 10/1000  training loss 500.000"
    assert lines[-1] == "step 1000/1000  330.0 steps/s (3.03 ms/step)  ETA 0 s"
