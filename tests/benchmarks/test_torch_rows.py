"""The PyTorch rows (1), (1c), (2b), (2c) on tiny shapes, the row choices, how the table merges
the rows' process settings and picks the fastest PyTorch row, and the results per CPU kind."""

import json

import numpy as np
import pytest

import benchmark
import harness as bench
from milpf_jax.synthetic.embeddings import synthetic_packed
from save_results import save_results

# 1,000 bags: 100 validation bags. 4 epochs: the warm-up and 3 timed.
TINY = bench.BenchConfig(n_bags=1000, dim=32, max_tiles=32, seeds=2, timed_epochs=3)


@pytest.fixture(scope="module")
def tiny():
    """The synthetic cohort with unit-variance embedding entries (x sqrt(D)), as an encoder's
    raw features, not L2-normed tiles: with L2-normed ones every bag's logit at init is the
    output bias plus ~1e-2, and bf16 autocast's rounding of the logits (~2e-3 relative) alone
    reorders a few close pairs (val AUCs 0.01-0.02 apart after 4 epochs); scaled, 0.002-0.006
    on cohort seeds 0-8."""
    import dataclasses

    packed = synthetic_packed(TINY.synthetic())
    scale = np.float32(np.sqrt(TINY.dim))
    return dataclasses.replace(packed, tiles=packed.tiles * scale, views=packed.views * scale)


def measure_row(packed, row, **kw):
    kind = bench.TORCH_ROWS[row]
    return bench.measure_torch(packed, TINY, autocast=kind["autocast"],
                               embeddings=kind["embeddings"], compile=kind["compile"], **kw)


@pytest.fixture(scope="module")
def row_1(tiny):
    pytest.importorskip("torch")
    return measure_row(tiny, "1")


def _max_rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def _max_abs(a, b) -> float:
    return float(np.max(np.abs(np.subtract(a, b))))


def test_row_2b_holds_bf16_embeddings_and_matches_row_1(tiny, row_1):
    torch = pytest.importorskip("torch")
    batch = bench.torch_batch(tiny.split("train"), dtype="bfloat16")
    assert batch["tiles"].dtype == batch["views"].dtype == torch.bfloat16
    assert batch["labels"].dtype == torch.float32 and batch["views_mask"].dtype == torch.bool
    r = measure_row(tiny, "2b")
    # 4 epochs (the warm-up and 3 timed) of both runs, as (1)'s.
    assert np.shape(r["loss"]) == np.shape(row_1["loss"]) == (4, 2)
    assert np.shape(r["val_auc"]) == (4, 2)
    assert _max_rel(r["loss"], row_1["loss"]) <= 1e-2
    assert _max_abs(r["val_auc"], row_1["val_auc"]) <= 0.01
    assert r["loss"] != row_1["loss"]  # bf16 did round: this is not the f32 loop again
    assert r["embeddings"] == "bfloat16" and r["autocast"] and not r["compiled"]
    assert r["threads"] >= 1 and r["seconds"] > 0


@pytest.mark.slow  # torch.compile (inductor) compiles C++: ~10-30 s per row on 2 cores
@pytest.mark.parametrize("row, loss_rtol", [("1c", 1e-5), ("2c", 1e-2)])
def test_compiled_rows_match_row_1(tiny, row_1, row, loss_rtol):
    r = measure_row(tiny, row)
    assert "skipped" not in r, r.get("skipped")
    assert r["compiled"] and r["compile_backend"] == "inductor"
    # One head class: both runs share the training and the validation graph, no eager
    # fallback past the recompile limit.
    assert r["compiled_graphs"] == 2 and not r["recompile_limit_hit"]
    assert _max_rel(r["loss"], row_1["loss"]) <= loss_rtol
    assert _max_abs(r["val_auc"], row_1["val_auc"]) <= (1e-6 if row == "1c" else 0.01)


def test_a_failing_compiler_skips_the_row_with_its_reason(tiny):
    pytest.importorskip("torch")

    def no_compiler(graph, example_inputs):
        raise RuntimeError("no C++ compiler found")

    r = measure_row(tiny, "2c", backend=no_compiler)
    assert set(r) >= {"skipped"} and "seconds" not in r
    assert "no C++ compiler found" in r["skipped"]


def test_rows_flag_takes_the_new_rows():
    assert benchmark.RowId.__args__ == bench.ROW_IDS
    assert set(bench.TORCH_ROWS) == {"1", "1c", "2", "2b", "2c"}
    parser = benchmark.build_parser()
    cfg = benchmark.config_from_args(parser.parse_args(["--rows", "1,1c,2,2b,2c,5"]), parser)
    assert cfg.rows == ("1", "1c", "2", "2b", "2c", "5")
    assert bench.BenchConfig().rows == bench.ROW_IDS
    with pytest.raises(SystemExit):
        parser.parse_args(["--rows", "1,2d"])


