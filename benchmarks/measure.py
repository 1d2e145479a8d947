"""The measurements of bench.py (imports TensorFlow); bench.py parses its flags first."""


import functools
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import func
import network
import utils
from evaluation import importance
from models.vae import family as vae_family
from training import data
from training.trainer import Trainer

PIXELS, HIDDEN, LATENT = 784, 500, 100
# The weight matrices of the forward pass: encoder, mean and log-variance heads, decoder hidden, decoder output.
PRODUCT_SHAPES = ((PIXELS, HIDDEN), (HIDDEN, LATENT), (HIDDEN, LATENT), (LATENT, HIDDEN), (HIDDEN, PIXELS))
# Multiply-adds of one image's forward pass.
FORWARD_MACS = sum(inputs * outputs for inputs, outputs in PRODUCT_SHAPES)
# A training step is a forward and a backward pass: about 3 forward passes of 2 FLOPs per multiply-add.
TRAIN_FLOPS_PER_IMAGE = 3 * 2 * FORWARD_MACS
# One importance sample decodes once: decoder hidden and output layers.
DECODE_FLOPS = 2 * (LATENT * HIDDEN + HIDDEN * PIXELS)
PLAIN_UPDATE = "none, batch 100, plain update"
PRODUCTS_ALONE = "batch 100, products alone"
CEILING_SIZES = (1024, 1536, 2048)


def timed(function, repeats):
    """Median and spread (min, max) of `repeats` wall times of function(), after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times)


def square_product_gflops(size, repeats=3):
    """GFLOP/s of a size x size float32 matrix product through TensorFlow, the fastest of `repeats`."""
    a = tf.random.stateless_normal((size, size), seed=[1, 2])
    b = tf.random.stateless_normal((size, size), seed=[3, 4])
    product = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    _, fastest, _ = timed(lambda: product().numpy(), repeats)
    return 2 * size**3 / fastest / 1e9


def matmul_ceiling(repeats=3):
    """The machine's float32 ceiling: GFLOP/s of the fastest square product of CEILING_SIZES.

    One size can miss it, because the fastest depends on the caches: on a Zen 3
    with AVX2, 2048 x 2048 ran about 20% slower than 1536 x 1536, below the
    training step at batch 1,000.
    """
    return max(square_product_gflops(size, repeats) for size in CEILING_SIZES)


def random_dataset(train_examples=10000, validation_examples=1000):
    """MNIST-shaped random pixels: the work of training and validation does not depend on the pixel values."""
    rng = np.random.default_rng(0)
    split = lambda count: utils.Split(rng.random((count, PIXELS), dtype=np.float32), np.zeros(count, np.int64))  # noqa: E731
    return utils.Dataset(split(train_examples), split(validation_examples), split(1))


def trainer_call(structure, batch_size, steps, dataset, plain_update=False):
    """A function that runs `steps` compiled training steps of a fresh model, and one that validates it.

    `plain_update` swaps Adam for a plain gradient step (before anything is
    traced), which shows what Adam's update costs.
    """
    config = func.configure(layer_structure=structure, batch_size=batch_size)
    trainer = Trainer(config, dataset.train.images, dataset.validation.images)
    if plain_update:
        trainer.optimizer = keras.optimizers.SGD(config.training.learning_rate)
        trainer.optimizer.build(trainer.model.trainable_variables)
    indices = tf.constant(data.batch_indices(1, 0, steps, batch_size, len(dataset.train.images)))
    train = lambda: trainer.train_interval(tf.constant(0, tf.int64), indices)["loss"].numpy()  # noqa: E731
    validate = lambda: trainer.validation_metrics(tf.constant(0, tf.int64))["loss"].numpy()  # noqa: E731
    return train, validate


def random_weights():
    """The five weight matrices of PRODUCT_SHAPES, drawn at the scale of a trained layer's inputs."""
    return [tf.random.stateless_normal(shape, [index, 0]) / shape[0] ** 0.5 for index, shape in enumerate(PRODUCT_SHAPES)]


def forward_products(x, weights, activation):
    """The five matrix products of a forward pass of `x` through `weights` (PRODUCT_SHAPES), the two heads summed,
    with `activation` after the encoder's and the decoder's hidden layers."""
    encoder, mean, log_variance, decoder, output = weights
    hidden = activation(x @ encoder)
    return activation((hidden @ mean + hidden @ log_variance) @ decoder) @ output


