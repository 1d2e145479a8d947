"""Progress on a terminal or in a log file, and Ctrl-C / SIGTERM as a request to stop."""

import signal
import sys
import time


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
    """Progress of `total` units (steps, images): a line redrawn in place on a terminal, else a line every tenth.

    The first update comes after the first compiled call; rates and the ETA
    count from there, so they leave out the compiling, and the units per second
    and milliseconds per unit shown are the same measurement.
    """

    def __init__(self, total, done=0, label="", unit="step", stream=None):
        self.total, self.label, self.unit = total, label, unit
        self.stream = stream or sys.stdout
        self.terminal = self.stream.isatty()
        self.origin = None  # (time, done) of the first update
        self.next_line, self.last_drawn = done, 0.0

    def update(self, done, values):
        """Show `done` units and `values`, a {name: number} dictionary, if it is time to."""
        now = time.perf_counter()
        first = self.origin is None
        if first:
            self.origin = (now, done)
        finished = done >= self.total
        if self.terminal:
            if finished or first or now - self.last_drawn >= 0.1:
                self.last_drawn = now
                self.stream.write("\r\x1b[K" + self.describe(done, values, now) + ("\n" if finished else ""))
                self.stream.flush()
        elif first or finished or done >= self.next_line:
            print(self.describe(done, values, now), file=self.stream, flush=True)
            self.next_line = done + max(1, self.total // 10)

    def describe(self, done, values, now):
        shown = "".join(f"  {name} {value:.3f}" for name, value in values.items())
        started, started_done = self.origin
        if done == started_done or now <= started:
            return f"{self.label}{self.unit} {done}/{self.total}{shown}"
        rate = (done - started_done) / (now - started)
        remaining = (self.total - done) / rate
        return (f"{self.label}{self.unit} {done}/{self.total}{shown}  {rate:.1f} {self.unit}s/s "
                f"({1000 / rate:.2f} ms/{self.unit})  ETA {_duration(remaining)}")


def _duration(seconds):
    """4 s, 3 min 20 s, 2 h 05 min."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
