"""Model directories: the checkpoint, named by what each array is, and the readable files derived from it.

A model directory holds:

* ``checkpoint.npz``: the configuration, every weight and optimizer variable
  under its Keras path, the family's extra training state, the metrics
  history and the training time, in one file replaced atomically: the single
  source of truth;
* ``config.json`` and ``metrics.csv``: readable copies, rewritten from the
  checkpoint whenever they disagree with it;
* ``tensorboard/``: the curves as TensorBoard events;
* ``evaluation.json``: the latest full ``evaluate`` result.
"""

import csv
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np

import models
import utils
from fileio import atomic, npz
from settings.run import RunConfig
from training import migration
from training.checkpoint_names import FIRST_COLUMNS, FORMAT, MODEL, OPTIMIZER, PARTIAL, STATE
from utils import DataError

CHECKPOINT_FILE = "checkpoint.npz"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
EVALUATION_FILE = "evaluation.json"
# A model's records, invalid once it is replaced: evaluations and the train scripts' reconstructions.
RECORDS = (EVALUATION_FILE, "evaluations", "results")


def metrics_columns(family):
    """The metrics history's columns: FIRST_COLUMNS, the training and validation parts of the loss, then the
    family's validation-only metrics."""
    parts = [name for name in family.metric_names() if name != "loss"]
    return (FIRST_COLUMNS + tuple(f"{split}_{name}" for split in ("training", "validation") for name in parts)
            + tuple(f"validation_{name}" for name in family.validation_only_metrics()))


def has_model(model_dir):
    return (Path(model_dir) / CHECKPOINT_FILE).exists()


def checkpoint_arrays(config, model, optimizer, extra_state, history, elapsed, partial=None):
    """The arrays of a checkpoint, each named by what it holds.

    `partial` holds {metric: per-step values} of a validation interval that an
    interruption cut short, so that a resumed run completes the interval's row.
    """
    columns = metrics_columns(models.family(config.model))
    arrays = {MODEL + variable.path: variable.numpy() for variable in model.weights}
    arrays.update({OPTIMIZER + variable.path: variable.numpy() for variable in optimizer.variables})
    arrays.update({STATE + name: variable.numpy() for name, variable in extra_state.items()})
    arrays["history"] = np.array([[row[column] for column in columns] for row in history],
                                 dtype=np.float64).reshape(-1, len(columns))
    arrays["history_columns"] = np.array(columns)
    arrays.update({PARTIAL + name: np.asarray(values, np.float32) for name, values in (partial or {}).items()})
    arrays["elapsed"] = np.float64(elapsed)
    arrays["config"] = np.array(config.to_json())
    arrays["format"] = np.int64(FORMAT)
    return arrays


def save(model_dir, arrays):
    """Write the checkpoint atomically, then the readable files derived from it."""
    model_dir = Path(model_dir)
    atomic.atomic_write(model_dir / CHECKPOINT_FILE, lambda temporary: np.savez(temporary, **arrays))
    write_sidecars(model_dir, RunConfig.from_dict(json.loads(str(arrays["config"]))), history_of(arrays))


def history_of(arrays):
    """The metrics history of checkpoint `arrays`: a list of {column: number}, step an int."""
    columns = [str(column) for column in arrays["history_columns"]]
    return [{column: (int(value) if column == "step" else float(value)) for column, value in zip(columns, row)}
            for row in arrays["history"].tolist()]


def trained_steps(arrays):
    """The steps a checkpoint's model has trained: the optimizer's iteration count."""
    return int(arrays[OPTIMIZER + "adam/iteration"])


def partial_of(arrays):
    """{metric: per-step values} of the interval an interruption cut short (empty when none was)."""
    return {name[len(PARTIAL):]: array for name, array in arrays.items() if name.startswith(PARTIAL)}


