"""Settings: dataclass fields that carry their help, default and allowed range.

The command-line flags are generated from these fields (see cli/flags.py), and
the same metadata validates a configuration read back from a model directory,
so a value is checked in one place whichever way it arrives.  Free of
TensorFlow, so that --help and usage errors are instant.
"""

import dataclasses
import math

from utils import UsageError

MAX_SEED = 2**32 - 1  # NumPy's and TensorFlow's seeds are unsigned 32-bit integers
MAX_COUNT = 2**31 - 1  # steps, intervals and sizes are int32 inside compiled code


def setting(default, help, *, minimum=None, maximum=None, choices=None, flag=None, aliases=()):
    """A dataclass field whose flag is --<name with dashes> (or `flag`), with `help` and a checked range."""
    return dataclasses.field(default=default, metadata={
        "help": help, "minimum": minimum, "maximum": maximum, "choices": choices, "flag": flag, "aliases": aliases})


def flag_name(field):
    """The command-line spelling of a setting: --learning-rate for learning_rate."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def value_type(field):
    """bool, int, float or str: the type a setting's value must have (None allowed where the default is None)."""
    annotation = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    for name, kind in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if annotation.startswith(name):
            return kind
    raise TypeError(f"setting {field.name} has an unsupported type {field.type!r}")


def check_value(field, value):
    """`value` converted to the setting's type, or UsageError naming the flag and what it must be."""
    name, kind = flag_name(field), value_type(field)
    if value is None and field.default is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UsageError(f"{name} must be {'an integer' if kind is int else 'a ' + kind.__name__}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number, got {value!r}")
    choices, minimum, maximum = (field.metadata.get(key) for key in ("choices", "minimum", "maximum"))
    if choices is not None and value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    if minimum is not None and value < minimum:
        raise UsageError(f"{name} must be at least {_number(minimum)}, got {value!r}")
    if maximum is not None and value > maximum:
        raise UsageError(f"{name} must be at most {_number(maximum)}, got {value!r}")
    return value


def _number(limit):
    """A limit as written: 4294967295, not 4.29497e+09; 1e-12 for small floats."""
    return str(limit) if isinstance(limit, int) else f"{limit:g}"


def checked(cls, values):
    """An instance of the settings dataclass `cls` from a {field name: value} dictionary, every value checked.

    Missing fields take their defaults; unknown names are a UsageError.
    """
    if not isinstance(values, dict):
        raise UsageError(f"{cls.__name__} settings must be a dictionary, got {type(values).__name__}")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UsageError(f"unknown setting(s): {', '.join(map(str, unknown))}")
    return cls(**{name: check_value(fields[name], value) for name, value in values.items()})


def as_dict(settings):
    return dataclasses.asdict(settings)
