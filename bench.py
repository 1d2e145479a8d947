"""Benchmark: training and evaluation speed as fractions of this machine's float32 matrix-product ceiling.

    python bench.py            # full run (a few minutes)
    python bench.py --quick    # a short run
    python bench.py --json bench.json

Everything is measured in one run: the ceiling (a large square tf.matmul), the
compiled training step of each structure at two batch sizes, validation, and
the importance-weighted evaluation.  The wall time of compare_learning.py's
default run is extrapolated from the measured rates and labelled as such.
Inputs are random pixels, so no dataset is needed; the work per step does not
depend on the pixel values.
"""

import argparse
import json
import platform
import resource
import statistics
import time

import numpy as np

import script  # noqa: F401  (imports TensorFlow quietly)
import func
import network
import utils

import tensorflow as tf

PIXELS, HIDDEN, LATENT = 784, 500, 100
# Multiply-adds of one image's forward pass: encoder, both heads, decoder hidden, decoder output.
FORWARD_MACS = PIXELS * HIDDEN + 2 * HIDDEN * LATENT + LATENT * HIDDEN + HIDDEN * PIXELS
# A training step is a forward and a backward pass: about 3 forward passes of 2 FLOPs per multiply-add.
TRAIN_FLOPS_PER_IMAGE = 3 * 2 * FORWARD_MACS
# One importance sample decodes once: decoder hidden and output layers.
DECODE_FLOPS = 2 * (LATENT * HIDDEN + HIDDEN * PIXELS)


def timed(function, repeats):
    """Median and spread (min, max) of `repeats` wall times of function(), after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times)


def matmul_ceiling(size, repeats):
    """GFLOP/s of a size x size float32 matrix product through TensorFlow (the machine's ceiling)."""
    a = tf.random.stateless_normal((size, size), seed=[1, 2])
    b = tf.random.stateless_normal((size, size), seed=[3, 4])
    product = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    median, _, _ = timed(lambda: product().numpy(), repeats)
    return 2 * size**3 / median / 1e9


def training_rate(structure, batch_size, steps_per_call, repeats):
    """Training steps per second: (median, slowest, fastest) over repeats of one compiled multi-step call."""
    config = func.TrainConfig(layer_structure=structure, batch_size=batch_size, train_examples=10000)
    images = np.random.default_rng(0).random((10000, PIXELS), dtype=np.float32)
    trainer = func.Trainer(config, images, images[:1000])
    indices = tf.constant(func.batch_indices(1, 0, steps_per_call, batch_size, len(images)))
    run = lambda: trainer.train_interval(tf.constant(0, tf.int64), indices).numpy()  # noqa: E731
    median, fastest, slowest = timed(run, repeats)
    validation, _, _ = timed(lambda: trainer.validation_loss(tf.constant(0, tf.int64)).numpy(), repeats)
    return steps_per_call / median, steps_per_call / slowest, steps_per_call / fastest, validation


def evaluation_rate(images_count, importance_samples, repeats):
    """Images x importance samples per second of the importance-weighted estimator on an untrained VAE."""
    model = network.VAE("none")
    images = np.random.default_rng(0).random((images_count, PIXELS), dtype=np.float32)
    log_likelihood = func.decoder_log_likelihood(model, "mse")
    run = lambda: func.importance_weighted_bounds(model.encode, log_likelihood, images, importance_samples,  # noqa: E731
                                                  func.DEFAULT_CHUNK_SIZE, seed=1)
    median, _, _ = timed(run, repeats)
    return images_count * importance_samples / median


def measure(quick):
    repeats = 3 if quick else 7
    steps_per_call = 50 if quick else 200
    results = {"machine": f"{platform.processor() or platform.machine()}, {tf.config.threading.get_intra_op_parallelism_threads() or 'default'} intra-op threads",
               "cpu_count": __import__("os").cpu_count(), "tensorflow": tf.__version__, "quick": quick}
    # The ceiling drifts with the load of a shared machine: measured before and after the rest, the higher counts.
    first_ceiling = matmul_ceiling(2048, repeats)
    results["training"] = []
    for structure in network.LAYER_STRUCTURES:
        for batch_size in (100, 1000):
            steps = steps_per_call if batch_size == 100 else max(5, steps_per_call // 10)
            median, slowest, fastest, validation = training_rate(structure, batch_size, steps, repeats)
            gflops = median * TRAIN_FLOPS_PER_IMAGE * batch_size / 1e9
            results["training"].append({
                "structure": structure, "batch_size": batch_size, "steps_per_second": median,
                "spread": [slowest, fastest], "gflop_per_step": TRAIN_FLOPS_PER_IMAGE * batch_size / 1e9,
                "gflops": gflops, "validation_seconds": validation,
            })
    samples = 5000
    rate = evaluation_rate(20 if quick else 200, samples, 1)  # each call compiles once, as `evaluate` does
    results["evaluation"] = {"importance_samples": samples, "image_samples_per_second": rate,
                             "gflops": rate * DECODE_FLOPS / 1e9,
                             "test_set_minutes_at_k5000": 10000 * 5000 / rate / 60}
    results["ceiling_gflops_before_and_after"] = [first_ceiling, matmul_ceiling(2048, repeats)]
    ceiling = results["ceiling_gflops"] = max(results["ceiling_gflops_before_and_after"])
    for row in results["training"]:
        row["fraction_of_ceiling"] = row["gflops"] / ceiling
    results["evaluation"]["fraction_of_ceiling"] = results["evaluation"]["gflops"] / ceiling
    batch_100 = [row for row in results["training"] if row["batch_size"] == 100]
    results["compare_learning_minutes_extrapolated"] = sum(
        2 * (5000 / row["steps_per_second"] + 500 * row["validation_seconds"]) for row in batch_100) / 60
    results["peak_resident_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return results


def print_table(results):
    print(f"TensorFlow {results['tensorflow']} on {results['machine']}, {results['cpu_count']} CPUs")
    before, after = results["ceiling_gflops_before_and_after"]
    print(f"float32 matmul ceiling (2048x2048): {results['ceiling_gflops']:.1f} GFLOP/s "
          f"(the higher of {before:.1f} before and {after:.1f} after the measurements)")
    print()
    print("| structure | batch | steps/s (median) | spread (min-max) | GFLOP/step | GFLOP/s | of ceiling |")
    print("|---|---|---|---|---|---|---|")
    for row in results["training"]:
        print(f"| {row['structure']} | {row['batch_size']} | {row['steps_per_second']:.1f} | "
              f"{row['spread'][0]:.1f}-{row['spread'][1]:.1f} | {row['gflop_per_step']:.2f} | "
              f"{row['gflops']:.1f} | {row['fraction_of_ceiling']:.0%} |")
    evaluation = results["evaluation"]
    print()
    print(f"evaluate (K={evaluation['importance_samples']}): {evaluation['image_samples_per_second']:,.0f} "
          f"image-samples/s, {evaluation['gflops']:.1f} GFLOP/s, {evaluation['fraction_of_ceiling']:.0%} of ceiling; "
          f"10,000 test images at K=5000: {evaluation['test_set_minutes_at_k5000']:.1f} min")
    print(f"compare_learning.py default run (6 x 5,000 steps, validation every 10), extrapolated from the rates "
          f"above: {results['compare_learning_minutes_extrapolated']:.1f} min")
    print(f"peak resident memory: {results['peak_resident_mib']:.0f} MiB")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter repeats (default: full run)")
    parser.add_argument("--json", help="also write the results to this JSON file (default: none)")
    args = parser.parse_args(argv)
    results = measure(args.quick)
    print_table(results)
    if args.json:
        utils.atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
