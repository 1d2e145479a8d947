"""bench.py --quick runs end to end and writes the table it prints as JSON."""

import json

from conftest import run_cli


def test_quick_benchmark_writes_its_table_as_json(tmp_path):
    path = tmp_path / "bench.json"
    finished = run_cli("--quick", "--json", path, program="bench.py", timeout=900)
    assert finished.returncode == 0, finished.stderr[-2000:]
    results = json.loads(path.read_text())

    # A step: forward and backward, 3 x 2 FLOPs per multiply-add of 784-500-(100, 100)-500-784.
    multiply_adds = 784 * 500 + 2 * 500 * 100 + 100 * 500 + 500 * 784
    rows = {(row["structure"], row["batch_size"]): row for row in results["training"]}
    assert set(rows) == {(structure, batch) for structure in ("none", "lwta", "p-lwta") for batch in (100, 1000)}
    ceiling = results["ceiling_gflops"]
    assert ceiling == max(results["ceilings_gflops"]) > 0
    assert results["ceiling_sizes"] == [1024, 1536, 2048]
    assert f"ceiling (the fastest of 1024x1024, 1536x1536, 2048x2048): {ceiling:.1f} GFLOP/s" in finished.stdout
    for (structure, batch), row in rows.items():
        assert row["gflop_per_step"] == 6 * multiply_adds * batch / 1e9
        slowest, fastest = row["spread"]
        assert 0 < slowest <= row["steps_per_second"] <= fastest
        assert row["fraction_of_ceiling"] == row["steps_per_second"] * row["gflop_per_step"] / ceiling
        assert f"| {structure} | {batch} | {row['steps_per_second']:.1f} |" in finished.stdout

    evaluation = results["evaluation"]
    slowest, fastest = evaluation["spread"]
    assert 0 < slowest <= evaluation["image_samples_per_second"] <= fastest
    # One importance sample decodes once: 100-500-784.
    assert evaluation["gflops"] == evaluation["image_samples_per_second"] * (2 * (100 * 500 + 500 * 784)) / 1e9
    assert evaluation["fraction_of_ceiling"] == evaluation["gflops"] / ceiling
    assert results["compare_learning_minutes_extrapolated"] > 0
    assert results["peak_resident_mib"] > 0

    breakdown = results["breakdown"]
    plain, adam = breakdown["plain_update"], rows["none", 100]
    assert plain["fraction_of_ceiling"] == plain["steps_per_second"] * adam["gflop_per_step"] / ceiling
    assert plain["adam_ms_per_step"] == 1000 / adam["steps_per_second"] - 1000 / plain["steps_per_second"]
    products = breakdown["products_alone"]
    assert products["fraction_of_ceiling"] == products["steps_per_second"] * adam["gflop_per_step"] / ceiling > 0
    assert f"products alone (forward with ReLU, gradients, a plain update; no sampling, loss or Adam): " \
           f"{products['steps_per_second']:.1f} steps/s" in finished.stdout
    pieces = breakdown["evaluation_chunk_ms"]
    assert set(pieces) == {"chunk", "noise", "z and log p(z) - log q(z|x)", "log p(x|z)",
                           "decoder products (bias and ReLU fused)"}
    assert all(ms > 0 for ms in pieces.values())
    assert pieces["noise"] < pieces["chunk"]  # 2.5 million normal draws against 22 GFLOP of products: ~10x apart
    assert len(breakdown["sampler_ns_per_number"]) == 4 and all(ns > 0 for ns in breakdown["sampler_ns_per_number"].values())
    assert set(breakdown["product_chain_gflops"]) == {f"{rows} rows, {kernels}" for rows in (100, 2500)
                                                      for kernels in ("XLA", "TensorFlow")}
    assert f"Adam's update costs {plain['adam_ms_per_step']:.2f} ms a step" in finished.stdout
