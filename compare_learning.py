"""Validation-loss curves of the three models at two learning rates, as the original README describes them.

    python compare_learning.py               # 6 runs of 5,000 steps -> compare_learning.png, .pdf and .csv
    python compare_learning.py --from-csv    # redraw the figure from compare_learning.csv, no training
    python compare_learning.py --resume      # continue an interrupted run

Every run uses batch 100 and records the validation loss (negative ELBO on the
whole validation set, inference mode) every 10 steps, on one copy of the data.
(The original VAE script trained at one learning rate for 2,000 steps; its
README's description, followed here, came from the sibling autoencoder.)
"""

import argparse
import csv
import dataclasses
import io
import shlex
import sys
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

import utils
from cli.errors import import_func
from cli.flags import ArgumentParser, add_settings
from experiments import EXPERIMENTS
from experiments.cli import DATA_SETTINGS, add_debug_flag, run_command
from fileio import atomic
from settings.run import TrainingConfig
from utils import DataError

METRICS_COLUMNS = ("step", "training_loss", "validation_loss", "elapsed_seconds")
CSV_COLUMNS = ("learning_rate", "layer_structure") + METRICS_COLUMNS
LABELS = {settings.layer_structure: settings.label for settings in EXPERIMENTS.values()}
DEFAULT_LEARNING_RATES = (1e-3, 1e-4)
DEFAULT_STEPS = 5000
BATCH_SIZE = 100
Y_LABEL = "Validation loss (negative ELBO, nats per image)"
DPI = 300
PLAIN_NUMBERS = FuncFormatter(lambda value, _: f"{value:g}")


def learning_rates(text):
    """argparse type: comma-separated positive numbers, each at most once."""
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        rates = []
    if not rates or len(set(rates)) != len(rates) or not all(0 < rate < float("inf") for rate in rates):
        raise argparse.ArgumentTypeError(f"must be distinct positive numbers separated by commas, got {text!r}")
    return rates


learning_rates.__name__ = "learning-rate list"  # argparse's "invalid <type> value" message


def build_parser():
    parser = ArgumentParser(prog="compare_learning.py", description=__doc__.splitlines()[0])
    flag = parser.add_argument
    add_settings(parser, TrainingConfig, TrainingConfig(steps=DEFAULT_STEPS), tell_given=False, only=("steps",))
    flag("--learning-rates", type=learning_rates, default=list(DEFAULT_LEARNING_RATES),
         help="comma-separated Adam learning rates, one panel each (default: 0.001,0.0001)")
    add_settings(parser, TrainingConfig, tell_given=False, only=DATA_SETTINGS)
    flag("--output-prefix", default="compare_learning",
         help="writes <prefix>.png, <prefix>.pdf and <prefix>.csv (default: %(default)s)")
    flag("--models-dir", default="saved_models",
         help="the models go to <models-dir>/compare_learning/lr<rate>/<name> (default: %(default)s)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--from-csv", action="store_true",
                      help="redraw the figure from <prefix>.csv without training (default: train)")
    mode.add_argument("--resume", action="store_true",
                      help="continue an interrupted run: finished models are reused, an unfinished one is resumed, "
                           "the rest are trained (default: train every model anew)")
    add_debug_flag(parser)
    return parser


def main(argv=None):
    return run_command(build_parser(), run, argv)


def run(args):
    csv_path = Path(f"{args.output_prefix}.csv")
    if args.from_csv:
        curves = read_csv(csv_path)
    else:
        atomic.check_writable(csv_path)
        curves = train_all(args, csv_path)
    figure = draw(curves)
    for suffix in (".png", ".pdf"):
        path = Path(f"{args.output_prefix}{suffix}")
        utils.save_figure(figure, path, dpi=DPI)
        print(f"wrote {path}")