def metrics_csv(history):
    """The text of metrics.csv for `history`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = list(history[0]) if history else list(FIRST_COLUMNS)
    writer.writerow(columns)
    for row in history:
        writer.writerow([_csv_number(column, row[column]) for column in columns])
    return buffer.getvalue()


def _csv_number(column, value):
    if column == "step":
        return int(value)
    return f"{value:.3f}" if column == "elapsed_seconds" else repr(float(value))


def read_metrics_csv(path):
    """The metrics history in metrics.csv: a list of {column: number}."""
    with open(path, newline="") as handle:
        return [{column: (int(value) if column == "step" else float(value)) for column, value in row.items()}
                for row in csv.DictReader(handle)]


def write_sidecars(model_dir, config, history):
    """Rewrite config.json and metrics.csv where they differ from what the checkpoint says."""
    for name, text in ((CONFIG_FILE, config.to_json()), (METRICS_FILE, metrics_csv(history))):
        path = Path(model_dir) / name
        try:
            if path.is_file() and path.read_text() == text:
                continue
        except (OSError, UnicodeDecodeError):
            pass
        atomic.atomic_write_text(path, text)


def read(model_dir):
    """(RunConfig, arrays in today's format) of a model directory; clear errors for every way it can be broken."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise DataError(f"model directory {model_dir} does not exist; train one with: "
                        f"python script.py train --model-path {model_dir}")
    if not model_dir.is_dir():
        raise DataError(f"{model_dir} is not a directory; --model-path names the folder a training run wrote")
    path = model_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise DataError(f"{model_dir} holds no model ({CHECKPOINT_FILE} is missing)")
    try:
        arrays = npz.read_npz(path)  # checks each array's size before reading it, and never loads a pickle
        if "format" not in arrays:
            arrays = migration.from_format_1(arrays)
        if int(arrays["format"]) != FORMAT:
            raise DataError(f"format {int(arrays['format'])}; this version reads format {FORMAT}")
        missing = [name for name in ("config", "history", "history_columns", "elapsed") if name not in arrays]
        if missing:
            raise DataError(f"no {', '.join(missing)} array; retrain, or restore it from a backup")
        config = RunConfig.from_dict(json.loads(str(arrays["config"])))
        history_of(arrays)
        float(arrays["elapsed"])
    except DataError as error:
        raise DataError(f"{path}: {error}") from None
    except (OSError, ValueError, KeyError, EOFError, TypeError, RecursionError, zipfile.BadZipFile,
            SyntaxError) as error:
        raise DataError(f"{path} is truncated or corrupt ({error}); retrain, or restore it from a backup") from None
    _repair_sidecars(model_dir, config, history_of(arrays))
    return config, arrays


def _repair_sidecars(model_dir, config, history):
    """config.json and metrics.csv follow the checkpoint: a stale or hand-edited copy is rewritten, with a note."""
    path = model_dir / CONFIG_FILE
    try:
        edited = path.is_file() and path.read_text() != config.to_json()
    except (OSError, UnicodeDecodeError):
        edited = True
    try:
        write_sidecars(model_dir, config, history)
    except DataError:
        return  # a read-only directory: the checkpoint is still read correctly
    if edited:
        print(f"note: {path} differed from {CHECKPOINT_FILE}, which holds the configuration; rewrote it "
              "from the checkpoint", file=sys.stderr)


def by_path(variables):
    return {variable.path: variable for variable in variables}


def assign(variables, arrays, prefix, what):
    """Give each of `variables`, {name: variable}, the array named prefix + name; DataError when they disagree."""
    named = {name[len(prefix):]: array for name, array in arrays.items() if name.startswith(prefix)}
    missing, unexpected = sorted(set(variables) - set(named)), sorted(set(named) - set(variables))
    if missing or unexpected:
        raise DataError(f"{what}: the checkpoint lacks {missing or 'nothing'} and has unexpected "
                        f"{unexpected or 'nothing'}")
    for name, variable in variables.items():
        array = named[name]
        if tuple(array.shape) != tuple(variable.shape):
            raise DataError(f"{what}: {name} has shape {tuple(array.shape)} in the checkpoint "
                            f"but {tuple(variable.shape)} in its configuration")
        variable.assign(array)


def load_model(model_dir):
    """Rebuild a trained model from its directory alone; returns (model, RunConfig)."""
    config, arrays = read(model_dir)
    try:
        config.validate()
        model = models.family(config.model).build(config)
    except (ValueError, utils.UsageError) as error:
        raise DataError(f"{model_dir}: invalid configuration ({error})") from None
    assign(by_path(model.weights), arrays, MODEL, f"{model_dir}/{CHECKPOINT_FILE} does not match its configuration")
    return model, config
