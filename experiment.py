"""Command-line handling shared by the experiment scripts: train_*.py, create_comparison_figure.py, compare_learning.py.

As in script.py, every user mistake ends in one line on stderr and a non-zero exit
status (2 for usage errors, 1 for missing or broken files); --debug, or
WTA_VAE_DEBUG=1, shows the full traceback instead.
"""

import os

from script import (DEBUG_VARIABLE, ArgumentParser, add_data_dir_flag, given_config_values, non_negative_int, positive_float,
                    positive_int, report_errors)

import func  # already imported, with TensorFlow's start-up banner hidden, by script

TRAIN_SCRIPTS = {"default": "train_default.py", "lwta": "train_LWTA.py", "p-lwta": "train_pLWTA.py"}


# ---------------------------------------------------------------------------
# Flags


def add_debug_flag(parser):
    parser.add_argument("--debug", action="store_true", help=f"show full tracebacks (or set {DEBUG_VARIABLE}=1)")


def add_data_flags(parser):
    """--seed, --train-examples, --validation-examples and --data-dir, with TrainConfig's defaults."""
    defaults = func.TrainConfig()
    flag = parser.add_argument
    flag("--seed", type=non_negative_int, default=defaults.seed,
         help="seed of initialisation, shuffling and every random draw (default: %(default)s)")
    flag("--train-examples", type=positive_int, default=defaults.train_examples,
         help="training images, taken from image 5,000 of the training file (default: %(default)s)")
    flag("--validation-examples", type=positive_int, default=defaults.validation_examples,
         help="validation images, the first of the training file (default: %(default)s)")
    add_data_dir_flag(parser)


def train_parser(name):
    """The flags of a train_*.py script; the defaults are the original's settings for model `name`."""
    settings = func.EXPERIMENTS[name]
    parser = ArgumentParser(
        prog=TRAIN_SCRIPTS[name],
        description=f"Train the {settings.label} VAE with the original's settings and reconstruct the first "
                    f"{func.RECONSTRUCTED_DIGITS} validation digits into <output-dir>/{name}/{func.RESULTS_DIR}/.",
    )
    flag = parser.add_argument
    flag("--steps", type=positive_int, default=settings.steps, help="training steps, i.e. mini-batches (default: %(default)s)")
    flag("--learning-rate", type=positive_float, default=settings.learning_rate, help="Adam learning rate (default: %(default)g)")
    flag("--batch-size", type=positive_int, default=settings.batch_size, help="images per training step (default: %(default)s)")
    add_data_flags(parser)
    flag("--output-dir", default="saved_models", help=f"the model goes to <output-dir>/{name} (default: %(default)s)")
    flag("--overwrite", action="store_true", help="replace an existing model (default: refuse)")
    add_debug_flag(parser)
    return parser


# ---------------------------------------------------------------------------
# Running


def run_command(parser, action, argv=None):
    """Parse `argv` with `parser` and call action(args); returns the exit status, a user mistake in one line."""
    args = parser.parse_args(argv)
    return report_errors(parser.prog, lambda: action(args), args.debug)


def main(name, argv=None):
    """Entry point of train_default.py, train_LWTA.py and train_pLWTA.py; returns the exit status."""
    return run_command(train_parser(name), lambda args: _train_and_report(name, args), argv)


def _train_and_report(name, args):
    history = func.train_and_reconstruct(name, args.output_dir, overwrite=args.overwrite, **given_config_values(args))
    step, _, validation_loss, elapsed = history[-1]
    results = os.path.join(args.output_dir, name, func.RESULTS_DIR)
    print(f"saved {os.path.join(args.output_dir, name)} at step {step} (validation loss {validation_loss:.3f} nats "
          f"per image, {elapsed:.1f} s of training); reconstructions in {results}")
