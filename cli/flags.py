"""argparse flags generated from settings dataclasses (settings.setting), so that each flag is declared once."""

import argparse
import dataclasses

import models
from settings import check_value, flag_name, value_type
from utils import UsageError


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a usage error in one line on stderr (the usage stays in --help) and no abbreviated flags,
    so that a new flag never changes what an old command line means."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser_of(field):
    """argparse type of a setting: parse the text, then check the range (an ArgumentTypeError names the problem)."""
    kind = value_type(field)

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, got {text!r}")
        try:
            return check_value(field, value)
        except UsageError as error:
            raise argparse.ArgumentTypeError(str(error).removeprefix(flag_name(field) + " ")) from None

    parse.__name__ = "number" if kind in (int, float) else kind.__name__  # argparse's "invalid <type> value"
    return parse


def _shown(value):
    return "none given" if value is None else value


def add_settings(parser, cls, defaults=None, tell_given=True, only=None, seen=None):
    """A flag for each field of the settings dataclass `cls` (or those named in `only`).

    The help states the default, taken from `defaults` (an instance) or the
    field.  With `tell_given` every flag defaults to None, so that a caller can
    tell which were given; else to that default.  Flags already in `seen`
    (a set of field names) are skipped: two families may share one.
    """
    for field in dataclasses.fields(cls):
        if (only is not None and field.name not in only) or (seen is not None and field.name in seen):
            continue
        if seen is not None:
            seen.add(field.name)
        default = getattr(defaults, field.name) if defaults is not None else field.default
        names = [flag_name(field), *field.metadata.get("aliases", ())]
        help_text = f"{field.metadata['help']} (default: {_shown(default)})".replace("%", "%%")
        common = {"dest": field.name, "default": None if tell_given else default, "help": help_text}
        if value_type(field) is bool:
            parser.add_argument(*names, action="store_const", const=not field.default, **common)
        else:
            choices = field.metadata.get("choices")
            parser.add_argument(*names, type=_parser_of(field), choices=choices,
                                metavar="{" + ",".join(choices) + "}" if choices else None, **common)


def add_model_settings(parser, tell_given=True):
    """--model and the settings of every registered family, each flag once."""
    parser.add_argument("--model", choices=models.NAMES, default=None if tell_given else models.DEFAULT,
                        help=f"model family (default: {models.DEFAULT})")
    seen = set()
    for name in models.NAMES:
        add_settings(parser, models.config_class(name), tell_given=tell_given, seen=seen)


def given(args, *classes):
    """{field name: value} of the flags of `classes` that the user gave (those not None)."""
    names = {field.name for cls in classes for field in dataclasses.fields(cls)}
    return {name: value for name, value in vars(args).items() if name in names and value is not None}
