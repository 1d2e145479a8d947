"""The command lines: flags generated from the settings dataclasses, and one-line errors."""