def products_alone_call(batch_size, steps):
    """A function that runs `steps` compiled steps of the network's matrix products alone: the forward pass with
    its ReLUs, the gradients and a plain update, without the VAE's sampling, loss or Adam.

    Its rate bounds what any training step at this batch size can reach
    through XLA's matrix-product kernels.
    """
    weights = [tf.Variable(weight) for weight in random_weights()]
    x = tf.random.stateless_uniform((batch_size, PIXELS), [9, 0])

    @tf.function(jit_compile=True)
    def run():
        for _ in tf.range(steps):
            with tf.GradientTape() as tape:
                total = tf.reduce_sum(forward_products(x, weights, tf.nn.relu))
            for weight, gradient in zip(weights, tape.gradient(total, weights)):
                weight.assign_sub(1e-6 * gradient)
        return total

    return lambda: run().numpy()


def training_seconds(calls, rounds):
    """({setting: [seconds of its call in each round]}, [the ceiling of each round]) for `calls`, {setting: call}.

    The calls take turns within each round, after the round's ceiling, so a
    shared machine's drifting speed touches them all alike.
    """
    for call in calls.values():
        call()  # compile
    seconds, ceilings = {setting: [] for setting in calls}, []
    for _ in range(rounds):
        ceilings.append(matmul_ceiling())
        for setting, call in calls.items():
            start = time.perf_counter()
            call()
            seconds[setting].append(time.perf_counter() - start)
    return seconds, ceilings


def training_run_seconds(structure, steps, dataset):
    """Wall time of func.train, as compare_learning.py calls it: batch 100, validation every 10 steps."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        func.train(func.configure(layer_structure=structure, steps=steps), Path(folder) / "model",
                   dataset=dataset, progress=False)
        return time.perf_counter() - start


def compare_learning_minutes(short, long, dataset):
    """compare_learning.py's default run (two learning rates x three structures x 5,000 steps), in minutes,
    extrapolated from `short`- and `long`-step training runs: their difference gives the cost of a step in the
    training loop (validation and checkpoints included), the rest is each run's fixed cost (tracing, compiling)."""
    minutes = 0
    for structure in network.LAYER_STRUCTURES:
        short_seconds = training_run_seconds(structure, short, dataset)
        step = (training_run_seconds(structure, long, dataset) - short_seconds) / (long - short)
        fixed = short_seconds - short * step
        minutes += 2 * (fixed + 5000 * step) / 60
    return minutes


def evaluation_seconds(images_count, importance_samples):
    """Wall time of the importance-weighted estimator on `images_count` random images, untrained VAE."""
    model = network.VAE("none")
    images = random_dataset(train_examples=1, validation_examples=images_count).validation.images
    log_likelihood = vae_family.decoder_log_likelihood(model, "mse")
    start = time.perf_counter()
    importance.importance_weighted_bounds(model.encode, log_likelihood, images, importance_samples, seed=1)
    return time.perf_counter() - start


def evaluation_rate(few, many, importance_samples, repeats):
    """(median image-samples per second, their (min, max), median one-off seconds) of `repeats` measurements.

    Each rate is the difference of a run on `few` and on `many` images, so that
    tracing and compiling, paid once per `evaluate`, cancel out; the one-off
    cost is what remains.  A first run compiles what later runs reuse, as the
    first `evaluate` of a session does.
    """
    evaluation_seconds(few, importance_samples)
    rates, one_offs = [], []
    for _ in range(repeats):
        short, long = evaluation_seconds(few, importance_samples), evaluation_seconds(many, importance_samples)
        rates.append((many - few) * importance_samples / (long - short))
        one_offs.append(short - few * importance_samples / rates[-1])
    return statistics.median(rates), (min(rates), max(rates)), statistics.median(one_offs)


def milliseconds(calls, repeats):
    """{name: median milliseconds of call()} for `calls`, {name: call}, each after a warm-up call."""
    return {name: 1000 * timed(call, repeats)[0] for name, call in calls.items()}


def evaluation_chunk_pieces(repeats, images_count=5, importance_samples=5000):
    """Milliseconds of one default evaluation chunk (5 images x 5,000 samples, untrained ReLU model) and of each
    of its pieces, timed alone on the same inputs."""
    model = network.VAE("none")
    log_likelihood = vae_family.decoder_log_likelihood(model, "mse")
    x = tf.constant(random_dataset(train_examples=1, validation_examples=images_count).validation.images)
    mean, log_variance = model.encode(x)
    indices = tf.range(images_count, dtype=tf.int64)
    draw_noise = lambda: importance.chunk_noise(1, indices, importance_samples, LATENT, importance_samples, 0)  # noqa: E731
    noise = draw_noise()
    z, _ = importance.posterior_samples(mean, log_variance, noise)
    products = tf.function(lambda z: [model.decode_logits(tf.reshape(part, [-1, LATENT])) for part in vae_family.decode_parts(z)])
    weigh = tf.function(functools.partial(importance.chunk_weights, log_likelihood, importance_samples, importance_samples, 1))
    log_likelihood = tf.function(log_likelihood)  # a graph, as inside `weigh`
    return milliseconds({
        "chunk": lambda: weigh(x, mean, log_variance, indices, tf.constant(0)),
        "noise": draw_noise,
        "z and log p(z) - log q(z|x)": lambda: importance.posterior_samples(mean, log_variance, noise),
        "log p(x|z)": lambda: log_likelihood(x[:, None], z),
        "decoder products (bias and ReLU fused)": lambda: products(z),
    }, repeats)


