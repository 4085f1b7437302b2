import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import harness as bench
from milpf_jax.data.packed import load_packed, open_packed, save_packed
from milpf_jax.runtime import GLIBC_TUNABLES, XLA_CPU_FLAGS, default_first_layer_dtype
from milpf_jax.synthetic.embeddings import SyntheticConfig, synthetic_packed, write_synthetic_store

REPO = Path(__file__).resolve().parents[2]


# -- the whole benchmark, CI-sized, once -------------------------------------------------------


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "benchmark.py"), "--quick",
                        "--out", str(out)], capture_output=True, text=True, timeout=900,
                       cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads((out / "benchmark.json").read_text()), out, r.stdout


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow  # the whole --quick benchmark, in a subprocess (about two minutes)
def test_quick_has_every_row_with_positive_seconds(quick):
    report, _, _ = quick
    rows = report["rows"]
    assert {(r["row"], r["first_layer_dtype"]) for r in rows} == {
        ("1", "float32"), ("1c", "float32"), ("2", "bfloat16"), ("2b", "bfloat16"),
        ("2c", "bfloat16"), ("3", "float32"), ("4", "float32"), ("5", "float32"),
        ("5", "bfloat16")}, report["skipped_rows"]
    for r in rows:
        assert _positive(r["seconds"]) and _positive(r["first_epoch_seconds"]), r
        assert _positive(r["speedup_vs_1"]) and _positive(r["speedup_vs_2"]), r
        assert _positive(r["speedup_vs_fastest_torch"]), r
        assert _positive(r["speedup_vs_fastest_torch_f32"]), r
        assert _positive(r["roofline_fraction"]), r
    # Every PyTorch row ran with and without GLIBC_TUNABLES; the table has the faster.
    torch_rows = [r for r in rows if r["library"] == "torch"]
    for r in torch_rows:
        assert set(r["seconds_by_env"]) == {"default", "glibc"}, r
        assert r["seconds"] == min(r["seconds_by_env"].values())
        assert r["threads"] == report["machine"]["usable_cores"]
    fastest = min(torch_rows, key=lambda r: r["seconds"])
    assert report["fastest_torch"]["row"] == fastest["row"]
    assert report["fastest_torch_f32"]["first_layer_dtype"] == "float32"
    assert fastest["speedup_vs_fastest_torch"] == pytest.approx(1.0)
    assert set(report["targets"]) >= {"bf16_vs_fastest_torch", "f32_vs_fastest_torch_f32"}
    assert report["skipped_rows"] == []
    w = report["workers"]
    assert w["torch"]["env"]["GLIBC_TUNABLES"] is None
    assert w["torch_glibc"]["env"]["GLIBC_TUNABLES"] == GLIBC_TUNABLES
    for key in ("torch_compiled", "torch_compiled_glibc"):
        for row in ("1c", "2c"):  # one head class: every run shares the two graphs
            assert w[key][row]["compiled_graphs"] == 2 and not w[key][row]["recompile_limit_hit"]
    # Exactly one (5) row is the shipped default, and it names the library's default dtype.
    shipped = [r for r in rows if r["shipped_default"]]
    assert len(shipped) == 1 and shipped[0]["row"] == "5"
    assert shipped[0]["first_layer_dtype"] == report["shipped_first_layer_dtype"] \
        == default_first_layer_dtype()
    # XLA's temp buffer of the compiled step: at least the first layer's f32 output, [R, 16, N].
    n_tiles = report["shapes"]["splits"]["train"]["tiles"]
    assert shipped[0]["step_temp_bytes"] >= 4 * 16 * 4 * n_tiles
    one = next(r for r in rows if r["row"] == "1")
    assert one["speedup_vs_1"] == pytest.approx(1.0)
    assert {(x["library"], x["dtype"]) for x in report["rooflines"]} == {
        ("jax", "float32"), ("jax", "bfloat16"), ("torch", "float32"), ("torch", "bfloat16")}
    assert all(_positive(x["tflops"]) for x in report["rooflines"])
    assert report["errors"] == []


