"""Winner-take-all VAE: command-line front over func.py.

    python script.py train --layer-structure lwta --steps 2000
    python script.py reconstruct --model-path saved_models/lwta --output-path digit.png --mnist_index 3
    python script.py evaluate --model-path saved_models/lwta            # -log p(x), K = 5000
    python script.py sample --model-path saved_models/lwta --output-path samples.png
    python script.py latent --model-path saved_models/lwta --output-path latent.png

Every user mistake ends with one line on stderr and a non-zero exit status
(2 for usage errors); --debug, or WTA_VAE_DEBUG=1, shows the full traceback.
"""

import argparse
import contextlib
import dataclasses
import os
import sys
import tempfile

from config import (DEFAULT_CHUNK_SIZE, DEFAULT_IMPORTANCE_SAMPLES, LAYER_STRUCTURES, MANIFOLD_SIDE, MAX_CHUNK_IMAGES,
                    TrainConfig)
from utils import BINARIZATIONS, DATASETS, LOSSES, DataError, UsageError

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


def import_func():
    """Import func.py, and with it TensorFlow, as this module's `func`, hiding TensorFlow's start-up banner; returns it.

    Called once the flags have parsed, so that --help and usage errors are instant.
    """
    global func
    if "func" in sys.modules:  # imported already: no banner to hide
        func = sys.modules["func"]
    else:
        with quiet_stderr():
            import func
    return func


# ---------------------------------------------------------------------------
# Flags


def add_model_flags(parser, defaults):
    """Flags of the training configuration; each defaults to None so that --resume can tell what was given."""
    flag = parser.add_argument
    flag("--layer-structure", choices=LAYER_STRUCTURES,
         help=f"hidden units: ReLU, deterministic LWTA or probabilistic LWTA (default: {defaults.layer_structure})")
    flag("--block-size", type=positive_int, help=f"units per LWTA block (default: {defaults.block_size})")
    flag("--lwta-hidden-only", dest="compete_latent", action="store_const", const=False,
         help="apply the competition to the two hidden layers only, not to the mean and log-variance heads "
              "(default: all four, as in the original)")
    flag("--hidden-units", type=positive_int, help=f"width of both hidden layers (default: {defaults.hidden_units})")
    flag("--latent-dim", type=positive_int, help=f"latent dimensions (default: {defaults.latent_dim})")
    flag("--loss", choices=LOSSES,
         help=f"mse: the original's squared error + KL (Gaussian decoder, variance 1/2); bce: Bernoulli "
              f"(default: {defaults.loss})")
    flag("--binarize", choices=BINARIZATIONS,
         help=f"binarize pixels: a fresh draw per batch, or one fixed draw (default: {defaults.binarize})")
    flag("--dataset", choices=tuple(DATASETS), help=f"dataset (default: {defaults.dataset})")
    flag("--batch-size", type=positive_int, help=f"images per training step (default: {defaults.batch_size})")
    flag("--steps", type=positive_int, help=f"training steps, i.e. mini-batches (default: {defaults.steps})")
    flag("--learning-rate", type=positive_float, help=f"Adam learning rate (default: {defaults.learning_rate})")
    flag("--beta", type=non_negative_float, help=f"weight of the KL term in the objective (default: {defaults.beta})")
    flag("--kl-warmup-steps", type=non_negative_int,
         help=f"grow the KL weight linearly from 0 to --beta over this many steps (default: {defaults.kl_warmup_steps})")
    add_data_flags(parser, defaults)
    flag("--validation-interval", type=positive_int,
         help=f"steps between validation losses (default: {defaults.validation_interval})")
    flag("--checkpoint-interval", type=positive_int,
         help=f"steps between checkpoints (default: {defaults.checkpoint_interval})")


def add_data_flags(parser, defaults, tell_given=True):
    """--seed, --train-examples and --validation-examples, shown with their values in `defaults`.

    With `tell_given` they default to None, so that --resume can tell what was given; else to those values.
    """
    def default(value):
        return None if tell_given else value

    flag = parser.add_argument
    flag("--seed", type=non_negative_int, default=default(defaults.seed),
         help=f"seed of initialisation, shuffling and every random draw (default: {defaults.seed})")
    flag("--train-examples", type=positive_int, default=default(defaults.train_examples),
         help=f"training images, taken from image 5,000 of the training file, at most 55,000 (default: {defaults.train_examples})")
    flag("--validation-examples", type=positive_int, default=default(defaults.validation_examples),
         help=f"validation images, the first of the training file, at most 5,000 (default: {defaults.validation_examples})")