def sampler_nanoseconds(repeats, count=2_500_000):
    """Nanoseconds per number of the seeded samplers (network.uniform, network.normal) and of XLA's others,
    each compiled on its own, for `count` numbers (one evaluation chunk's noise)."""
    seed = tf.constant([1, 2], tf.int64)
    compiled = lambda draw: tf.function(draw, jit_compile=True)  # noqa: E731
    samplers = {
        "uniform, ThreeFry (network.uniform)": lambda: network.uniform([count], seed),
        "uniform, Philox": compiled(lambda: tf.random.stateless_uniform([count], seed, alg="philox")),
        "normal, inverse CDF at ThreeFry uniforms (network.normal)": compiled(lambda: network.normal([count], seed)),
        "normal, XLA's own sampler (ThreeFry)": compiled(lambda: tf.random.stateless_normal([count], seed, alg="threefry")),
    }
    return {name: 1e6 * ms / count for name, ms in milliseconds(samplers, repeats).items()}


def product_chain_gflops(rows, jit_compile, repeats, links=20):
    """GFLOP/s of the five matrix products of a forward pass on `rows` images, chained `links` times, in XLA's
    kernels or TensorFlow's (oneDNN): the products alone, as the training step and the evaluation see them."""
    weights = random_weights()

    def chain(x):
        for _ in range(links):
            x = forward_products(x, weights, activation=lambda hidden: hidden)  # the products alone
        return x

    x = tf.random.stateless_normal((rows, PIXELS), [9, 0])
    chained = tf.function(chain, jit_compile=jit_compile)
    seconds, _, _ = timed(lambda: chained(x).numpy(), repeats)
    return 2 * FORWARD_MACS * rows * links / seconds / 1e9


def breakdown(repeats):
    """Where the time goes: an evaluation chunk's pieces, the samplers, and matrix products in XLA against
    TensorFlow's kernels at the training and the evaluation shapes."""
    return {
        "evaluation_chunk_ms": evaluation_chunk_pieces(repeats),
        "sampler_ns_per_number": sampler_nanoseconds(repeats),
        "product_chain_gflops": {f"{rows} rows, {'XLA' if jit else 'TensorFlow'}": product_chain_gflops(rows, jit, repeats)
                                 for rows in (100, vae_family.DECODE_ROWS) for jit in (True, False)},
    }


