"""Benchmark: training and evaluation speed as fractions of this machine's float32 matrix-product ceiling.

    python bench.py            # full run (2 to 5 minutes on 2 cores)
    python bench.py --quick    # a short run
    python bench.py --json bench.json

Everything is measured in one run: the ceiling (the fastest of three large
square tf.matmul sizes), the compiled training step of each structure at two
batch sizes, validation, and the importance-weighted evaluation.  The training
settings take turns in rounds, each round opened by a ceiling measurement, and
fractions are of the highest ceiling measured.  The wall time of
compare_learning.py's default run is extrapolated from a short and a long
training run of each structure through the real training loop, and labelled as
such.

A breakdown follows, measured by taking pieces out: the batch-100 step of
`none` with a plain gradient step in place of Adam, the network's matrix
products alone (forward, gradients, a plain update), an evaluation chunk and
each of its pieces timed alone, the seeded samplers against XLA's others, and
chained matrix products in XLA's kernels against TensorFlow's.

Inputs are random pixels, so no dataset is needed; the work per step does not
depend on the pixel values.
"""

import argparse
import json
import sys

from cli.errors import quiet_stderr
from fileio import atomic


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--quick", action="store_true", help="fewer and shorter repeats (default: full run)")
    parser.add_argument("--json", help="also write the results to this JSON file (default: none)")
    args = parser.parse_args(argv)
    with quiet_stderr():  # TensorFlow's start-up banner
        from benchmarks import measure
    results = measure.measure(args.quick)
    measure.print_table(results)
    if args.json:
        atomic.atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