@pytest.mark.slow  # the whole --quick benchmark, in a subprocess (about two minutes)
def test_quick_ours_matches_sequential_jax_and_sharded_runs(quick):
    report, _, _ = quick
    a = report["agreement"]
    assert a["epochs_compared"] == report["config"]["timed_epochs"] + 1
    assert a["f32_5_vs_3_max_abs_val_auc_diff"] <= 1e-3
    assert a["f32_5_vs_3_within_1e_3"] is True
    # A bf16 first layer moves validation AUCs a little, never a whole ranking.
    assert 0.0 <= a["bf16_vs_f32_max_abs_val_auc_diff"] <= 0.1
    s = a["sharded_vs_one_device"]
    assert s["devices"] == 4 and s["output_devices"] == 4
    # The first epoch starts from equal parameters: only GEMM blocking may differ.
    assert s["max_abs_val_auc_diff"] <= 1e-3 and s["first_epoch_max_rel_loss_diff"] <= 1e-5
    # Adam can flip a step of a near-zero gradient (~lr = 2e-3 per epoch); never more.
    assert s["max_abs_param_diff"] <= 2e-3 * a["epochs_compared"]


@pytest.mark.slow  # the whole --quick benchmark, in a subprocess (about two minutes)
def test_quick_machine_block_reports_real_cpu_flags(quick):
    report, _, _ = quick
    m = report["machine"]
    assert m["logical_cores"] == os.cpu_count() and m["usable_cores"] >= 1
    flags_line = next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                       if line.startswith("flags")), None) if Path("/proc/cpuinfo").exists() \
        else None
    if flags_line is not None:
        flags = set(flags_line.split(":", 1)[1].split())
        assert m["amx"] == any(f.startswith("amx") for f in flags)
        assert m["flags"]["avx512_bf16"] == ("avx512_bf16" in flags)
    d = report["device"]
    assert d["jax_platform"] == "cpu" and d["jax_device_kind"] and d["torch_device"] == "cpu"
    assert report["workers"]["torch"]["jax_loaded"] is False
    assert report["versions"]["jax"] and report["versions"]["torch"]


@pytest.mark.slow  # the whole --quick benchmark, in a subprocess (about two minutes)
def test_quick_tables_tricks_scaling_and_markdown(quick):
    report, out, stdout = quick
    variants = {t["variant"] for t in report["tricks_table"]}
    assert variants == {"none", "both (main run)"}
    none = next(t for t in report["tricks_table"] if t["variant"] == "none")
    both = next(t for t in report["tricks_table"] if t["variant"] == "both (main run)")
    assert none["env"]["GLIBC_TUNABLES"] is None
    assert not set((none["env"]["XLA_FLAGS"] or "").split()) & set(XLA_CPU_FLAGS)
    assert both["env"]["GLIBC_TUNABLES"] == GLIBC_TUNABLES
    assert set(report["tricks_env"]["xla_flags_accepted"]) <= set(both["env"]["XLA_FLAGS"].split())
    assert _positive(none["float32"]) and _positive(both["bfloat16"])
    assert [r["runs"] for r in report["scaling_seeds_table"]] == [4]
    bags = report["scaling_bags_table"]
    assert [r["bags"] for r in bags] == [200] and _positive(bags[0]["max_rss_process"])
    # The bags worker makes its cohort in memory: same bags as the store, so same tiles.
    assert bags[0]["train_tiles"] == report["shapes"]["splits"]["train"]["tiles"]
    assert report["flop_count"]["first_layer_per_epoch"] == bench.first_layer_flops(
        4, 16, 64, report["shapes"]["splits"]["train"]["tiles"])
    # The step's code variants: quick runs the first (autodiff, packed tiles) only.
    (variant,) = report["step_variants"]
    assert variant["hand"] is False and variant["block"] == 1
    assert _positive(variant["row"]["seconds"]) and variant["row"]["data_dtype"] == "float32"
    assert variant["row"]["train_slots"] == report["shapes"]["splits"]["train"]["tiles"]
    md = (out / "benchmark.md").read_text()
    assert "| (5) | ours" in md and "roofline" in md and md in stdout
    assert "Fastest PyTorch row: (" in md and "| vs fastest torch | vs fastest torch f32 |" in md
    assert "| (2c) s / epoch |" in md  # the with/without GLIBC_TUNABLES table
    assert f"| {variant['variant']} |" in md


