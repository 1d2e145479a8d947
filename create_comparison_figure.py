"""The first 10 validation digits above their reconstructions by the three models, as one image.

    python create_comparison_figure.py                                            # comparison.png, 280 x 112
    python create_comparison_figure.py --labelled --output comparison_labelled.png

Rows, top to bottom: the originals, then the default, deterministic-LWTA and
probabilistic-LWTA reconstructions, read from <models-dir>/<name>/results/mnist_<i>.png.
A model without results is trained first with its train_*.py settings, in this process.
Each saved model's settings are printed; one trained with other settings than its
train_*.py script's defaults, or short of its steps, is refused (exit status 2).
"""

import shlex
import sys
from pathlib import Path

import numpy as np
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.figure import Figure
from PIL import Image

import utils
from cli.errors import import_func
from cli.flags import ArgumentParser, add_settings
from experiments import EXPERIMENTS, MODELS_DIR, RECONSTRUCTED_DIGITS, result_paths
from experiments.cli import add_debug_flag, run_command
from fileio import atomic
from settings.run import TrainingConfig
from utils import DataError, UsageError

ROW_LABELS = ("original",) + tuple(settings.label for settings in EXPERIMENTS.values())
LABELLED_DPI = 200


def build_parser():
    parser = ArgumentParser(prog="create_comparison_figure.py", description=__doc__.splitlines()[0])
    flag = parser.add_argument
    flag("--output", default="comparison.png", help="image to write (default: %(default)s)")
    flag("--models-dir", default=MODELS_DIR, help="folder of the three models (default: %(default)s)")
    add_settings(parser, TrainingConfig, tell_given=False, only=("data_dir",))
    flag("--labelled", action="store_true",
         help="write an enlarged figure with row labels, for papers and the README, instead of the "
              "280 x 112 grid (default: the plain grid)")
    add_debug_flag(parser)
    return parser


def main(argv=None):
    return run_command(build_parser(), create, argv)


def create(args):
    atomic.check_writable(args.output)
    if args.labelled and Path(args.output).suffix[1:].lower() not in FigureCanvasBase.get_supported_filetypes():
        raise UsageError(f"--output {args.output}: with --labelled its suffix names the format, e.g. .png, .pdf or .svg")
    func = import_func()
    check_models(args.models_dir)
    dataset = func.load_data(func.configure(), args.data_dir)
    rows = [dataset.validation.images[:RECONSTRUCTED_DIGITS]]
    for name in EXPERIMENTS:
        ensure_results(name, args.models_dir, dataset, args.data_dir)
        rows.append(read_results(Path(args.models_dir) / name))
    grid = np.concatenate([utils.tile_images(row, RECONSTRUCTED_DIGITS) for row in rows])
    if args.labelled:
        utils.save_figure(labelled_figure(grid), args.output, dpi=LABELLED_DPI, bbox_inches="tight", pad_inches=0.05)
    else:
        utils.save_grayscale_png(args.output, grid)
    print(f"wrote {args.output}")


def check_models(models_dir):
    """Print the settings of each of the three models that exists; UsageError for the first one trained with
    settings other than its train_*.py script's defaults, or stopped short of its steps."""
    from experiments import runs
    from training import checkpoint

    problems = []
    for name in EXPERIMENTS:
        model_dir = Path(models_dir) / name
        if not checkpoint.has_model(model_dir):
            continue
        config, arrays = checkpoint.read(model_dir)
        trained = checkpoint.trained_steps(arrays)
        saved = compared_settings(config)
        print(f"{model_dir}: {', '.join(f'{flag} {text(value)}' for flag, value in saved.items())}, trained "
              f"{trained} steps", flush=True)
        expected = compared_settings(runs.experiment_config(name))
        problems.append(model_problem(name, models_dir, saved, trained, expected))
    problems = [problem for problem in problems if problem]
    if problems:
        raise UsageError(problems[0])


def compared_settings(config):
    """{flag: value} of the settings that must agree for the figure to compare like with like."""
    training = config.training
    return {"--layer-structure": config.model_config.layer_structure, "--steps": training.steps,
            "--learning-rate": training.learning_rate, "--batch-size": training.batch_size, "--seed": training.seed,
            "--train-examples": training.train_examples, "--validation-examples": training.validation_examples}


def text(value):
    return f"{value:g}" if isinstance(value, float) else str(value)


def model_problem(name, models_dir, saved, trained, expected):
    """Why the model `name` cannot go into the figure (one line), or None."""
    model_dir = Path(models_dir) / name
    script = EXPERIMENTS[name].script
    command = f"python {script}"
    if str(models_dir) != MODELS_DIR:
        command += f" --output-dir {shlex.quote(str(models_dir))}"
    differing = [flag for flag in expected if saved[flag] != expected[flag]]
    if differing:
        given = ", ".join(f"{flag} {text(saved[flag])} instead of {text(expected[flag])}" for flag in differing)
        fix = f"retrain it with {command} --overwrite"
        if differing == ["--steps"] and saved["--steps"] < expected["--steps"]:
            fix += f", or continue it with {command} --resume --steps {expected['--steps']}"
        return (f"{model_dir} was trained with other settings than {script}'s: {given}; the figure compares the "
                f"three models at those settings only: {fix}")
    if trained < saved["--steps"]:
        return (f"{model_dir} is incomplete: trained {trained} of its {saved['--steps']} steps; continue it with "
                f"{command} --resume")
    return None


def ensure_results(name, models_dir, dataset, data_dir):
    """Write the reconstructions of model `name` if any is missing, training the model first if it does not exist."""
    model_dir = Path(models_dir) / name
    if all(path.is_file() for path in result_paths(model_dir)):
        return
    func = import_func()
    from experiments import runs

    if func.has_model(model_dir):
        print(f"{model_dir}: reconstructing from the saved model", flush=True)
        runs.write_reconstructions(model_dir, dataset)
    else:
        runs.train_and_reconstruct(name, models_dir, dataset=dataset, data_dir=data_dir)


def read_results(model_dir):
    """The reconstructions of a model as [10, 784] grey levels in [0, 1]."""
    images = []
    for path in result_paths(model_dir):
        try:
            with Image.open(path) as image:
                if image.size != (utils.IMAGE_SIDE, utils.IMAGE_SIDE) or image.mode != "L":
                    raise DataError(f"{path} is a {image.size[0]}x{image.size[1]} {image.mode} image, not a "
                                    f"28x28 grayscale PNG; delete it to have it rewritten")
                images.append(np.asarray(image, dtype=np.float32).reshape(utils.PIXELS) / 255.0)
        except (OSError, SyntaxError) as error:  # PIL reports a damaged PNG as either
            raise DataError(f"{path}: cannot read ({error}); delete it to have it rewritten") from None
    return np.stack(images)


def labelled_figure(grid):
    """The grid enlarged with nearest-neighbour pixels, each row labelled on the left."""
    rows, columns = grid.shape
    figure = Figure(figsize=(columns / 40, rows / 40))
    axes = figure.add_axes((0, 0, 1, 1))  # the image fills the figure: 5 x 5 pixels per grid pixel at LABELLED_DPI
    axes.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    side = utils.IMAGE_SIDE
    axes.set_yticks([side * row + (side - 1) / 2 for row in range(len(ROW_LABELS))], ROW_LABELS)
    axes.set_xticks([])
    axes.tick_params(length=0)
    for spine in axes.spines.values():
        spine.set_visible(False)
    return figure


if __name__ == "__main__":
    sys.exit(main())