def add_data_dir_flag(parser):
    parser.add_argument("--data-dir", help="folder with the dataset's four IDX .gz files or its .npz (default: "
                                           "$MNIST_DATA_DIR, or $FASHION_MNIST_DATA_DIR with --dataset "
                                           "fashion-mnist, else Keras's cache or download)")


def add_command(commands, name, handler, help, description):
    """A subcommand that runs `handler(args)` and also accepts --debug after its name."""
    command = commands.add_parser(name, help=help, description=description)
    command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    command.set_defaults(handler=handler)
    return command


def add_trained_model_flag(parser):
    parser.add_argument("--model-path", required=True, help="directory of a trained model")


def add_output_flag(parser):
    parser.add_argument("--output-path", required=True, help='PNG file to write (".png" is appended if missing)')


def add_limit_flag(parser, what):
    parser.add_argument("--limit", type=positive_int, help=f"use only the first N {what} (default: all)")


def build_parser():
    defaults = TrainConfig()
    parser = ArgumentParser(prog="script.py", description="Winner-take-all VAE")
    parser.add_argument("--debug", action="store_true", help=f"show full tracebacks (or set {DEBUG_VARIABLE}=1)")
    commands = parser.add_subparsers(dest="mode", required=True, metavar="{train,reconstruct,evaluate,sample,latent}",
                                     parser_class=ArgumentParser)

    train = add_command(commands, "train", run_train, help="train a model",
                        description="Train a VAE and save it to --model-path.")
    add_model_flags(train, defaults)
    add_data_dir_flag(train)
    train.add_argument("--model-path", help="directory for the model (default: saved_models/<layer-structure>)")
    mode = train.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run saved in --model-path")
    mode.add_argument("--overwrite", action="store_true", help="replace the model in --model-path")

    reconstruct = add_command(commands, "reconstruct", run_reconstruct, help="reconstruct validation digits",
                              description="Write the reconstruction of a validation digit as a 28x28 PNG.")
    add_trained_model_flag(reconstruct)
    add_output_flag(reconstruct)
    reconstruct.add_argument("--mnist-index", "--mnist_index", dest="mnist_index", type=int, default=0,
                             help="index into the validation split (default: 0)")
    reconstruct.add_argument("--grid", type=positive_int,
                             help="instead, a grid of the first N validation digits above their reconstructions")
    reconstruct.add_argument("--sample", action="store_true",
                             help="decode a sampled z instead of the posterior mean (default: the mean)")
    reconstruct.add_argument("--seed", type=non_negative_int, default=1, help="seed of --sample (default: 1)")
    reconstruct.add_argument("--layer-structure", choices=LAYER_STRUCTURES,
                             help="if given, must match the saved model")
    add_data_dir_flag(reconstruct)

    evaluate = add_command(
        commands, "evaluate", run_evaluate, help="importance-weighted -log p(x) and the negative ELBO",
        description="Estimate -log p(x) per image, in nats, with K importance samples z ~ q(z|x) (Burda et al. "
                    "2015), and the negative ELBO with its reconstruction and KL parts from the same samples; "
                    "inference mode.  Prints a table and writes evaluation.json into --model-path.")
    add_trained_model_flag(evaluate)
    evaluate.add_argument("--split", choices=("test", "validation"), default="test",
                          help="images to evaluate (default: test)")
    evaluate.add_argument("--importance-samples", type=positive_int, default=DEFAULT_IMPORTANCE_SAMPLES,
                          help="K, samples per image (default: %(default)s, as in Burda et al. 2015)")
    evaluate.add_argument("--chunk-size", type=positive_int, default=DEFAULT_CHUNK_SIZE,
                          help=f"images x samples decoded per compiled call, at most {MAX_CHUNK_IMAGES} images; memory "
                               "grows with it, by about 2.5 KiB each for the 784-500-100 network (default: %(default)s)")
    evaluate.add_argument("--seed", type=non_negative_int, default=1,
                          help="seed of the importance samples (default: 1)")
    add_limit_flag(evaluate, "images of the split")
    add_data_dir_flag(evaluate)

    sample = add_command(commands, "sample", run_sample, help="decode digits from the prior",
                         description="Decode prior samples z ~ N(0, I) (inference mode) into a square-ish grid, "
                                     "written as a grayscale PNG.")
    add_trained_model_flag(sample)
    add_output_flag(sample)
    sample.add_argument("--count", type=positive_int, default=100, help="digits to draw (default: 100, 10 x 10)")
    sample.add_argument("--seed", type=non_negative_int, default=1, help="seed of the prior samples (default: 1)")

    latent = add_command(
        commands, "latent", run_latent, help="plot the latent space",
        description="Scatter the test images' posterior means (inference mode) coloured by label, over the first "
                    "two principal components when the latent space has more than 2 dimensions.  A model trained "
                    f"with --latent-dim 2 also gets its decoded manifold, a {MANIFOLD_SIDE} x "
                    f"{MANIFOLD_SIDE} grid of digits over the latent plane at evenly spaced prior quantiles, "
                    "written next to the plot as <stem>_manifold.png.")
    add_trained_model_flag(latent)
    add_output_flag(latent)
    add_limit_flag(latent, "test images")
    add_data_dir_flag(latent)
    return parser


