"""Command-line handling shared by the experiment scripts: train_*.py, create_comparison_figure.py, compare_learning.py.

As in script.py, every user mistake ends in one line on stderr and a non-zero exit
status (2 for usage errors, 1 for missing or broken files); --debug, or
WTA_VAE_DEBUG=1, shows the full traceback instead.
"""

import os

from config import EXPERIMENTS, RECONSTRUCTED_DIGITS, RESULTS_DIR, TrainConfig
from script import (DEBUG_VARIABLE, ArgumentParser, add_data_dir_flag, add_data_flags, given_config_values, import_func,
                    positive_float, positive_int, report_errors)

TRAIN_SCRIPTS = {"default": "train_default.py", "lwta": "train_LWTA.py", "p-lwta": "train_pLWTA.py"}


# ---------------------------------------------------------------------------
# Flags


def add_debug_flag(parser):
    parser.add_argument("--debug", action="store_true", help=f"show full tracebacks (or set {DEBUG_VARIABLE}=1)")


def train_parser(name):
    """The flags of a train_*.py script; the defaults are the original's settings for model `name`."""
    settings = EXPERIMENTS[name]
    parser = ArgumentParser(
        prog=TRAIN_SCRIPTS[name],
        description=f"Train the {settings.label} VAE with the original's settings and reconstruct the first "
                    f"{RECONSTRUCTED_DIGITS} validation digits into <output-dir>/{name}/{RESULTS_DIR}/.",
    )
    flag = parser.add_argument
    # Defaults of None tell --resume what was given; the experiment's settings fill in the rest.
    flag("--steps", type=positive_int, help=f"training steps, i.e. mini-batches (default: {settings.steps})")
    flag("--learning-rate", type=positive_float, help=f"Adam learning rate (default: {settings.learning_rate:g})")
    flag("--batch-size", type=positive_int, help=f"images per training step (default: {settings.batch_size})")
    add_data_flags(parser, TrainConfig())
    add_data_dir_flag(parser)
    flag("--output-dir", default="saved_models", help=f"the model goes to <output-dir>/{name} (default: %(default)s)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help=f"continue <output-dir>/{name} from its checkpoint, e.g. to a larger --steps, and "
                           "rewrite its reconstructions (default: start a new model)")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing model (default: refuse)")
    add_debug_flag(parser)
    return parser


# ---------------------------------------------------------------------------
# Running


def run_command(parser, action, argv=None):
    """Parse `argv` with `parser` and call action(args); returns the exit status, a user mistake in one line.

    func.py, and with it TensorFlow, is imported only after parsing (see script.report_errors).
    """
    args = parser.parse_args(argv)
    return report_errors(parser.prog, lambda: action(args), args.debug)


def main(name, argv=None):
    """Entry point of train_default.py, train_LWTA.py and train_pLWTA.py; returns the exit status."""
    return run_command(train_parser(name), lambda args: _train_and_report(name, args), argv)


def _train_and_report(name, args):
    func = import_func()
    given = given_config_values(args)
    if args.resume:
        history = func.resume_and_reconstruct(name, args.output_dir, **given)
    else:
        history = func.train_and_reconstruct(name, args.output_dir, overwrite=args.overwrite, **given)
    step, _, validation_loss, elapsed = history[-1]
    results = os.path.join(args.output_dir, name, RESULTS_DIR)
    print(f"saved {os.path.join(args.output_dir, name)} at step {step} (validation loss {validation_loss:.3f} nats "
          f"per image, {elapsed:.1f} s of training); reconstructions in {results}")