def train_all(args, csv_path):
    """Train the three models at every learning rate on one loaded dataset, rewriting the CSV after each run.

    Returns {(learning rate, layer structure): metrics history}.
    """
    func = import_func()
    base = func.configure(batch_size=BATCH_SIZE, steps=args.steps, seed=args.seed, train_examples=args.train_examples,
                          validation_examples=args.validation_examples, data_dir=args.data_dir)
    runs = [(rate, name, base.replace(layer_structure=settings.layer_structure, learning_rate=rate))
            for rate in args.learning_rates for name, settings in EXPERIMENTS.items()]
    for _, _, config in runs:
        config.validate()  # before any run, not after an hour of training
    dataset = func.load_data(base)
    curves = {}
    try:
        for number, (rate, name, config) in enumerate(runs, 1):
            label = f"[{number}/{len(runs)} {name} lr={rate:g}] "
            model_dir = Path(args.models_dir) / "compare_learning" / f"lr{rate:g}" / name
            print(f"{label}{args.steps} steps, batch {BATCH_SIZE} -> {model_dir}", flush=True)
            curves[rate, config.model_config.layer_structure] = train_or_resume(func, config, model_dir, args.resume,
                                                                                 dataset, label)
            write_csv(csv_path, curves)
    except (KeyboardInterrupt, func.TrainingInterrupted) as stopped:
        again = shlex.join(["python", *sys.argv] + ([] if args.resume else ["--resume"]))
        what, status = (stopped.what, stopped.exit_status) if isinstance(stopped, func.TrainingInterrupted) else (
            "interrupted between runs", 130)
        raise func.TrainingInterrupted(what, status, again) from None
    return curves


def train_or_resume(func, config, model_dir, resume, dataset, label):
    """Train the run anew, or with `resume` continue what a saved model of the same settings has done."""
    if resume and func.has_model(model_dir):
        settings = {**dataclasses.asdict(config.training), **dataclasses.asdict(config.model_config)}
        return func.resume(model_dir, settings, dataset=dataset, label=label)
    return func.train(config, model_dir, overwrite=True, dataset=dataset, label=label)


def write_csv(path, curves):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for (rate, layer_structure), history in curves.items():
        for row in history:
            writer.writerow([repr(rate), layer_structure, int(row["step"]), repr(float(row["training_loss"])),
                             repr(float(row["validation_loss"])), f"{row['elapsed_seconds']:.3f}"])
    atomic.atomic_write_text(path, buffer.getvalue())


def read_csv(path):
    """The curves saved by write_csv, in file order."""
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in CSV_COLUMNS if column not in (reader.fieldnames or ())]
            if missing:
                raise DataError(f"{path} lacks the column(s) {', '.join(missing)}; it was not written by compare_learning.py")
            curves = {}
            for row in reader:
                key = (float(row["learning_rate"]), row["layer_structure"])
                curves.setdefault(key, []).append({column: float(row[column]) for column in METRICS_COLUMNS})
    except OSError as error:
        raise DataError(f"cannot read {path} ({error.strerror or error}); run without --from-csv to create it") from None
    except (ValueError, TypeError) as error:
        raise DataError(f"{path} holds a value that is not a number ({error})") from None
    if not curves:
        raise DataError(f"{path} holds no curves")
    return curves


def late_limits(histories, skip=0.1, margin=0.05):
    """(bottom, top) for the validation losses after the first `skip` of the steps, padded by `margin` of their
    range: the first ~100 steps' losses, far higher, would flatten the part where the models differ.

    None when no such loss is finite.
    """
    last_step = max((row["step"] for history in histories for row in history), default=0)
    losses = [row["validation_loss"] for history in histories for row in history
              if row["step"] >= skip * last_step and float("-inf") < row["validation_loss"] < float("inf")]
    if not losses:
        return None
    low, high = min(losses), max(losses)
    padding = margin * (high - low) or margin * max(abs(high), 1.0)
    return low - padding, high + padding


def draw(curves):
    """One panel per learning rate, stacked: validation loss against step, a line per model, the y-range fitted to
    the steps after the first tenth (the early losses run off the top)."""
    rates = list(dict.fromkeys(rate for rate, _ in curves))
    figure = Figure(figsize=(6.4, 4.2 * len(rates)))
    panels = figure.subplots(len(rates), 1, sharex=True, squeeze=False)[:, 0]
    for panel, rate in zip(panels, rates):
        histories = {layer_structure: history for (curve_rate, layer_structure), history in curves.items()
                     if curve_rate == rate}
        for layer_structure, history in histories.items():
            steps, validation_losses = ([row[column] for row in history] for column in ("step", "validation_loss"))
            panel.plot(steps, validation_losses, label=LABELS.get(layer_structure, layer_structure), linewidth=1)
        limits = late_limits(list(histories.values()))
        if limits is not None:
            panel.set_ylim(limits)
        panel.set_title(f"Learning rate: {rate:g}")
        panel.set_ylabel(Y_LABEL, fontsize="small")
        panel.yaxis.set_major_formatter(PLAIN_NUMBERS)  # 480.5, never an offset such as "+4.8e2"
        panel.legend()
    panels[-1].set_xlabel("Step")
    figure.tight_layout()
    return figure


if __name__ == "__main__":
    sys.exit(main())
