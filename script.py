"""Command line over func.py: train, reconstruct, evaluate, sample, latent and export.

    python script.py train --layer-structure lwta --steps 2000
    python script.py reconstruct --model-path saved_models/lwta --output-path digit.png --mnist_index 3
    python script.py evaluate --model-path saved_models/lwta            # -log p(x), K = 5000
    python script.py sample --model-path saved_models/lwta --output-path samples.png
    python script.py latent --model-path saved_models/lwta --output-path latent.png
    python script.py export --model-path saved_models/lwta --output-path lwta.keras

Every user mistake ends with one line on stderr and a non-zero exit status
(2 for usage errors); --debug, or WTA_VAE_DEBUG=1, shows the full traceback.
"""

import argparse
import sys

from cli.errors import DEBUG_VARIABLE, import_func, report_errors
from cli.flags import ArgumentParser, add_model_settings, add_settings, given
from cli.options import EvaluateOptions, LatentOptions, ReconstructOptions, SampleOptions, options
from settings.run import TrainingConfig

COMMANDS = "{train,reconstruct,evaluate,sample,latent,export}"


def add_command(commands, name, handler, help, description, model_flag_help="directory of a trained model"):
    """A subcommand that runs `handler(args)`, with --model-path and --debug."""
    command = commands.add_parser(name, help=help, description=description)
    command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    command.add_argument("--model-path", required=name != "train", help=model_flag_help)
    command.set_defaults(handler=handler)
    return command


def add_output_flag(parser, what='PNG file to write (".png" is appended if missing)'):
    parser.add_argument("--output-path", required=True, help=what)


def add_data_dir_flag(parser):
    add_settings(parser, TrainingConfig, only=("data_dir",), tell_given=False)


def build_parser():
    parser = ArgumentParser(prog="script.py", description="Winner-take-all VAE")
    parser.add_argument("--debug", action="store_true", help=f"show full tracebacks (or set {DEBUG_VARIABLE}=1)")
    commands = parser.add_subparsers(dest="mode", required=True, metavar=COMMANDS, parser_class=ArgumentParser)

    train = add_command(commands, "train", run_train, help="train a model",
                        description="Train a model and save it to --model-path.",
                        model_flag_help="directory for the model (default: saved_models/<layer-structure>, with "
                                        "-<dataset> appended off MNIST)")
    add_model_settings(train)
    add_settings(train, TrainingConfig)
    mode = train.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run saved in --model-path")
    mode.add_argument("--overwrite", action="store_true", help="replace the model in --model-path")

    reconstruct = add_command(commands, "reconstruct", run_reconstruct, help="reconstruct validation digits",
                              description="Write the reconstruction of a validation digit as a 28x28 PNG.")
    add_output_flag(reconstruct)
    add_settings(reconstruct, ReconstructOptions, tell_given=False)
    add_data_dir_flag(reconstruct)

    evaluate = add_command(
        commands, "evaluate", run_evaluate, help="importance-weighted -log p(x) and the negative ELBO",
        description="Estimate -log p(x) per image, in nats, with K importance samples z ~ q(z|x) (Burda et al. "
                    "2015), and the negative ELBO with its reconstruction and KL parts from the same samples; "
                    "inference mode.  Prints a table and writes evaluation.json into --model-path.")
    add_settings(evaluate, EvaluateOptions, tell_given=False)
    add_data_dir_flag(evaluate)

    sample = add_command(commands, "sample", run_sample, help="decode digits from the prior",
                         description="Decode prior samples z ~ N(0, I) (inference mode) into a square-ish grid, "
                                     "written as a grayscale PNG.")
    add_output_flag(sample)
    add_settings(sample, SampleOptions, tell_given=False)

    latent = add_command(
        commands, "latent", run_latent, help="plot the latent space",
        description="Scatter the test images' posterior means (inference mode) coloured by label, over the first "
                    "two principal components when the latent space has more than 2 dimensions.  A model trained "
                    "with --latent-dim 2 also gets its decoded manifold, a grid of digits over the latent plane at "
                    "evenly spaced prior quantiles, written next to the plot as <stem>_manifold.png.")
    add_output_flag(latent)
    add_settings(latent, LatentOptions, tell_given=False)
    add_data_dir_flag(latent)

    export = add_command(commands, "export", run_export, help="write the model as a Keras archive",
                         description="Write the trained model as a .keras archive: keras.saving.load_model loads it "
                                     "in any process that can import this project, and it maps images to their "
                                     "reconstructions (posterior mean, inference mode).")
    add_output_flag(export, "the .keras file to write")
    return parser


def run_train(args):
    func = import_func()
    values = given(args, *_settings_classes())
    if args.resume:
        model_path = args.model_path or func.default_model_path(func.configure(args.model or "vae", **values))
        history = func.resume(model_path, {**values, **({"model": args.model} if args.model else {})})
    else:
        config = func.configure(args.model or "vae", **values)
        model_path = args.model_path or func.default_model_path(config)
        history = func.train(config, model_path, overwrite=args.overwrite)
    last = history[-1]
    print(f"{model_path} at step {last['step']}: training loss {last['training_loss']:.3f}, validation loss "
          f"{last['validation_loss']:.3f} nats per image, {last['elapsed_seconds']:.1f} s of training")


def _settings_classes():
    import models

    return (TrainingConfig, *(models.config_class(name) for name in models.NAMES))


def run_reconstruct(args):
    chosen = options(ReconstructOptions, args)
    path = import_func().reconstruct(args.model_path, args.output_path, index=chosen.mnist_index, grid=chosen.grid,
                                     sample=chosen.sample, layer_structure=chosen.layer_structure, seed=chosen.seed,
                                     scale=chosen.scale, data_dir=args.data_dir)
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
    chosen = options(EvaluateOptions, args)
    func = import_func()
    results = func.evaluate(args.model_path, split=chosen.split, importance_samples=chosen.importance_samples,
                            chunk_size=chosen.chunk_size, seed=chosen.seed, data_dir=args.data_dir, limit=chosen.limit,
                            report=lambda results: print(evaluation_table(results), flush=True))
    print(f"wrote {results['path']}")


def run_sample(args):
    chosen = options(SampleOptions, args)
    path = import_func().sample(args.model_path, args.output_path, count=chosen.count, seed=chosen.seed,
                                scale=chosen.scale)
    print(f"wrote {path}")


def run_latent(args):
    chosen = options(LatentOptions, args)
    for path in import_func().latent(args.model_path, args.output_path, data_dir=args.data_dir, limit=chosen.limit):
        print(f"wrote {path}")


def run_export(args):
    print(f"wrote {import_func().export(args.model_path, args.output_path)}")


def read_model_directory(args):
    """Read the model directory a command names before TensorFlow starts: a damaged one is reported at once."""
    if args.mode != "train":
        from training import checkpoint

        checkpoint.read(args.model_path)


def main(argv=None):
    args = build_parser().parse_args(argv)
    return report_errors(f"script.py {args.mode}", lambda: args.handler(args), args.debug,
                         precheck=lambda: read_model_directory(args))


if __name__ == "__main__":
    sys.exit(main())