def training_results(dataset, rounds, steps_per_call):
    """(a row per structure and batch size, {PLAIN_UPDATE: steps/s of `none` at batch 100 with a plain update
    instead of Adam, PRODUCTS_ALONE: steps/s of its products alone}, the ceilings measured between the rounds)."""
    settings = [(structure, batch_size, steps_per_call if batch_size == 100 else max(5, steps_per_call // 10))
                for structure in network.LAYER_STRUCTURES for batch_size in (100, 1000)]
    calls = {setting: trainer_call(*setting, dataset) for setting in settings}
    trains = {setting: train for setting, (train, _) in calls.items()}
    trains[PLAIN_UPDATE], _ = trainer_call("none", 100, steps_per_call, dataset, plain_update=True)
    trains[PRODUCTS_ALONE] = products_alone_call(100, steps_per_call)
    seconds, ceilings = training_seconds(trains, rounds)
    rows = []
    for (structure, batch_size, steps), (_, validate) in calls.items():
        times = seconds[structure, batch_size, steps]
        validation, _, _ = timed(validate, rounds)
        rows.append({
            "structure": structure, "batch_size": batch_size, "steps_per_second": steps / statistics.median(times),
            "spread": [steps / max(times), steps / min(times)], "gflop_per_step": TRAIN_FLOPS_PER_IMAGE * batch_size / 1e9,
            "validation_seconds": validation,
        })
    pieces = {piece: steps_per_call / statistics.median(seconds[piece]) for piece in (PLAIN_UPDATE, PRODUCTS_ALONE)}
    return rows, pieces, ceilings


def measure(quick):
    results = {"machine": f"{platform.processor() or platform.machine()}, {tf.config.threading.get_intra_op_parallelism_threads() or 'default'} intra-op threads",
               "cpu_count": os.cpu_count(), "tensorflow": tf.__version__, "quick": quick,
               "ceiling_sizes": list(CEILING_SIZES)}
    dataset = random_dataset()
    results["training"], pieces, ceilings = training_results(
        dataset, rounds=2 if quick else 7, steps_per_call=20 if quick else 200)
    samples = 5000
    repeats = 2 if quick else 3
    rate, spread, one_off = evaluation_rate(5, 15 if quick else 205, samples, repeats)
    results["evaluation"] = {"importance_samples": samples, "repeats": repeats, "image_samples_per_second": rate,
                             "spread": spread, "one_off_seconds": one_off, "gflops": rate * DECODE_FLOPS / 1e9,
                             "test_set_minutes_at_k5000": (10000 * 5000 / rate + one_off) / 60}
    ceilings.append(matmul_ceiling())
    results["ceilings_gflops"] = ceilings
    ceiling = results["ceiling_gflops"] = max(ceilings)
    for row in results["training"]:
        row["gflops"] = row["steps_per_second"] * row["gflop_per_step"]
        row["fraction_of_ceiling"] = row["gflops"] / ceiling
    results["evaluation"]["fraction_of_ceiling"] = results["evaluation"]["gflops"] / ceiling
    adam = next(row for row in results["training"] if (row["structure"], row["batch_size"]) == ("none", 100))
    plain_update, products = pieces[PLAIN_UPDATE], pieces[PRODUCTS_ALONE]
    results["breakdown"] = {
        "plain_update": {"steps_per_second": plain_update, "fraction_of_ceiling": plain_update * adam["gflop_per_step"] / ceiling,
                         "adam_ms_per_step": 1000 / adam["steps_per_second"] - 1000 / plain_update},
        "products_alone": {"steps_per_second": products, "fraction_of_ceiling": products * adam["gflop_per_step"] / ceiling},
        **breakdown(repeats=2 if quick else 9),
    }
    results["compare_learning_minutes_extrapolated"] = compare_learning_minutes(
        *((20, 60) if quick else (200, 1000)), dataset)
    results["peak_resident_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return results


def print_table(results):
    print(f"TensorFlow {results['tensorflow']} on {results['machine']}, {results['cpu_count']} CPUs")
    ceilings = results["ceilings_gflops"]
    sizes = ", ".join(f"{size}x{size}" for size in results["ceiling_sizes"])
    print(f"float32 matmul ceiling (the fastest of {sizes}): {results['ceiling_gflops']:.1f} GFLOP/s, the highest "
          f"of {len(ceilings)} measurements spread over the run ({min(ceilings):.1f} the lowest)")
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
          f"image-samples/s (median of {evaluation['repeats']}, spread {evaluation['spread'][0]:,.0f}-"
          f"{evaluation['spread'][1]:,.0f}), {evaluation['gflops']:.1f} GFLOP/s, {evaluation['fraction_of_ceiling']:.0%} of ceiling, "
          f"plus {evaluation['one_off_seconds']:.1f} s once for tracing; "
          f"10,000 test images at K=5000: {evaluation['test_set_minutes_at_k5000']:.1f} min")
    print(f"compare_learning.py default run (6 x 5,000 steps, validation every 10), extrapolated from short and "
          f"long training runs: {results['compare_learning_minutes_extrapolated']:.1f} min")
    print(f"peak resident memory: {results['peak_resident_mib']:.0f} MiB")
    print_breakdown(results["breakdown"], results["ceiling_gflops"])


def print_breakdown(pieces, ceiling):
    plain = pieces["plain_update"]
    print()
    print("Where the time goes (medians):")
    print(f"- none, batch 100, a plain gradient step instead of Adam: {plain['steps_per_second']:.1f} steps/s, "
          f"{plain['fraction_of_ceiling']:.0%} of ceiling; Adam's update costs {plain['adam_ms_per_step']:.2f} ms a step")
    products = pieces["products_alone"]
    print(f"- batch 100, the step's matrix products alone (forward with ReLU, gradients, a plain update; no sampling, "
          f"loss or Adam): {products['steps_per_second']:.1f} steps/s, {products['fraction_of_ceiling']:.0%} of ceiling")
    chunk = pieces["evaluation_chunk_ms"]
    print("- one evaluation chunk (5 images x 5,000 samples, ReLU decoder), ms: "
          + ", ".join(f"{name} {ms:.1f}" for name, ms in chunk.items()))
    print("- samplers, ns per number: " + ", ".join(f"{name} {ns:.2f}" for name, ns in pieces["sampler_ns_per_number"].items()))
    print("- the five products of a forward pass, chained: " + ", ".join(
        f"{name} {gflops:.0f} GFLOP/s ({gflops / ceiling:.0%})" for name, gflops in pieces["product_chain_gflops"].items()))