# ---------------------------------------------------------------------------
# Commands


def given_config_values(args):
    """The training-configuration flags the user actually gave."""
    names = {field.name for field in dataclasses.fields(TrainConfig)}
    return {name: value for name, value in vars(args).items() if name in names and value is not None}


def run_train(args):
    given = given_config_values(args)
    model_path = args.model_path or os.path.join("saved_models", given.get("layer_structure", "none"))
    if args.resume:
        history = func.resume(model_path, given)
    else:
        history = func.train(TrainConfig(**given), model_path, overwrite=args.overwrite)
    step, training_loss, validation_loss, elapsed = history[-1]
    print(f"saved {model_path} at step {step}: training loss {training_loss:.3f}, validation loss "
          f"{validation_loss:.3f} nats per image, {elapsed:.1f} s of training")


def run_reconstruct(args):
    path = func.reconstruct(args.model_path, args.output_path, index=args.mnist_index, grid=args.grid,
                            sample=args.sample, layer_structure=args.layer_structure, seed=args.seed,
                            data_dir=args.data_dir)
    print(f"wrote {path}")


def evaluation_table(results):
    """The numbers of func.evaluate as a small text table."""
    settings, numbers = results["settings"], results["nats_per_image"]
    rows = (("-log p(x), importance-weighted", "negative_log_likelihood"), ("negative ELBO", "negative_elbo"),
            ("  reconstruction", "reconstruction"), ("  KL", "kl"))
    lines = [f"{settings['images']} {settings['split']} images, K = {settings['importance_samples']}, "
             f"{results['seconds']:.1f} s",
             f"{'nats per image':<32}{'mean':>10}{'std. error':>12}"]
    for label, key in rows:
        error = numbers[key]["standard_error"]
        lines.append(f"{label:<32}{numbers[key]['mean']:>10.3f}{'-' if error is None else f'{error:.3f}':>12}")
    return "\n".join(lines)


def run_evaluate(args):
    results = func.evaluate(args.model_path, split=args.split, importance_samples=args.importance_samples,
                            chunk_size=args.chunk_size, seed=args.seed, data_dir=args.data_dir, limit=args.limit)
    print(evaluation_table(results))
    print(f"wrote {os.path.join(args.model_path, func.EVALUATION_FILE)}")


def run_sample(args):
    print(f"wrote {func.sample(args.model_path, args.output_path, count=args.count, seed=args.seed)}")


def run_latent(args):
    for path in func.latent(args.model_path, args.output_path, data_dir=args.data_dir, limit=args.limit):
        print(f"wrote {path}")


def report_errors(prog, action, debug=False):
    """Call action() and return its exit status: 0, or the status of a user mistake reported in one line on stderr.

    Usage errors give 2, missing or broken files and diverged runs 1, a signal
    128 + its number.  With `debug` or WTA_VAE_DEBUG=1 the exception propagates.
    Imports func.py first, for action() and for its exceptions.
    """
    debug = debug or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    import_func()
    try:
        action()
    except UsageError as error:
        return _fail(prog, error, 2, debug)
    except (DataError, OSError, func.TrainingDiverged) as error:
        return _fail(prog, error, 1, debug)
    except func.TrainingInterrupted as error:
        return _fail(prog, error, error.exit_status, debug)
    except KeyboardInterrupt:
        return _fail(prog, KeyboardInterrupt("interrupted by Ctrl-C (every file is written whole or not at all)"), 130, debug)
    return 0


def _fail(prog, error, status, debug):
    if debug:
        raise error
    print(f"{prog}: error: {error}", file=sys.stderr)
    return status


def main(argv=None):
    args = build_parser().parse_args(argv)
    return report_errors(f"script.py {args.mode}", lambda: args.handler(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
