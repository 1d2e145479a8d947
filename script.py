"""Winner-take-all VAE: command-line front over func.py.

    python script.py train --layer-structure lwta --steps 2000
    python script.py reconstruct --model-path saved_models/lwta --output-path digit.png --mnist_index 3

Every user mistake ends with one line on stderr and a non-zero exit status
(2 for usage errors); --debug, or WTA_VAE_DEBUG=1, shows the full traceback.
"""

import argparse
import contextlib
import dataclasses
import os
import sys
import tempfile

DEBUG_VARIABLE = "WTA_VAE_DEBUG"


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (the usage stays in --help)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text):
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text):
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or a positive number, got {text}")
    return value


for _type in (positive_int, non_negative_int, positive_float, non_negative_float):
    _type.__name__ = "number"  # argparse names the type in "invalid <type> value" messages


@contextlib.contextmanager
def quiet_stderr():
    """Hide TensorFlow's C++ start-up banner, which would bury the one-line error messages; replay it on failure."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


with quiet_stderr():
    import func  # TensorFlow and Keras
from utils import DataError, UsageError


# ---------------------------------------------------------------------------
# Flags


def add_model_flags(parser, defaults):
    """Flags of the training configuration; each defaults to None so that --resume can tell what was given."""
    flag = parser.add_argument
    flag("--layer-structure", choices=("none", "lwta", "p-lwta"),
         help=f"hidden units: ReLU, deterministic LWTA or probabilistic LWTA (default: {defaults.layer_structure})")
    flag("--block-size", type=positive_int, help=f"units per LWTA block (default: {defaults.block_size})")
    flag("--lwta-hidden-only", dest="compete_latent", action="store_const", const=False,
         help="apply the competition to the two hidden layers only, not to the mean and log-variance heads "
              "(default: all four, as in the original)")
    flag("--hidden-units", type=positive_int, help=f"width of both hidden layers (default: {defaults.hidden_units})")
    flag("--latent-dim", type=positive_int, help=f"latent dimensions (default: {defaults.latent_dim})")
    flag("--loss", choices=("mse", "bce"),
         help=f"mse: the original's squared error + KL (Gaussian decoder, variance 1/2); bce: Bernoulli "
              f"(default: {defaults.loss})")
    flag("--binarize", choices=("none", "dynamic", "static"),
         help=f"binarize pixels: a fresh draw per batch, or one fixed draw (default: {defaults.binarize})")
    flag("--dataset", choices=("mnist", "fashion-mnist"), help=f"dataset (default: {defaults.dataset})")
    flag("--batch-size", type=positive_int, help=f"images per training step (default: {defaults.batch_size})")
    flag("--steps", type=positive_int, help=f"training steps, i.e. mini-batches (default: {defaults.steps})")
    flag("--learning-rate", type=positive_float, help=f"Adam learning rate (default: {defaults.learning_rate})")
    flag("--beta", type=non_negative_float, help=f"weight of the KL term in the objective (default: {defaults.beta})")
    flag("--kl-warmup-steps", type=non_negative_int,
         help=f"grow the KL weight linearly from 0 to --beta over this many steps (default: {defaults.kl_warmup_steps})")
    flag("--seed", type=int, help=f"seed of initialisation, shuffling and every random draw (default: {defaults.seed})")
    flag("--train-examples", type=positive_int,
         help=f"training images, taken from image 5,000 of the training file, at most 55,000 (default: {defaults.train_examples})")
    flag("--validation-examples", type=positive_int,
         help=f"validation images, the first of the training file, at most 5,000 (default: {defaults.validation_examples})")
    flag("--validation-interval", type=positive_int,
         help=f"steps between validation losses (default: {defaults.validation_interval})")
    flag("--checkpoint-interval", type=positive_int,
         help=f"steps between checkpoints (default: {defaults.checkpoint_interval})")


def add_data_dir_flag(parser):
    parser.add_argument("--data-dir", help="folder with the four MNIST IDX .gz files or mnist.npz "
                                           "(default: $MNIST_DATA_DIR, else Keras's cache or download)")


def build_parser():
    defaults = func.TrainConfig()
    parser = ArgumentParser(prog="script.py", description="Winner-take-all VAE")
    parser.add_argument("--debug", action="store_true", help=f"show full tracebacks (or set {DEBUG_VARIABLE}=1)")
    commands = parser.add_subparsers(dest="mode", required=True, metavar="{train,reconstruct}",
                                     parser_class=ArgumentParser)

    train = commands.add_parser("train", help="train a model", description="Train a VAE and save it to --model-path.")
    add_model_flags(train, defaults)
    add_data_dir_flag(train)
    train.add_argument("--model-path", help="directory for the model (default: saved_models/<layer-structure>)")
    mode = train.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run saved in --model-path")
    mode.add_argument("--overwrite", action="store_true", help="replace the model in --model-path")
    train.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    train.set_defaults(handler=run_train)

    reconstruct = commands.add_parser("reconstruct", help="reconstruct validation digits",
                                      description="Write the reconstruction of a validation digit as a 28x28 PNG.")
    reconstruct.add_argument("--model-path", required=True, help="directory of a trained model")
    reconstruct.add_argument("--output-path", required=True, help='PNG file to write (".png" is appended if missing)')
    reconstruct.add_argument("--mnist-index", "--mnist_index", dest="mnist_index", type=int, default=0,
                             help="index into the validation split (default: 0)")
    reconstruct.add_argument("--grid", type=positive_int,
                             help="instead, a grid of the first N validation digits above their reconstructions")
    reconstruct.add_argument("--sample", action="store_true",
                             help="decode a sampled z instead of the posterior mean (default: the mean)")
    reconstruct.add_argument("--seed", type=int, default=1, help="seed of --sample (default: 1)")
    reconstruct.add_argument("--layer-structure", choices=("none", "lwta", "p-lwta"),
                             help="if given, must match the saved model")
    add_data_dir_flag(reconstruct)
    reconstruct.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    reconstruct.set_defaults(handler=run_reconstruct)
    return parser


# ---------------------------------------------------------------------------
# Commands


def given_config_values(args):
    """The training-configuration flags the user actually gave."""
    names = {field.name for field in dataclasses.fields(func.TrainConfig)}
    return {name: value for name, value in vars(args).items() if name in names and value is not None}


def run_train(args):
    given = given_config_values(args)
    model_path = args.model_path or os.path.join("saved_models", given.get("layer_structure", "none"))
    if args.resume:
        history = func.resume(model_path, given)
    else:
        history = func.train(func.TrainConfig(**given), model_path, overwrite=args.overwrite)
    step, training_loss, validation_loss, elapsed = history[-1]
    print(f"saved {model_path} at step {step}: training loss {training_loss:.3f}, validation loss "
          f"{validation_loss:.3f} nats per image, {elapsed:.1f} s of training")


def run_reconstruct(args):
    path = func.reconstruct(args.model_path, args.output_path, index=args.mnist_index, grid=args.grid,
                            sample=args.sample, layer_structure=args.layer_structure, seed=args.seed,
                            data_dir=args.data_dir)
    print(f"wrote {path}")


def fail(args, error, status, debug):
    """Report `error` in one line on stderr and return the exit status (or re-raise under --debug)."""
    if debug:
        raise error
    print(f"script.py {args.mode}: error: {error}", file=sys.stderr)
    return status


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    try:
        args.handler(args)
    except UsageError as error:
        return fail(args, error, 2, debug)
    except (DataError, OSError, func.TrainingDiverged) as error:
        return fail(args, error, 1, debug)
    except func.TrainingInterrupted as error:
        return fail(args, error, error.exit_status, debug)
    except KeyboardInterrupt:
        return fail(args, KeyboardInterrupt("interrupted by Ctrl-C (every file is written whole or not at all)"), 130, debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
