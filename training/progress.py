"""Progress on a terminal or in a log file, and Ctrl-C / SIGTERM as a request to stop."""

import signal
import sys
import time

import keras


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag that a loop checks between its compiled calls."""

    def __init__(self):
        self.signal_number = None

    def __enter__(self):
        self.previous = {number: signal.signal(number, self._request) for number in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _request(self, number, frame):
        self.signal_number = number

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)


class Progress:
    """A Keras progress bar on a terminal, a line every tenth of the work otherwise.

    Counts `unit`s (steps, images) up to `total`; what is shown holds the named
    `metrics` and the rate since the previous display.
    """

    def __init__(self, total, done=0, label="", unit="step", metrics=()):
        self.total, self.label, self.unit = total, label, unit
        self.rate_name = f"{unit}s/s"
        self.bar = (keras.utils.Progbar(total, stateful_metrics=[*metrics, self.rate_name], unit_name=unit)
                    if sys.stdout.isatty() else None)
        self.next_line = done
        self.last_time, self.last_done = time.perf_counter(), done

    def update(self, done, values):
        """Show `done` units and `values`, a {metric name: number} dictionary, if it is time to."""
        if self.bar is None and done < self.next_line and done != self.total:
            return
        now = time.perf_counter()
        rate = (done - self.last_done) / max(now - self.last_time, 1e-9)
        self.last_time, self.last_done = now, done
        if self.bar is not None:
            self.bar.update(done, [*values.items(), (self.rate_name, rate)])
        else:
            shown = "".join(f"  {name} {value:.3f}" for name, value in values.items())
            print(f"{self.label}{self.unit} {done}/{self.total}{shown}  {rate:.0f} {self.rate_name}", flush=True)
            self.next_line = done + max(1, self.total // 10)