# -- the pieces -------------------------------------------------------------------------------


def test_cpu_info_reads_model_flags_and_amx():
    text = ("processor : 0\nmodel name : Test CPU 9000\n"
            "flags : fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    info = bench.cpu_info(text)
    assert info["model"] == "Test CPU 9000" and info["amx"] is True
    assert info["flags"]["amx_bf16"] and info["flags"]["avx512_bf16"]
    assert not info["flags"]["avx512_vnni"]
    no_amx = bench.cpu_info("model name : X\nflags : avx2 avx512_bf16\n")
    assert no_amx["amx"] is False and no_amx["flags"]["avx512_bf16"] is True
    assert bench.cpu_info("")["flags"] is None


def test_first_layer_flops_counts_two_gemms():
    # forward [36*16, 1152] x [1152, 1000] and the weight gradient: 2 x 2*M*K*N
    assert bench.first_layer_flops(36, 16, 1152, 1000) == 2 * 2 * 576 * 1152 * 1000


def test_bench_config_refuses_bad_settings():
    with pytest.raises(ValueError, match="rows"):
        bench.BenchConfig(rows=("1", "7"))
    with pytest.raises(ValueError, match="rows"):
        bench.BenchConfig(rows=("1d",))
    with pytest.raises(ValueError, match="data_dtype"):
        bench.BenchConfig(data_dtype="float16")
    assert bench.SCALES["embed"].n_bags == 50_000 and bench.SCALES["embed"].in_memory


def test_synthetic_packed_equals_the_store_loaded(tmp_path):
    cfg = SyntheticConfig(n_bags=30, dim=8, max_tiles=6, seed=3)
    write_synthetic_store(tmp_path / "s.zarr", cfg)
    want = load_packed(tmp_path / "s.zarr", split_seed=2)
    got = synthetic_packed(cfg, split_seed=2)
    for name in ("tiles", "tile_bag", "tile_view", "tile_boxes", "views", "views_mask",
                 "labels", "splits"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    for name in ("bag_ids", "patient_ids", "raw_labels"):
        assert getattr(got, name).astype(str).tolist() == getattr(want, name).astype(str).tolist()
    assert got.tiles.dtype == np.float32 and len(got.tiles) > 30


def test_block_seeded_cohort_is_drawn_in_parallel_and_equals_its_serial_draw(tmp_path):
    """--scale embed draws its 50,000 bags in blocks of 1,000 on every core: the same bags as
    drawing the blocks one after another, and each block as drawing it alone."""
    from milpf_jax.synthetic.embeddings import synthetic_bags

    cfg = SyntheticConfig(n_bags=35, dim=8, max_tiles=6, seed=3, block_bags=10)
    serial = list(synthetic_bags(cfg))
    alone = list(synthetic_bags(cfg, 20, 30))
    for (_, v, t), (_, v2, t2) in zip(serial[20:30], alone, strict=True):
        np.testing.assert_array_equal(t, t2)
        np.testing.assert_array_equal(v, v2)
    got = synthetic_packed(cfg)
    np.testing.assert_array_equal(
        got.tiles, np.concatenate([t for _, _, t in serial]).astype(np.float16).astype(np.float32))
    assert got.bag_ids.tolist() == [p.bag_id for p, _, _ in serial]
    # Blocks have their own streams: bag 10 differs from the one-stream cohort's bag 10.
    one_stream = list(synthetic_bags(SyntheticConfig(n_bags=35, dim=8, max_tiles=6, seed=3)))
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(serial[:10], one_stream[:10]))
    assert not np.array_equal(serial[10][1], one_stream[10][1])
    with pytest.raises(ValueError, match="begin a block"):
        next(synthetic_bags(cfg, 5))
    assert bench.SCALES["embed"].synthetic().block_bags == 1000


def test_save_and_open_packed_keep_bfloat16_bits(tmp_path):
    packed = synthetic_packed(SyntheticConfig(n_bags=12, dim=8, max_tiles=4),
                                    dtype="bfloat16")
    assert packed.tiles.dtype.name == "bfloat16"
    back = open_packed(save_packed(packed, tmp_path / "p"))
    assert back.tiles.dtype.name == "bfloat16"
    np.testing.assert_array_equal(back.tiles.view(np.uint16), packed.tiles.view(np.uint16))
    np.testing.assert_array_equal(back.splits, packed.splits)
    assert back.bag_ids.tolist() == packed.bag_ids.tolist()
    with pytest.raises(FileNotFoundError, match="save_packed"):
        open_packed(tmp_path / "nothing")


def _tiny_packed():
    """Three bags with 2, 0 and 3 tiles; the second bag has one view only."""
    rng = np.random.default_rng(0)
    d = 6
    packed = synthetic_packed(SyntheticConfig(n_bags=3, dim=d, max_tiles=1))
    tile_bag = np.array([0, 0, 2, 2, 2], np.int32)
    views_mask = np.array([[True, True], [True, False], [True, True]])
    import dataclasses

    return dataclasses.replace(
        packed, tiles=rng.standard_normal((5, d)).astype(np.float32), tile_bag=tile_bag,
        views=rng.standard_normal((3, 2, d)).astype(np.float32), views_mask=views_mask)


def test_pad_bags_places_each_tile_in_its_bag():
    packed = _tiny_packed()
    padded = bench.pad_bags(packed, weights=np.array([1, 2, 3]))
    assert padded.tiles.shape == (3, 3, 6)
    np.testing.assert_array_equal(padded.tiles_mask, [[1, 1, 0], [0, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(padded.tiles[0, :2], packed.tiles[:2])
    np.testing.assert_array_equal(padded.tiles[2], packed.tiles[2:])
    assert not padded.tiles[1].any() and padded.weights.tolist() == [1, 2, 3]


def test_padded_jax_head_equals_the_original_style_torch_head():
    torch = pytest.importorskip("torch")
    import jax

    packed = _tiny_packed()
    params = bench.padded_init(jax.random.key(1), dim=6)
    logits = np.asarray(bench.padded_logits(params, bench.pad_bags(packed)))

    model = bench.torch_head(6)
    names = dict(global_proj=model.global_proj, local_proj=model.local_proj)
    with torch.no_grad():
        for stream, seq in names.items():
            for i, layer in (("0", seq[0]), ("1", seq[2])):
                layer.weight.copy_(torch.tensor(np.asarray(params[stream][i]["kernel"]).T))
                layer.bias.copy_(torch.tensor(np.asarray(params[stream][i]["bias"])))
        for name in ("k", "v"):
            getattr(model, name).weight.copy_(
                torch.tensor(np.asarray(params["local_attn"][name]["kernel"]).T))
            getattr(model, name).bias.copy_(
                torch.tensor(np.asarray(params["local_attn"][name]["bias"])))
        model.latent.copy_(torch.tensor(np.asarray(params["local_attn"]["latent"]))[None])
        model.linear_out.weight.copy_(torch.tensor(np.asarray(params["linear_out"]["kernel"]).T))
        model.linear_out.bias.copy_(torch.tensor(np.asarray(params["linear_out"]["bias"])))
    b = bench.torch_batch(packed)
    want = model(b["views"], b["views_mask"], b["tiles"], b["tile_bag"], b["n_bags"])
    np.testing.assert_allclose(logits, want.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(logits))  # the empty bag too
