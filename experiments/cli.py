"""Command lines of the experiment scripts: train_*.py, create_comparison_figure.py, compare_learning.py.

As in script.py, every user mistake ends in one line on stderr and a non-zero exit
status (2 for usage errors, 1 for missing or broken files); --debug, or
WTA_VAE_DEBUG=1, shows the full traceback instead.
"""

import dataclasses
import os

from cli.errors import DEBUG_VARIABLE, import_func, report_errors
from cli.flags import ArgumentParser, add_settings, given
from experiments import EXPERIMENTS, MODELS_DIR, RECONSTRUCTED_DIGITS, RESULTS_DIR
from settings.run import TrainingConfig

DATA_SETTINGS = ("seed", "train_examples", "validation_examples", "data_dir")


def add_debug_flag(parser):
    parser.add_argument("--debug", action="store_true", help=f"show full tracebacks (or set {DEBUG_VARIABLE}=1)")


def train_parser(name):
    """The flags of a train_*.py script; the defaults are the original's settings for model `name`."""
    settings = EXPERIMENTS[name]
    parser = ArgumentParser(
        prog=settings.script,
        description=f"Train the {settings.label} VAE with the original's settings and reconstruct the first "
                    f"{RECONSTRUCTED_DIGITS} validation digits into <output-dir>/{name}/{RESULTS_DIR}/.",
    )
    defaults = dataclasses.replace(TrainingConfig(), learning_rate=settings.learning_rate,
                                   batch_size=settings.batch_size, steps=settings.steps)
    add_settings(parser, TrainingConfig, defaults, only=("steps", "learning_rate", "batch_size") + DATA_SETTINGS)
    parser.add_argument("--output-dir", default=MODELS_DIR,
                        help=f"the model goes to <output-dir>/{name} (default: %(default)s)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help=f"continue <output-dir>/{name} from its checkpoint, e.g. to a larger --steps, and "
                           "rewrite its reconstructions (default: start a new model)")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing model (default: refuse)")
    add_debug_flag(parser)
    return parser


def run_command(parser, action, argv=None):
    """Parse `argv` with `parser` and call action(args); returns the exit status, a user mistake in one line.

    func.py, and with it TensorFlow, is imported only after parsing (see cli.errors.report_errors).
    """
    args = parser.parse_args(argv)
    return report_errors(parser.prog, lambda: action(args), args.debug)


def main(name, argv=None):
    """Entry point of train_default.py, train_LWTA.py and train_pLWTA.py; returns the exit status."""
    return run_command(train_parser(name), lambda args: _train_and_report(name, args), argv)


def _train_and_report(name, args):
    import_func()
    from experiments import runs

    values = given(args, TrainingConfig)
    if args.resume:
        history = runs.resume_and_reconstruct(name, args.output_dir, **values)
    else:
        history = runs.train_and_reconstruct(name, args.output_dir, overwrite=args.overwrite, **values)
    last = history[-1]
    model_dir = os.path.join(args.output_dir, name)
    print(f"saved {model_dir} at step {last['step']} (validation loss {last['validation_loss']:.3f} nats "
          f"per image, {last['elapsed_seconds']:.1f} s of training); reconstructions in "
          f"{os.path.join(model_dir, RESULTS_DIR)}")
