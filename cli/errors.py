"""Every user mistake in one line on stderr and a non-zero exit status; TensorFlow imported after the flags parse."""

import contextlib
import os
import signal
import sys
import tempfile

from utils import DataError, UsageError

DEBUG_VARIABLE = "WTA_VAE_DEBUG"


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
        except KeyboardInterrupt:
            raise  # Ctrl-C during start-up: one line, not TensorFlow's banner
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def import_func():
    """Import func.py, and with it TensorFlow, hiding TensorFlow's start-up banner; returns the module.

    Called once the flags have parsed, so that --help and usage errors are instant.
    """
    if "func" in sys.modules:  # imported already: no banner to hide
        return sys.modules["func"]
    with quiet_stderr():
        import func
    return func


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an exception so that every writer removes its temporary files on the way out."""


def _terminate(number, frame):
    raise Terminated()


def report_errors(prog, action, debug=False, precheck=None):
    """Call action() and return its exit status: 0, or the status of a user mistake reported in one line on stderr.

    Usage errors give 2, missing or broken files and diverged runs 1, a signal
    128 + its number.  With `debug` or WTA_VAE_DEBUG=1 the exception propagates.
    `precheck()`, free of TensorFlow, runs first (e.g. reading a model
    directory), so that its mistakes are reported at once; then func.py is
    imported, for action() and for its exceptions.
    """
    debug = debug or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    signal.signal(signal.SIGTERM, _terminate)
    try:
        if precheck:
            precheck()
    except UsageError as error:
        return _fail(prog, error, 2, debug)
    except (DataError, OSError) as error:
        return _fail(prog, error, 1, debug)
    try:
        func = import_func()
    except KeyboardInterrupt as error:
        return _fail(prog, KeyboardInterrupt("interrupted by Ctrl-C while starting TensorFlow"), 130, debug, error)
    try:
        action()
    except UsageError as error:
        return _fail(prog, error, 2, debug)
    except (DataError, OSError, func.TrainingDiverged) as error:
        return _fail(prog, error, 1, debug)
    except func.TrainingInterrupted as error:
        return _fail(prog, error, error.exit_status, debug)
    except Terminated as error:
        message = KeyboardInterrupt("terminated by SIGTERM (every file is written whole or not at all)")
        return _fail(prog, message, 128 + signal.SIGTERM, debug, error)
    except KeyboardInterrupt as error:
        message = KeyboardInterrupt("interrupted by Ctrl-C (every file is written whole or not at all)")
        return _fail(prog, message, 130, debug, error)
    return 0


def _fail(prog, error, status, debug, original=None):
    if debug:
        raise original or error
    print(f"{prog}: error: {error}", file=sys.stderr)
    return status