# -- the table from fabricated worker results -------------------------------------------------


def _timing(seconds, **kw):
    return dict(seconds=seconds, median_seconds=seconds, first_epoch_seconds=2 * seconds,
                threads=2, **kw)


def _roofline(tflops):
    return dict(tflops=tflops, seconds=1.0, shape=[32, 8, 100])


MACHINE = dict(model="Intel(R) Xeon(R) Processor", amx=True, logical_cores=2, usable_cores=2,
               flags=dict(amx_bf16=True, avx512_bf16=True, avx512f=True, avx2=True))


def fake_report():
    torch_facts = dict(device="cpu", device_name="cpu", threads=2, usable_cores=2)
    workers = dict(
        torch=dict(torch_facts, env=dict(GLIBC_TUNABLES=None), **{
            "1": _timing(10.0), "2": _timing(9.0), "2b": _timing(8.0)},
            roofline_bfloat16=_roofline(1.0), roofline_float32=_roofline(0.5)),
        torch_glibc=dict(torch_facts, env=dict(GLIBC_TUNABLES="x"), **{
            "1": _timing(11.0), "2": _timing(8.5), "2b": _timing(8.2)},
            roofline_bfloat16=_roofline(1.2), roofline_float32=_roofline(0.4)),
        # (1c) compiled in one setting only; (2c)'s compiler failed, its process crashed.
        torch_compiled={"1c": _timing(7.0, compile_seconds=20.0),
                        "2c": dict(skipped="torch.compile('inductor') failed: no compiler")},
        torch_compiled_glibc=dict(failed="worker torch-compiled-glibc exited with 1",
                                  log_tail="Segmentation fault"),
        jax={"5_float32": _timing(3.0, compile_seconds=2.0, val_auc=[[0.5]], loss=[[0.7]]),
             "5_bfloat16": _timing(2.5, compile_seconds=2.0, val_auc=[[0.5]], loss=[[0.7]]),
             "shipped_first_layer_dtype": "bfloat16", "platform": "cpu",
             "device_kind": "cpu", "device_count": 1,
             "roofline_float32": _roofline(0.3), "roofline_bfloat16": _roofline(0.9)},
    )
    cfg = bench.BenchConfig(n_bags=20, dim=8, seeds=2, rows=("1", "1c", "2", "2b", "2c", "5"))
    splits = {k: dict(bags=10, tiles=100, max_tiles=20, positives=3)
              for k in ("train", "val", "test")}
    report = dict(command="benchmark.py --test", date="2026-12-02T00:00:00+00:00",
                  config=cfg.__dict__ | {}, machine=MACHINE, load_average_before=(0.1, 0.2, 0.3),
                  load_average_after=(1.0, 1.1, 1.2), workers=workers,
                  shapes=dict(splits=splits), tricks={}, scaling_bags=[], errors=[])
    report.update(benchmark.summarise(report, cfg))
    return report


def test_torch_rows_take_the_faster_setting_and_the_fastest_row_sets_the_ratios():
    report = fake_report()
    rows = {r["row"]: r for r in report["rows"] if r["library"] == "torch"}
    assert set(rows) == {"1", "1c", "2", "2b"}
    assert (rows["1"]["seconds"], rows["1"]["env"]) == (10.0, "default")
    assert (rows["2"]["seconds"], rows["2"]["env"]) == (8.5, "glibc")
    assert rows["2"]["seconds_by_env"] == {"default": 9.0, "glibc": 8.5}
    assert rows["1c"]["seconds_by_env"] == {"default": 7.0}  # its glibc process crashed
    (skipped,) = report["skipped_rows"]
    assert skipped["row"] == "2c" and set(skipped["reasons"]) == {"default", "glibc"}
    assert "no compiler" in skipped["reasons"]["default"]
    assert "Segmentation fault" in skipped["reasons"]["glibc"]
    assert report["fastest_torch"]["row"] == "1c" and report["fastest_torch_f32"]["row"] == "1c"
    ours = {r["first_layer_dtype"]: r for r in report["rows"] if r["row"] == "5"}
    assert ours["bfloat16"]["speedup_vs_fastest_torch"] == pytest.approx(7.0 / 2.5)
    assert ours["float32"]["speedup_vs_fastest_torch_f32"] == pytest.approx(7.0 / 3.0)
    assert ours["float32"]["speedup_vs_1"] == pytest.approx(10.0 / 3.0)
    t = report["targets"]
    assert t["bf16_vs_fastest_torch"] == dict(goal=3.0, got=pytest.approx(2.8), met=False,
                                              against="1c")
    assert t["f32_vs_fastest_torch_f32"]["met"] is True
    # Rooflines: the faster setting of each dtype, both recorded.
    torch_bf16 = next(x for x in report["rooflines"]
                      if (x["library"], x["dtype"]) == ("torch", "bfloat16"))
    assert torch_bf16["tflops"] == 1.2
    assert report["roofline_tflops"]["best_float32"] == 0.5


def test_markdown_names_the_fastest_row_and_the_skipped_one():
    md = benchmark.format_tables(fake_report())
    assert "| vs (1) | vs fastest torch | vs fastest torch f32 |" in md
    assert "Fastest PyTorch row: (1c) PyTorch, (1) under torch.compile, float32, 7 s" in md
    assert "| (2c) | PyTorch, (2b) under torch.compile | bfloat16 | skipped: default: " in md
    assert "| (2) | PyTorch, same loop, bf16 autocast, f32 embeddings [GLIBC_TUNABLES] |" in md
    assert "| (2) s / epoch | 9 | 8.5 | glibc |" in md
    assert "| (1c) s / epoch | 7 | - | default |" in md
    assert "torch.get_num_threads() = 2 of 2 usable cores" in md
    assert "bf16_vs_fastest_torch >= 3.0: 2.8 (NOT met, vs (1c))" in md


# -- results per CPU kind ---------------------------------------------------------------------


def test_cpu_kind_is_vendor_family_and_bf16_feature():
    assert bench.cpu_kind(MACHINE) == "intel-xeon-amx"
    assert bench.cpu_kind(dict(model="AMD EPYC 9R14 96-Core Processor", amx=False,
                               flags=dict(avx512_bf16=True))) == "amd-epyc-avx512-bf16"
    assert bench.cpu_kind(dict(model="Intel(R) Xeon(R) Platinum 8480+", amx=True,
                               flags=dict(amx_bf16=True))) == "intel-xeon-amx"
    assert bench.cpu_kind(dict(model="AMD EPYC 7B12", amx=False,
                               flags=dict(avx2=True))) == "amd-epyc-avx2"
    assert bench.cpu_kind(dict(model="Intel(R) Xeon(R) CPU", amx=None,
                               flags=None)) == "intel-xeon"
    assert bench.cpu_kind(bench.cpu_info()) == bench.cpu_kind(bench.cpu_info())


def test_save_results_copies_a_run_under_its_cpu_kind(tmp_path):
    report = fake_report()
    run = tmp_path / "run"
    run.mkdir()
    (run / "benchmark.json").write_text(json.dumps(report, default=str))
    (run / "benchmark.md").write_text(benchmark.format_tables(report))
    json_path, md_path = save_results(run, tmp_path / "results")
    assert json_path.name == "intel-xeon-amx.json" and md_path.name == "intel-xeon-amx.md"
    saved = json.loads(json_path.read_text())
    assert saved["cpu_kind"] == "intel-xeon-amx"
    assert saved["machine_line"].startswith("Machine: Intel(R) Xeon(R) Processor, 2 usable")
    assert saved["rows"] == json.loads(json.dumps(report["rows"]))
    md = md_path.read_text()
    assert md.startswith("CPU kind: `intel-xeon-amx`") and saved["machine_line"] in md
    # The measuring machine's own folders are not committed.
    report.update(command="python benchmarks/benchmark.py --rows 1,5 --out /scratch/me/b1",
                  worker_env={"TORCHINDUCTOR_CACHE_DIR": "/scratch/me/tmp-x/inductor"})
    (run / "benchmark.json").write_text(json.dumps(report, default=str))
    (run / "benchmark.md").write_text("`python benchmarks/benchmark.py --out /scratch/me/b1`\n")
    json_path, md_path = save_results(run, tmp_path / "results")
    saved = json.loads(json_path.read_text())
    assert saved["command"].endswith("--rows 1,5 --out OUT")
    assert saved["worker_env"] == {"TORCHINDUCTOR_CACHE_DIR": "TEMPORARY"}
    assert "/scratch" not in json_path.read_text() + md_path.read_text()


def test_committed_results_have_the_machine_line_rooflines_and_the_step_share():
    """benchmarks/results/<kind>.json and .md: a real run each, kind from its machine block."""
    found = sorted(benchmark.Path(benchmark.__file__).parent.glob("results/*.json"))
    if not found:
        pytest.skip("no committed results")
    for path in found:
        saved = json.loads(path.read_text())
        assert path.stem == saved["cpu_kind"] == bench.cpu_kind(saved["machine"])
        assert {(x["library"], x["dtype"]) for x in saved["rooflines"]} == {
            ("jax", "float32"), ("jax", "bfloat16"), ("torch", "float32"),
            ("torch", "bfloat16")}
        assert "first_layer_gemms" in saved["profile"]["fractions"]
        md = path.with_suffix(".md").read_text()
        assert saved["machine_line"] in md and "| (6) | roofline" in md
        assert "first_layer_gemms" in md and "Fastest PyTorch row:" in md
