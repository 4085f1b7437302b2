"""Benchmark: the vmapped packed trainer against the original PyTorch loop, the
matmul rooflines, the process-level tricks, scaling over runs and bags, runs sharded over
devices.

    python benchmarks/benchmark.py                  # the 2-core CPU setting (~25 min)
    python benchmarks/benchmark.py --quick          # CI-sized shapes, about a minute
    python benchmarks/benchmark.py --scale embed    # GPU: 50,000 bags, the full 36-run sweep

Reference (2026-11-26, 2-core AMD EPYC with avx512_bf16 and no AMX, a shared machine, so
+-10% between runs; the full default run, 19 min): seconds per 36-run epoch, 1,400 training
bags, 175,883 training tiles, D=1152: (1) 10.1, (2) 9.8, (3) 10.4, (4) 7.6, (5) f32 3.9 (2.6x
(1)), (5) bf16 first layer 2.19 (4.6x (1), 4.5x (2)); rooflines, TFLOP/s: JAX f32 0.19, bf16
0.36, PyTorch bf16 0.36. The step's code tricks, bf16: autodiff on packed tiles 3.06,
hand-written VJP 2.63, + 16-tile blocks 2.89, + bf16 embeddings 2.69, + chunked backward 2.12,
+ chunked forward 2.25. Peak RSS of (5) in bf16: 8.4 GiB at 4,000 bags, 16.7 GiB at 8,000.

One synthetic cohort is made in the run (default: 2,000 bags through a zarr store, 0-256 tiles
per bag, D=1152, two views; `--scale embed` packs 50,000 bags in memory instead, as the GPU
machine lacks zarr). Each measurement runs in its own process, PyTorch and JAX back to back,
never together: on 2 cores both spin threads. Rows, per epoch of all runs (full-batch forward +
backward + Adam + validation AUC), compile time apart:

  (1) PyTorch, the original loop: one run after another, ragged tiles, scatter softmax, f32
  (1c) (1) under torch.compile (inductor)
  (2) the same under torch.autocast bfloat16, embeddings held in f32
  (2b) (2) with the embeddings (tiles and views) held in bf16 on the device
  (2c) (2b) under torch.compile (inductor); a compiled row whose compiler fails is skipped
  (3) JAX, one run's jitted epoch_step in a Python loop over runs
  (4) JAX, vmap over runs on padded [B, Tmax, D] tensors
  (5) ours: epoch_step vmapped over runs on packed tiles (f32 and bf16 first layer)
  (6) rooflines: a [R*16, D] x [D, N] matmul in JAX (f32, bf16) and PyTorch (bf16, f32)

Each PyTorch row runs in a process without and in one with the JAX rows' GLIBC_TUNABLES, with
torch.get_num_threads() = the usable cores; the table shows the faster and records both. Targets:
(5) with a bf16 first layer >= 3x the fastest PyTorch row, (5) f32 >= 2x the fastest float32
PyTorch row. `benchmarks/save_results.py OUT` copies a run into benchmarks/results/<cpu kind>.

Writes OUT/benchmark.json (machine, versions, shapes, every number) and OUT/benchmark.md (the
tables), and prints the tables. Worker logs go to OUT/logs/.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

import numpy as np

import harness as bench
from milpf_jax.cli import add_config_flags, command_line, run
from milpf_jax.cli import config_from_args as cli_config_from_args
from milpf_jax.config import option
from milpf_jax.data.labels import class_weights
from milpf_jax.data.packed import open_packed, save_packed
from milpf_jax.files import write_text
from milpf_jax.runtime import GLIBC_TUNABLES, XLA_CPU_FLAGS
from milpf_jax.synthetic.embeddings import synthetic_packed

# Process-level settings measured on (5), the ones the entry points set (milpf_jax.runtime):
# glibc reads GLIBC_TUNABLES only at process start (one arena, no trimming or mmap, keeps the
# memory XLA frees and re-allocates each call mapped instead of page-faulting it in again); the
# XLA flags must precede jax's import, and XLA aborts on an unknown one, so each is probed.
TRICKS = {"both": ("glibc", "xla"), "glibc": ("glibc",), "xla": ("xla",), "none": ()}
# The roofline matmul's N is capped: the rate saturates long before, and at --scale embed a
# [D, N] f32 copy of every training tile would not share the GPU with the data.
ROOFLINE_MAX_COLUMNS = 1 << 20
WORKER_TIMEOUT_S = 3600


# -- the workers (each in a fresh process) ----------------------------------------------------


def _load_data(spec: dict, cfg: bench.BenchConfig):
    path = spec["data"]
    if spec.get("n_bags_in_process"):  # bags scaling: the cohort is made in the worker
        return synthetic_packed(cfg.synthetic(spec["n_bags_in_process"]),
                                      dtype=cfg.data_dtype)
    if path.endswith(".zarr"):
        from milpf_jax.data.packed import load_packed

        return load_packed(path, split_seed=0)
    return open_packed(path)


def worker_torch(spec: dict, cfg: bench.BenchConfig) -> dict:
    """The PyTorch rows spec["torch_rows"] (bench.TORCH_ROWS) and, unless spec["rooflines"] is
    False, PyTorch's rooflines, under this process's GLIBC_TUNABLES (set or not), with as many
    threads as the process may use cores. A compiled row whose compiler fails is recorded as
    {"skipped": reason}."""
    import torch

    usable = bench.cpu_info()["usable_cores"]
    torch.set_num_threads(usable)
    packed = _load_data(spec, cfg)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = dict(device=device, device_name=torch.cuda.get_device_name() if device == "cuda"
               else "cpu", threads=torch.get_num_threads(), usable_cores=usable,
               cuda_matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
               env={k: os.environ.get(k) for k in ("GLIBC_TUNABLES", "TORCHINDUCTOR_CACHE_DIR")})
    for row in spec.get("torch_rows", ()):
        kind = bench.TORCH_ROWS[row]
        out[row] = bench.measure_torch(packed, cfg, device=device, autocast=kind["autocast"],
                                       embeddings=kind["embeddings"], compile=kind["compile"])
        if "skipped" in out[row]:
            print(f"row ({row}) skipped: {out[row]['skipped']}", flush=True)
    if spec.get("rooflines", True):
        n = min(bench.split_shapes(packed)["train"]["tiles"], ROOFLINE_MAX_COLUMNS)
        for dtype in ("bfloat16", "float32"):
            out[f"roofline_{dtype}"] = bench.measure_matmul_torch(cfg.seeds * bench.HIDDEN,
                                                                  packed.dim, n, dtype,
                                                                  device=device)
    out["jax_loaded"] = "jax" in sys.modules  # must stay False: one library per process
    return out


def _jax_context() -> dict:
    import jax

    d = jax.devices()[0]
    # On GPUs XLA's default precision runs f32 dots as TF32: "f32" rows there are TF32.
    return dict(platform=d.platform, device_kind=d.device_kind, device_count=jax.device_count(),
                default_matmul_precision=str(jax.config.jax_default_matmul_precision),
                env={k: os.environ.get(k) for k in ("XLA_FLAGS", "GLIBC_TUNABLES")})


def _shipped_dtype() -> str:
    """The first-layer dtype the sweep ships by default on this machine (its "auto")."""
    from milpf_jax.runtime import default_first_layer_dtype

    return default_first_layer_dtype()


def _train_config(cfg: bench.BenchConfig, first_layer_dtype: str, impl=None, **kw):
    from milpf_jax.learning import train as T
    from milpf_jax.learning.head import HeadConfig, HeadImpl

    head = HeadConfig(dim=cfg.dim, first_layer_dtype=first_layer_dtype, impl=impl or HeadImpl())
    return T.TrainConfig(head=head, **kw)


def _train_data(packed, cfg: bench.BenchConfig, train_cfg):
    """What the library feeds its trainer; embeddings in bf16 only where the scale says so."""
    import jax.numpy as jnp

    from milpf_jax.learning import train as T

    if cfg.data_dtype == "bfloat16":
        return T.make_train_data(packed, train_cfg, dtype=jnp.bfloat16)
    return T.make_train_data(packed, train_cfg)


def _data_dtype(data) -> str:
    import jax

    biggest = max(jax.tree_util.tree_leaves(data.train), key=lambda a: a.size)
    return str(biggest.dtype)


def _devices_for_runs(runs: int):
    """All devices when there are several and they split the runs evenly, else None."""
    import jax

    devices = jax.devices()
    return devices if len(devices) > 1 and runs % len(devices) == 0 else None


def _vmapped_row(packed, cfg, dtype, keys, hp, epochs, devices=None, *, keep=False):
    """Row (5) in one first-layer dtype; with keep, also the data and final state."""
    tcfg = _train_config(cfg, dtype)
    data = _train_data(packed, cfg, tcfg)
    r = bench.measure_vmapped(data, tcfg, keys, hp, epochs, devices=devices)
    state = r.pop("state")
    row = dict(r, data_dtype=_data_dtype(data), first_layer_dtype=dtype,
               devices=1 if devices is None else len(devices))
    return (row, tcfg, data, state) if keep else row


def worker_jax(spec: dict, cfg: bench.BenchConfig) -> dict:
    """Row (5) in f32 and bf16 first layer, a profile of the shipped one, the JAX rooflines."""
    import gc

    packed = _load_data(spec, cfg)
    shipped = _shipped_dtype()
    keys, hp = bench.run_grid(cfg.seeds, cfg)
    out = dict(_jax_context(), shipped_first_layer_dtype=shipped)
    devices = _devices_for_runs(cfg.seeds)
    if "5" in cfg.rows:
        for dtype in ("float32", "bfloat16"):
            row, tcfg, data, state = _vmapped_row(packed, cfg, dtype, keys, hp,
                                                  cfg.timed_epochs, devices, keep=True)
            out[f"5_{dtype}"] = row
            if dtype == shipped:
                out["profile"] = _profile(data, tcfg, state, row["seconds"])
            del data, state
            gc.collect()  # on 24 GiB, the next row's arrays must not meet this row's
    n = min(bench.split_shapes(packed)["train"]["tiles"], ROOFLINE_MAX_COLUMNS)
    for dtype in ("float32", "bfloat16"):
        out[f"roofline_{dtype}"] = bench.measure_matmul_jax(cfg.seeds * bench.HIDDEN, cfg.dim,
                                                            n, dtype)
    return out


def worker_baselines(spec: dict, cfg: bench.BenchConfig) -> dict:
    """Rows (3) and (4) (spec["only_row"]: one of them), in a process of their own: with
    GLIBC_TUNABLES the heap never shrinks, so one process for every row would hold the sum of
    their peaks."""
    import gc

    packed = _load_data(spec, cfg)
    keys, hp = bench.run_grid(cfg.seeds, cfg)
    out = _jax_context()
    rows = [spec["only_row"]] if spec.get("only_row") else cfg.rows
    if "3" in rows:
        tcfg = _train_config(cfg, "float32")
        data = _train_data(packed, cfg, tcfg)
        out["3_float32"] = dict(bench.measure_sequential(data, tcfg, keys, hp, cfg.timed_epochs),
                                data_dtype=_data_dtype(data), first_layer_dtype="float32")
        del data
        gc.collect()
    if "4" in rows:
        tr, va = packed.split("train"), packed.split("val")
        train = bench.pad_bags(tr, weights=class_weights(tr.labels), dtype=cfg.data_dtype)
        val = bench.pad_bags(va, dtype=cfg.data_dtype)
        out["4_float32"] = dict(
            bench.measure_padded(train, val, cfg.dim, keys, hp, cfg.timed_epochs),
            padded_tiles=int(train.tiles_mask.size), first_layer_dtype="float32")
    return out


def _profile(data, tcfg, state, step_seconds: float) -> dict:
    """Pieces of (5)'s step timed alone (see bench.profile_step); the caller estimates the
    first-layer GEMMs from the roofline matmul."""
    try:
        parts = bench.profile_step(data, tcfg, state)
    # The trainer's internals may have moved on (AttributeError, TypeError), or the pieces may
    # not fit beside the data (XLA's out-of-memory is a RuntimeError): record, don't abort.
    except (AttributeError, TypeError, RuntimeError) as err:
        return dict(error=f"profile unavailable: {type(err).__name__}: {err}")
    return dict(parts, step=step_seconds, first_layer_dtype=tcfg.head.first_layer_dtype)


def worker_tricks(spec: dict, cfg: bench.BenchConfig) -> dict:
    """(5) in f32 and bf16 under this process's GLIBC_TUNABLES / XLA_FLAGS."""
    packed = _load_data(spec, cfg)
    keys, hp = bench.run_grid(cfg.seeds, cfg)
    out = _jax_context()
    for dtype in ("float32", "bfloat16"):
        out[dtype] = _vmapped_row(packed, cfg, dtype, keys, hp, cfg.timed_epochs)
    return out


def worker_step(spec: dict, cfg: bench.BenchConfig) -> dict:
    """(5) in the shipped first-layer dtype with the step's code tricks of one variant
    (bench.STEP_VARIANTS) switched on or off."""
    import jax.numpy as jnp

    from milpf_jax.learning import train as T

    variant = bench.STEP_VARIANTS[spec["variant"]]
    packed = _load_data(spec, cfg)
    keys, hp = bench.run_grid(cfg.seeds, cfg)
    dtype = _shipped_dtype()
    impl = bench.step_impl(variant)
    tcfg = _train_config(cfg, dtype, impl=impl)
    data_dtype = {"float32": jnp.float32, None: None}[variant["data"]]
    data = T.make_train_data(packed, tcfg, dtype=data_dtype)
    r = bench.measure_vmapped(data, tcfg, keys, hp, cfg.timed_epochs)
    r.pop("state")
    return dict(_jax_context(), variant=spec["variant"], **variant,
                row=dict(r, data_dtype=_data_dtype(data), first_layer_dtype=dtype,
                         train_slots=int(data.train.tiles.shape[0]),
                         chunk_tiles=impl.backward_chunk_tiles))


def worker_seeds(spec: dict, cfg: bench.BenchConfig) -> dict:
    packed = _load_data(spec, cfg)
    dtype = _shipped_dtype()
    rows = []
    for seeds in cfg.scaling_seeds:
        keys, hp = bench.run_grid(seeds, cfg)
        r = _vmapped_row(packed, cfg, dtype, keys, hp, cfg.timed_epochs)
        rows.append(dict(runs=seeds, **{k: r[k] for k in (
            "seconds", "compile_seconds", "first_layer_dtype", "data_dtype")}))
    return dict(_jax_context(), rows=rows)


def worker_bags(spec: dict, cfg: bench.BenchConfig) -> dict:
    """(5) on a cohort of spec["n_bags_in_process"] bags made here, with the peak memory of
    training (VmHWM reset after the data is ready) and of the whole process."""
    import gc

    import jax

    packed = _load_data(spec, cfg)
    shapes = bench.split_shapes(packed)
    dtype = _shipped_dtype()
    tcfg = _train_config(cfg, dtype)
    data = _train_data(packed, cfg, tcfg)
    del packed
    gc.collect()
    before = bench.memory_now()
    reset = bench.reset_peak_rss()
    keys, hp = bench.run_grid(cfg.seeds, cfg)
    r = bench.measure_vmapped(data, tcfg, keys, hp, cfg.timed_epochs)
    r.pop("state")
    after = bench.memory_now()
    stats = jax.devices()[0].memory_stats() or {}
    return dict(_jax_context(), bags=spec["n_bags_in_process"], runs=cfg.seeds,
                train_bags=shapes["train"]["bags"], train_tiles=shapes["train"]["tiles"],
                seconds=r["seconds"], compile_seconds=r["compile_seconds"],
                first_layer_dtype=dtype, data_dtype=_data_dtype(data),
                rss_before_training=before.get("VmRSS"),
                peak_rss_training=after.get("VmHWM") if reset else None,
                max_rss_process=after["max_rss_since_start"],
                device_peak_bytes=stats.get("peak_bytes_in_use"))


def worker_shard(spec: dict, cfg: bench.BenchConfig) -> dict:
    """(5) in f32 with runs sharded over every device against one device: equal results?"""
    import jax

    packed = _load_data(spec, cfg)
    keys, hp = bench.run_grid(cfg.seeds, cfg)
    tcfg = _train_config(cfg, "float32")
    data = _train_data(packed, cfg, tcfg)
    devices = jax.devices()
    if cfg.seeds % len(devices):
        raise ValueError(f"{cfg.seeds} runs do not split over {len(devices)} devices")
    epochs = min(cfg.timed_epochs, 2)
    one = bench.measure_vmapped(data, tcfg, keys, hp, epochs)
    many = bench.measure_vmapped(data, tcfg, keys, hp, epochs, devices=devices)
    diffs = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(np.asarray(a, np.float64)
                                                                    - np.asarray(b)))),
                                   one["state"].params, many["state"].params)
    shards = {str(s.device) for s in
              jax.tree_util.tree_leaves(many["state"].params)[0].addressable_shards}
    # Adam's first steps move every parameter by about lr whatever the gradient's size, so a
    # rounding-level difference in a near-zero gradient (another GEMM blocking per device)
    # can flip a step: parameters may differ by up to ~lr per epoch; losses must not.
    return dict(_jax_context(), runs=cfg.seeds, epochs=epochs + 1,
                output_devices=len(shards),
                max_abs_val_auc_diff=float(np.max(np.abs(np.subtract(one["val_auc"],
                                                                     many["val_auc"])))),
                max_rel_loss_diff=_max_rel(one["loss"], many["loss"]),
                first_epoch_max_rel_loss_diff=_max_rel(one["loss"][0], many["loss"][0]),
                max_abs_param_diff=max(jax.tree_util.tree_leaves(diffs)),
                seconds_one_device=one["seconds"], seconds_sharded=many["seconds"])


def _max_rel(a, b) -> float:
    return float(np.max(np.abs(np.subtract(a, b)) / np.maximum(np.abs(a), 1e-30)))


def worker_fit(spec: dict, cfg: bench.BenchConfig) -> dict:
    """Full sweeps (train.fit, early stopping) per first-layer dtype, test AUCs in f32."""
    import jax.numpy as jnp

    from milpf_jax.learning import batches as B

    packed = _load_data(spec, cfg)
    keys, hp = bench.run_grid(cfg.seeds, cfg)
    test = B.bag_batch(packed.split("test"),
                       dtype=jnp.bfloat16 if cfg.data_dtype == "bfloat16" else jnp.float32)
    out = _jax_context()
    for dtype in cfg.fit_dtypes:
        tcfg = _train_config(cfg, dtype, epochs=cfg.fit_epochs)
        data = _train_data(packed, cfg, tcfg)
        out[dtype] = dict(bench.measure_fit(data, test, tcfg, keys, hp),
                          data_dtype=_data_dtype(data))
        del data
    return out


def _plain(x):
    """JSON for numpy scalars and arrays left in a result."""
    return x.tolist() if isinstance(x, (np.ndarray, np.generic)) else str(x)


WORKERS = dict(torch=worker_torch, jax=worker_jax, baselines=worker_baselines,
               tricks=worker_tricks, seeds=worker_seeds, bags=worker_bags, shard=worker_shard,
               fit=worker_fit, step=worker_step)


def run_worker(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    cfg = bench.BenchConfig(**{k: tuple(v) if isinstance(v, list) else v
                               for k, v in spec["config"].items()})
    t0 = time.perf_counter()
    result = WORKERS[spec["worker"]](spec, cfg)
    result["worker_seconds"] = time.perf_counter() - t0
    Path(spec["result"]).write_text(json.dumps(result, default=_plain))
    return 0


# -- the parent: data, processes, tables ------------------------------------------------------


def accepted_xla_flags(flags=XLA_CPU_FLAGS) -> list[str]:
    """The flags XLA accepts, each tried in a throwaway process (XLA aborts on unknown ones)."""
    code = "import jax.numpy as jnp; jnp.ones(2).sum().block_until_ready()"
    ok = []
    for flag in flags:
        env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip())
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           timeout=300)
        if r.returncode == 0:
            ok.append(flag)
    return ok


def worker_env(tricks=(), *, xla_flags=(), extra_xla=(), cache_dir=None) -> dict:
    """This process's environment with exactly the named tricks set: "glibc" (GLIBC_TUNABLES)
    and "xla" (`xla_flags`, the accepted XLA_CPU_FLAGS); plus `extra_xla` flags and, with
    cache_dir, JAX's persistent compilation cache. MILPF_NO_TUNING keeps an entry point that a
    worker might reach from re-executing itself with the settings."""
    env = dict(os.environ, MILPF_NO_TUNING="1")
    env.pop("GLIBC_TUNABLES", None)
    if cache_dir is not None:
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    flags = [f for f in env.get("XLA_FLAGS", "").split() if f not in XLA_CPU_FLAGS]
    if "glibc" in tricks:
        env["GLIBC_TUNABLES"] = GLIBC_TUNABLES
    if "xla" in tricks:
        flags.extend(xla_flags)
    flags.extend(extra_xla)
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    else:
        env.pop("XLA_FLAGS", None)
    return env


class Runner:
    """Starts workers one at a time, each in a fresh process; failures are recorded."""

    def __init__(self, cfg: bench.BenchConfig, data: str, out: Path, work: Path):
        self.cfg, self.data, self.out, self.work = cfg, data, out, work
        self.errors: list[str] = []
        self.partial: dict[str, dict | None] = {}
        (out / "logs").mkdir(parents=True, exist_ok=True)

    def _keep(self, name: str, result: dict | None) -> dict | None:
        """Record a worker's result in OUT/partial.json as it comes: a run stopped part-way
        (a time limit on a lent machine) still leaves the rows it finished."""
        self.partial[name] = result
        write_text(self.out / "partial.json", json.dumps(self.partial, default=_plain))
        return result

    def __call__(self, worker: str, name: str, env: dict, *, oom_ok=False, failure_ok=False,
                 **extra) -> dict | None:
        """The worker's result; None if it failed. With oom_ok, a SIGKILL (the kernel's OOM
        killer) is a result, {"killed": ...}: a scaling row that does not fit is a finding.
        With failure_ok, any failure is a result, {"failed": why, "log_tail": ...}, not an
        error (the compiled PyTorch rows: a compiler that crashes its process skips them)."""
        spec = dict(worker=worker, config=dataclasses.asdict(self.cfg), data=self.data,
                    result=str(self.work / f"{name}.json"), **extra)
        spec_path = self.work / f"{name}.spec.json"
        spec_path.write_text(json.dumps(spec))
        log = self.out / "logs" / f"{name}.log"
        print(f"  {name} ...", end="", flush=True)
        t0 = time.perf_counter()
        with open(log, "w") as f:
            rc = subprocess.run([sys.executable, __file__, "--worker-spec", str(spec_path)],
                                env=env, stdout=f, stderr=subprocess.STDOUT,
                                timeout=WORKER_TIMEOUT_S).returncode
        print(f" {time.perf_counter() - t0:.0f} s", flush=True)
        if rc == -9 and oom_ok:
            print("    killed (out of memory?)", flush=True)
            return self._keep(name, dict(killed="SIGKILL: out of memory?", **extra))
        if rc != 0:
            tail = log.read_text()[-1500:]
            why = f"killed by signal {-rc}" + (" (out of memory?)" if rc == -9 else "") \
                if rc < 0 else f"exited with {rc}"
            if failure_ok:
                print(f"    failed ({why}), see {log}; recorded, not an error", flush=True)
                return self._keep(name, dict(failed=f"worker {name} {why}", log=str(log),
                                             log_tail=tail))
            self.errors.append(f"worker {name} {why}; log {log}:\n{tail}")
            print(f"    FAILED ({why}), see {log}", flush=True)
            return self._keep(name, None)
        return self._keep(name, json.loads(Path(spec["result"]).read_text()))


def make_data(cfg: bench.BenchConfig, work: Path) -> tuple[str, dict, float]:
    """The run's cohort: a zarr store, or packed arrays for workers to memory-map."""
    t0 = time.perf_counter()
    if cfg.in_memory:
        packed = synthetic_packed(cfg.synthetic(), dtype=cfg.data_dtype)
        path = str(save_packed(packed, work / "packed"))
    else:
        from milpf_jax.data.packed import load_packed
        from milpf_jax.synthetic.embeddings import write_synthetic_store

        path = str(work / "synthetic.zarr")
        write_synthetic_store(path, cfg.synthetic())
        packed = load_packed(path, split_seed=0, dtype=np.float16)  # only its shapes are used
    return path, bench.split_shapes(packed), time.perf_counter() - t0


# PyTorch's rows run in both: as a user runs them (none of the JAX rows' process settings) and
# with the JAX rows' GLIBC_TUNABLES; the table takes the faster. Worker-result key suffixes.
TORCH_ENVS = {"default": ((), ""), "glibc": (("glibc",), "_glibc")}


def run_torch(run: Runner, cfg: bench.BenchConfig, rows: list, work: Path) -> dict:
    """The PyTorch rows, in both TORCH_ENVS: the eager rows and rooflines in one process, the
    compiled rows in another (each its own inductor cache, so each compiles from scratch,
    unless the scale shares caches), whose failure skips them instead of failing the run."""
    eager = [r for r in rows if not bench.TORCH_ROWS[r]["compile"]]
    compiled = [r for r in rows if bench.TORCH_ROWS[r]["compile"]]
    out = {}
    for label, (tricks, suffix) in TORCH_ENVS.items():
        env = worker_env(tricks)
        out["torch" + suffix] = run("torch", f"torch-{label}", env, torch_rows=eager)
        if compiled:
            cache = work / ("inductor-cache" if cfg.compile_cache else f"inductor-{label}")
            r = run("torch", f"torch-compiled-{label}",
                    dict(env, TORCHINDUCTOR_CACHE_DIR=str(cache)), failure_ok=True,
                    torch_rows=compiled, rooflines=False)
            out["torch_compiled" + suffix] = r
            for row in compiled:
                why = (r or {}).get("failed") or ((r or {}).get(row) or {}).get("skipped")
                if why:
                    print(f"    row ({row}) skipped ({label}): {why.splitlines()[0][:300]}",
                          flush=True)
    return out


def run_all(cfg: bench.BenchConfig, out: Path, work: Path, *, command: str) -> dict:
    started = datetime.datetime.now(datetime.timezone.utc)
    report = dict(command=command, date=started.isoformat(timespec="seconds"),
                  config=dataclasses.asdict(cfg), machine=bench.cpu_info(),
                  versions=bench.library_versions(), load_average_before=os.getloadavg())
    print(f"making the cohort ({cfg.n_bags} bags, D={cfg.dim}) ...", flush=True)
    data, shapes, data_seconds = make_data(cfg, work)
    report["shapes"] = dict(splits=shapes, dim=cfg.dim, views=cfg.n_views, runs=cfg.seeds,
                            tiles_per_bag=[cfg.min_tiles, cfg.max_tiles],
                            data_seconds=data_seconds)
    xla_ok = accepted_xla_flags()
    report["tricks_env"] = dict(GLIBC_TUNABLES=GLIBC_TUNABLES, XLA_FLAGS=list(XLA_CPU_FLAGS),
                                xla_flags_accepted=xla_ok)
    run = Runner(cfg, data, out, work)

    def jax_env(tricks, extra=()):
        return worker_env(tricks, xla_flags=xla_ok, extra_xla=(*cfg.extra_xla_flags, *extra),
                          cache_dir=work / "jax-cache" if cfg.compile_cache else None)

    tricks_on = jax_env(TRICKS["both"])
    print("measuring (each in its own process):", flush=True)
    workers = {}
    torch_rows = [r for r in bench.TORCH_ROWS if r in cfg.rows]
    if torch_rows:
        workers.update(run_torch(run, cfg, torch_rows, work))
    workers["jax"] = run("jax", "jax", tricks_on)
    # (3) and (4) each in a process of their own: the padded row alone peaks near 17 GiB, and
    # with GLIBC_TUNABLES a heap never shrinks, so after (3) it could meet the 24 GiB limit.
    baselines = [run("baselines", f"baselines-{row}", tricks_on, only_row=row)
                 for row in ("3", "4") if row in cfg.rows]
    if baselines:
        workers["baselines"] = {k: v for r in baselines if r for k, v in r.items()}
    report["tricks"] = {v: run("tricks", f"tricks-{v}", jax_env(TRICKS[v]))
                        for v in cfg.trick_variants}
    report["step_variants"] = [run("step", f"step-{i}", tricks_on, variant=v)
                               for i, v in enumerate(cfg.step_variants)]
    if cfg.scaling_seeds:
        workers["seeds"] = run("seeds", "scaling-seeds", tricks_on)
    report["scaling_bags"] = []
    for n in cfg.scaling_bags:
        r = run("bags", f"scaling-bags-{n}", tricks_on, oom_ok=True, n_bags_in_process=n)
        report["scaling_bags"].append(r if not r or "killed" not in r else dict(r, bags=n))
    if cfg.shard_devices:
        force = f"--xla_force_host_platform_device_count={cfg.shard_devices}"
        workers["shard"] = run("shard", "shard", jax_env(TRICKS["both"], [force]))
    if cfg.fit_dtypes:
        workers["fit"] = run("fit", "fit", tricks_on)
    report["workers"] = workers
    report["load_average_after"] = os.getloadavg()
    report.update(summarise(report, cfg))
    report["errors"] = run.errors
    return report


# -- assembling the numbers -------------------------------------------------------------------


def _roofline_rates(torch_res: dict, jax_res: dict) -> dict:
    """TFLOP/s of every measured roofline, and per dtype the fastest of either library."""
    rates = {}
    for lib, res in (("jax", jax_res), ("torch", torch_res)):
        for dtype in ("float32", "bfloat16"):
            r = (res or {}).get(f"roofline_{dtype}")
            if r:
                rates[f"{lib}_{dtype}"] = r["tflops"]
    for dtype in ("float32", "bfloat16"):
        found = [v for k, v in rates.items() if k.endswith(dtype)]
        rates[f"best_{dtype}"] = max(found) if found else None
    return rates


def torch_results(workers: dict) -> tuple[dict, dict, list]:
    """(merged, skipped, by_env) of the PyTorch workers (run_torch).

    merged: per row id the result of its faster process setting, with "env" (the faster's
    label), "seconds_by_env" and "threads"; per roofline dtype the faster's result with
    "tflops_by_env"; the device facts of the eager default worker. skipped: row id -> the
    reason per setting, for rows no setting measured. by_env: one entry per row and roofline
    with both settings' numbers."""
    per_env = {}
    for label, (_, suffix) in TORCH_ENVS.items():
        eager, compiled = (workers.get(k + suffix) for k in ("torch", "torch_compiled"))
        merged = dict(eager or {})
        if compiled is not None:
            if "failed" in compiled:
                merged.update({row: dict(skipped=f"{compiled['failed']}: "
                                             f"{compiled.get('log_tail', '')[-400:]}")
                               for row in bench.TORCH_ROWS if bench.TORCH_ROWS[row]["compile"]})
            else:
                merged.update({k: v for k, v in compiled.items()
                               if k in bench.TORCH_ROWS})
        if eager is not None or compiled is not None:
            per_env[label] = merged
    base = next(iter(per_env.values()), {})
    out = {k: v for k, v in base.items() if k not in bench.TORCH_ROWS
           and not k.startswith("roofline_")}
    skipped, by_env = {}, []
    for row in bench.TORCH_ROWS:
        got = {label: res[row] for label, res in per_env.items() if row in res}
        if not got:
            continue
        timed_ = {label: r for label, r in got.items() if "skipped" not in r}
        if not timed_:
            skipped[row] = {label: r["skipped"] for label, r in got.items()}
            continue
        label = min(timed_, key=lambda k: timed_[k]["seconds"])
        secs = {k: r["seconds"] for k, r in timed_.items()}
        out[row] = dict(timed_[label], env=label, seconds_by_env=secs)
        by_env.append(dict(row=row, seconds_by_env=secs, faster=label,
                           threads={k: r.get("threads") for k, r in timed_.items()},
                           skipped={k: r["skipped"] for k, r in got.items() if "skipped" in r}))
    for dtype in ("bfloat16", "float32"):
        key = f"roofline_{dtype}"
        got = {label: res[key] for label, res in per_env.items() if res.get(key)}
        if got:
            label = max(got, key=lambda k: got[k]["tflops"])
            rates = {k: r["tflops"] for k, r in got.items()}
            out[key] = dict(got[label], env=label, tflops_by_env=rates)
            by_env.append(dict(roofline=dtype, tflops_by_env=rates, faster=label))
    return out, skipped, by_env


def summarise(report: dict, cfg: bench.BenchConfig) -> dict:
    """Rows with speed-ups and roofline fractions, agreement, tricks and scaling tables."""
    w = report["workers"]
    torch_res, torch_skipped, torch_by_env = torch_results(w)
    jax_res = {**(w.get("baselines") or {}), **(w.get("jax") or {})}
    n_train = report["shapes"]["splits"]["train"]["tiles"]
    flops = bench.first_layer_flops(cfg.seeds, bench.HIDDEN, cfg.dim, n_train)
    rates = _roofline_rates(torch_res, jax_res)
    shipped = jax_res.get("shipped_first_layer_dtype")
    specs = [(row, kind["name"], "torch", row, kind["dtype"])
             for row, kind in bench.TORCH_ROWS.items()] + [
        ("3", "JAX, jitted step, runs one after another", "jax", "3_float32", "float32"),
        ("4", "JAX, vmap over runs, padded [B, Tmax, D]", "jax", "4_float32", "float32"),
        ("5", "ours: vmap over runs, packed tiles", "jax", "5_float32", "float32"),
        ("5", "ours: vmap over runs, packed tiles", "jax", "5_bfloat16", "bfloat16"),
    ]
    rows = []
    for row_id, name, lib, key, dtype in specs:
        r = (torch_res if lib == "torch" else jax_res).get(key)
        if not r:
            continue
        tflops = flops / r["seconds"] / 1e12
        rows.append(dict(
            row=row_id, name=name, library=lib, first_layer_dtype=dtype,
            shipped_default=row_id == "5" and dtype == shipped,
            seconds=r["seconds"], median_seconds=r["median_seconds"],
            compile_seconds=r.get("compile_seconds"), first_epoch_seconds=r["first_epoch_seconds"],
            first_layer_tflops=tflops, step_temp_bytes=r.get("step_temp_bytes"),
            roofline_fraction=tflops / rates[f"best_{dtype}"] if rates.get(f"best_{dtype}")
            else None,
            fraction_of={k: tflops / v for k, v in rates.items()
                         if v and not k.startswith("best")},
            **({k: r.get(k) for k in ("env", "seconds_by_env", "threads", "embeddings",
                                      "compiled")} if lib == "torch" else {}),
        ))
    base = {r["row"]: r["seconds"] for r in rows if r["row"] in ("1", "2")}
    fastest = fastest_torch(rows)
    for r in rows:
        r["speedup_vs_1"] = base["1"] / r["seconds"] if "1" in base else None
        r["speedup_vs_2"] = base["2"] / r["seconds"] if "2" in base else None
        for k, f in fastest.items():
            r[f"speedup_vs_{k}"] = f["seconds"] / r["seconds"] if f else None
    out = dict(rows=rows, rooflines=_rooflines(torch_res, jax_res), roofline_tflops=rates,
               flop_count=dict(first_layer_per_epoch=flops, how=(
                   "2 GEMMs (forward [R*16, D] x [D, N] and weight gradient) x 2*R*16*D*N, "
                   f"R={cfg.seeds} runs, N={n_train} training tiles (real tiles only, also "
                   "for the padded row); the global stream and validation are not counted. "
                   "roofline_fraction: that rate over the fastest measured matmul of the "
                   "row's first-layer dtype in either library")),
               agreement=_agreement(jax_res, w.get("shard")),
               shipped_first_layer_dtype=shipped, device=_device(torch_res, jax_res),
               fastest_torch=fastest["fastest_torch"],
               fastest_torch_f32=fastest["fastest_torch_f32"],
               torch_by_env=torch_by_env,
               skipped_rows=[dict(row=row, reasons=why) for row, why in torch_skipped.items()])
    out["profile"] = _profile_shares(jax_res, shipped, n_train, cfg)
    tricks = dict(report.get("tricks") or {})
    if tricks and "both" not in tricks and "5_float32" in jax_res and "5_bfloat16" in jax_res:
        # The main JAX worker ran with both settings: its (5) rows are the reference.
        tricks["both (main run)"] = {"env": jax_res["env"], "float32": jax_res["5_float32"],
                                     "bfloat16": jax_res["5_bfloat16"]}
    out["tricks_table"] = _tricks_table(tricks)
    out["scaling_seeds_table"] = (w.get("seeds") or {}).get("rows", [])
    out["scaling_bags_table"] = [r for r in report.get("scaling_bags") or [] if r]
    out["fit"] = _fit_summary(w.get("fit"), torch_res, flops, rates)
    out["targets"] = _targets(rows, out["fit"])
    return out


def fastest_torch(rows: list) -> dict:
    """The fastest PyTorch row of all ("fastest_torch", the bf16 rows' reference) and of the
    float32 ones ("fastest_torch_f32", the f32 rows' reference): row, dtype, seconds, env."""
    torch_rows = [r for r in rows if r["library"] == "torch"]
    out = {}
    for key, pick in (("fastest_torch", torch_rows),
                      ("fastest_torch_f32", [r for r in torch_rows
                                             if r["first_layer_dtype"] == "float32"])):
        f = min(pick, key=lambda r: r["seconds"]) if pick else None
        out[key] = f and {k: f.get(k) for k in ("row", "name", "first_layer_dtype", "seconds",
                                                "env")}
    return out


def _rooflines(torch_res, jax_res) -> list:
    out = []
    for lib, res in (("jax", jax_res), ("torch", torch_res)):
        for dtype in ("float32", "bfloat16"):
            r = res.get(f"roofline_{dtype}")
            if r:
                out.append(dict(library=lib, dtype=dtype, shape=r["shape"], seconds=r["seconds"],
                                tflops=r["tflops"], compile_seconds=r.get("compile_seconds")))
    return out


def _device(torch_res, jax_res) -> dict:
    return dict(jax_platform=jax_res.get("platform"), jax_device_kind=jax_res.get("device_kind"),
                jax_device_count=jax_res.get("device_count"),
                torch_device=torch_res.get("device_name"), torch_threads=torch_res.get("threads"),
                torch_usable_cores=torch_res.get("usable_cores"))


def _max_diff(a, b) -> float | None:
    if a is None or b is None:
        return None
    return float(np.max(np.abs(np.subtract(a, b))))


def _agreement(jax_res: dict, shard: dict | None) -> dict:
    """(5) against (3) in f32 (same runs, same epochs), and how far bf16 moves (5)."""
    f32, seq, bf16 = (jax_res.get(k) or {} for k in ("5_float32", "3_float32", "5_bfloat16"))
    d53 = _max_diff(f32.get("val_auc"), seq.get("val_auc"))
    out = dict(
        epochs_compared=len(f32.get("val_auc") or []),
        f32_5_vs_3_max_abs_val_auc_diff=d53,
        f32_5_vs_3_max_abs_loss_diff=_max_diff(f32.get("loss"), seq.get("loss")),
        f32_5_vs_3_within_1e_3=None if d53 is None else d53 <= 1e-3,
        bf16_vs_f32_max_abs_val_auc_diff=_max_diff(bf16.get("val_auc"), f32.get("val_auc")),
        bf16_vs_f32_mean_abs_val_auc_diff=None if not bf16 or not f32 else float(
            np.mean(np.abs(np.subtract(bf16["val_auc"], f32["val_auc"])))),
        bf16_vs_f32_max_abs_loss_diff=_max_diff(bf16.get("loss"), f32.get("loss")),
    )
    if shard:
        out["sharded_vs_one_device"] = {k: shard[k] for k in (
            "runs", "output_devices", "max_abs_val_auc_diff", "max_rel_loss_diff",
            "first_epoch_max_rel_loss_diff", "max_abs_param_diff")}
        out["sharded_vs_one_device"]["devices"] = shard["device_count"]
    return out


def _profile_shares(jax_res: dict, dtype, n_train: int, cfg) -> dict:
    """Fractions of (5)'s step from pieces timed alone: the first-layer GEMMs (forward and
    weight gradient, each estimated as the roofline matmul of the dtype scaled to N), the rest
    of the forward and of the backward (segment softmax and sums, small layers, global
    stream), validation, and what remains (Adam, keep-best, patience)."""
    p = jax_res.get("profile") or {}
    if "error" in p or "forward" not in p:
        return p
    step, fwd, fwd_bwd, val = p["step"], p["forward"], p["loss_and_grad"], p["validation"]
    shares = dict(step_seconds=step, first_layer_dtype=dtype, forward=fwd,
                  loss_and_grad=fwd_bwd, validation=val)
    parts = {}
    mm = jax_res.get(f"roofline_{dtype}")
    gemm = mm and mm["seconds"] * n_train / mm["shape"][2]  # one GEMM, N scaled if capped
    if gemm:
        parts["first_layer_gemms"] = 2 * gemm
        parts["rest_of_forward"] = fwd - gemm
        parts["rest_of_backward"] = fwd_bwd - fwd - gemm
    else:
        parts.update(forward=fwd, backward=fwd_bwd - fwd)
    parts["validation"] = val
    parts["adam_and_bookkeeping"] = step - fwd_bwd - val
    shares["seconds"] = parts
    shares["fractions"] = {k: v / step for k, v in parts.items()}
    return shares


def _tricks_table(tricks: dict) -> list:
    out = []
    for variant, res in tricks.items():
        if not res:
            continue
        out.append(dict(variant=variant, env=res.get("env"),
                        float32=res["float32"]["seconds"], bfloat16=res["bfloat16"]["seconds"],
                        compile_float32=res["float32"]["compile_seconds"],
                        compile_bfloat16=res["bfloat16"]["compile_seconds"]))
    return out


def _fit_summary(fit: dict | None, torch_res: dict, flops: int, rates: dict) -> dict:
    """Each full sweep: time, epochs, test AUCs, speed-up against (1) at as many epochs, and
    the first-layer rate over the sweep (every run computes until all have stopped)."""
    if not fit:
        return {}
    out = {}
    for dtype in ("float32", "bfloat16"):
        r = fit.get(dtype)
        if not r:
            continue
        s = {k: r[k] for k in ("compile_seconds", "train_seconds", "epochs_run",
                               "test_auc_mean", "test_auc_std", "best_run_test_auc",
                               "data_dtype")}
        s["first_layer_tflops"] = flops * r["epochs_run"] / r["train_seconds"] / 1e12
        if rates.get(f"best_{dtype}"):
            s["roofline_fraction"] = s["first_layer_tflops"] / rates[f"best_{dtype}"]
        if torch_res.get("1"):
            # (1) would need its per-epoch time for as many epochs as the sweep ran.
            s["torch_1_same_epochs_seconds"] = torch_res["1"]["seconds"] * r["epochs_run"]
            s["speedup_vs_1"] = s["torch_1_same_epochs_seconds"] / r["train_seconds"]
        out[dtype] = s
    return out


def _targets(rows: list, fit: dict) -> dict:
    """The speed targets. CPU: (5) with a bf16 first layer >= 3x the fastest PyTorch row (any
    dtype), f32 >= 2x the fastest float32 PyTorch row. GPU (--scale embed): the full sweep in
    under 60 s and >= 20x (1)."""
    by = {(r["row"], r["first_layer_dtype"]): r for r in rows}
    fastest = fastest_torch(rows)
    out = {}
    for key, (dtype, vs, goal) in {
        "bf16_vs_fastest_torch": ("bfloat16", "fastest_torch", 3.0),
        "f32_vs_fastest_torch_f32": ("float32", "fastest_torch_f32", 2.0),
    }.items():
        r = by.get(("5", dtype))
        got = r and r.get(f"speedup_vs_{vs}")
        out[key] = dict(goal=goal, got=got, met=None if got is None else got >= goal,
                        against=fastest[vs] and fastest[vs]["row"])
    for dtype, s in fit.items():
        out[f"sweep_{dtype}_seconds"] = dict(goal=60.0, got=s["train_seconds"],
                                             met=s["train_seconds"] < 60.0, below=True)
        if s.get("speedup_vs_1") is not None:
            out[f"sweep_{dtype}_vs_1"] = dict(goal=20.0, got=s["speedup_vs_1"],
                                              met=s["speedup_vs_1"] >= 20.0)
    return out


# -- printing ---------------------------------------------------------------------------------


def _f(x, fmt="{:.3g}") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return fmt.format(x)


def machine_line(report: dict) -> str:
    """The table's "Machine:" line: CPU model, cores, bf16 flags, devices, threads, load."""
    m, dev = report["machine"], report["device"]
    flags = m.get("flags") or {}
    return (f"Machine: {m['model']}, {m['usable_cores']} usable of {m['logical_cores']} logical "
            f"cores; amx: {m.get('amx')}, avx512_bf16: {flags.get('avx512_bf16')}; JAX device: "
            f"{dev['jax_device_kind']} x{dev['jax_device_count']}; PyTorch: {dev['torch_device']} "
            f"({dev['torch_threads']} threads). Load average before/after: "
            f"{', '.join(f'{x:.1f}' for x in report['load_average_before'])} / "
            f"{', '.join(f'{x:.1f}' for x in report['load_average_after'])}.")


def _row_label(f: dict | None) -> str:
    if not f:
        return "-"
    env = " with GLIBC_TUNABLES" if f.get("env") == "glibc" else ""
    return f"({f['row']}) {f['name']}, {f['first_layer_dtype']}, {_f(f['seconds'])} s{env}"


def format_tables(report: dict) -> str:
    shapes, cfg = report["shapes"], report["config"]
    tr = shapes["splits"]["train"]
    lines = [
        f"# Benchmark, {report['date']}",
        "",
        f"`{report['command']}`",
        "",
        machine_line(report),
        f"Shapes: {tr['bags']} training bags, {tr['tiles']} training tiles (val "
        f"{shapes['splits']['val']['bags']} bags), D={cfg['dim']}, {cfg['n_views']} views, "
        f"R={cfg['seeds']} runs; {cfg['timed_epochs']} timed epochs after compile + 1 warm-up, "
        "the fastest shown (other processes only add time; medians in benchmark.json). "
        f"Shipped first-layer dtype: {report['shipped_first_layer_dtype']}.",
        "",
        "| row | what | first layer | s / epoch (all runs) | compile s | first epoch s | vs (1) "
        "| vs fastest torch | vs fastest torch f32 | first-layer TFLOP/s | of roofline |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        mark = " (shipped)" if r["shipped_default"] else ""
        mark += " [GLIBC_TUNABLES]" if r.get("env") == "glibc" else ""
        lines.append(
            f"| ({r['row']}) | {r['name']}{mark} | {r['first_layer_dtype']} | "
            f"{_f(r['seconds'])} | {_f(r['compile_seconds'])} | "
            f"{_f(r['first_epoch_seconds'])} | {_f(r['speedup_vs_1'])}x | "
            f"{_f(r.get('speedup_vs_fastest_torch'))}x | "
            f"{_f(r.get('speedup_vs_fastest_torch_f32'))}x | {_f(r['first_layer_tflops'])} | "
            f"{_f(r['roofline_fraction'], '{:.0%}')} |")
    for sk in report.get("skipped_rows") or []:
        why = "; ".join(f"{k}: {v.splitlines()[0][:200]}" for k, v in sk["reasons"].items())
        lines.append(f"| ({sk['row']}) | {bench.TORCH_ROWS[sk['row']]['name']} | "
                     f"{bench.TORCH_ROWS[sk['row']]['dtype']} | skipped: {why} | | | | | | | |")
    for rf in report["rooflines"]:
        lines.append(f"| (6) | roofline: {rf['library']} matmul {rf['shape'][0]}x{rf['shape'][1]}"
                     f" x {rf['shape'][1]}x{rf['shape'][2]} | {rf['dtype']} | "
                     f"{_f(rf['seconds'])} (one matmul) | {_f(rf['compile_seconds'])} | | | | | "
                     f"{_f(rf['tflops'])} | 100% of itself |")
    lines += ["", f"Fastest PyTorch row: {_row_label(report.get('fastest_torch'))}; fastest "
                  f"float32 PyTorch row: {_row_label(report.get('fastest_torch_f32'))}. "
                  "Ratio columns: a row's time divided into that of (1) (vs (1)), of the "
                  "fastest of all PyTorch rows (vs fastest torch: the bf16 target's reference) "
                  "and of the fastest float32 PyTorch row (vs fastest torch f32: the f32 "
                  "target's reference); the former vs (2) column is left out (speedup_vs_2 "
                  "stays in benchmark.json). PyTorch rows: the faster of a process without and "
                  "one with the JAX rows' GLIBC_TUNABLES ([GLIBC_TUNABLES] marks the latter); "
                  "(1c), (2c): torch.compile (inductor, dynamic=False) of each run's head, "
                  "compile s = warm-up epoch minus the fastest epoch."]
    env_rows = report.get("torch_by_env") or []
    if env_rows:
        d = report["device"]
        lines += ["", "PyTorch with and without GLIBC_TUNABLES (fresh process each; "
                      f"torch.get_num_threads() = {d.get('torch_threads')} of "
                      f"{d.get('torch_usable_cores')} usable cores):", "",
                  "| PyTorch | default env | GLIBC_TUNABLES | faster |", "|---|---|---|---|"]
        for e in env_rows:
            if "row" in e:
                v = e["seconds_by_env"]
                lines.append(f"| ({e['row']}) s / epoch | {_f(v.get('default'))} | "
                             f"{_f(v.get('glibc'))} | {e['faster']} |")
            else:
                v = e["tflops_by_env"]
                lines.append(f"| roofline {e['roofline']} TFLOP/s | {_f(v.get('default'))} | "
                             f"{_f(v.get('glibc'))} | {e['faster']} |")
    lines += ["", report["flop_count"]["how"] + ".", ""]
    a = report["agreement"]
    lines.append(f"Agreement over {a['epochs_compared']} epochs: (5) vs (3) in f32, max |val AUC "
                 f"diff| {_f(a['f32_5_vs_3_max_abs_val_auc_diff'])}, max |loss diff| "
                 f"{_f(a['f32_5_vs_3_max_abs_loss_diff'])}; bf16 first layer vs f32 (5): max "
                 f"|val AUC diff| {_f(a['bf16_vs_f32_max_abs_val_auc_diff'])} (mean "
                 f"{_f(a['bf16_vs_f32_mean_abs_val_auc_diff'])}).")
    temps = [(r["first_layer_dtype"], r["step_temp_bytes"]) for r in report["rows"]
             if r["row"] == "5" and r.get("step_temp_bytes")]
    if temps:
        lines.append("XLA's temp buffer of (5)'s compiled step (its working memory beside the "
                     "data): " + ", ".join(f"{d} {_f(b / 2**30)} GiB" for d, b in temps) + ".")
    if "sharded_vs_one_device" in a:
        s = a["sharded_vs_one_device"]
        lines.append(f"Runs sharded over {s['devices']} devices vs one: max |val AUC diff| "
                     f"{_f(s['max_abs_val_auc_diff'])}, max relative loss diff "
                     f"{_f(s['max_rel_loss_diff'])}, max |param diff| "
                     f"{_f(s['max_abs_param_diff'])} (Adam moves a parameter ~lr per step "
                     "whatever its gradient's size, so rounding can flip a near-zero one).")
    p = report["profile"]
    if p.get("fractions"):
        parts = ", ".join(f"{k} {v:.0%}" for k, v in p["fractions"].items())
        lines += ["", f"Profile of (5) ({p['first_layer_dtype']}, step {p['step_seconds']:.3g} "
                      f"s; pieces compiled and timed alone, GEMMs estimated from the roofline, "
                      f"so shares are approximate): {parts}."]
    elif p.get("error"):
        lines += ["", f"Profile: {p['error']}"]
    if report["tricks_table"]:
        lines += ["", "Process settings on (5), s / epoch (fresh process each):", "",
                  "| settings | f32 | bf16 first layer |", "|---|---|---|"]
        for t in report["tricks_table"]:
            lines.append(f"| {t['variant']} | {_f(t['float32'])} | {_f(t['bfloat16'])} |")
    variants = [v for v in report.get("step_variants", []) if v]
    if variants:
        base = variants[0]["row"]["seconds"]
        lines += ["", f"The step's code, one trick at a time ((5), "
                      f"{variants[0]['row']['first_layer_dtype']} first layer, fresh process "
                      "each, process settings on):", "",
                  "| step | s / epoch | vs the first | compile s |", "|---|---|---|---|"]
        for v in variants:
            r = v["row"]
            here = f" ({r['chunk_tiles']} tiles here)" if v.get("chunk") == "auto" else ""
            lines.append(f"| {v['variant']}{here} | {_f(r['seconds'])} | "
                         f"{_f(base / r['seconds'])}x | {_f(r['compile_seconds'])} |")
    if report["scaling_seeds_table"]:
        lines += ["", "Scaling of (5) over runs:", "", "| runs | s / epoch | compile s |",
                  "|---|---|---|"]
        for r in report["scaling_seeds_table"]:
            lines.append(f"| {r['runs']} | {_f(r['seconds'])} | {_f(r['compile_seconds'])} |")
    if report["scaling_bags_table"]:
        lines += ["", f"Scaling of (5) over bags ({cfg['seeds']} runs; peak RSS of training, "
                      "VmHWM reset once the data is ready; whole process):", "",
                  "| bags | training tiles | s / epoch | compile s | peak RSS training GiB | "
                  "max RSS process GiB |", "|---|---|---|---|---|---|"]
        for r in report["scaling_bags_table"]:
            gib = 1 << 30
            if "killed" in r:
                lines.append(f"| {r['bags']} | | did not fit: {r['killed']} | | | |")
                continue
            lines.append(f"| {r['bags']} | {r['train_tiles']} | {_f(r['seconds'])} | "
                         f"{_f(r['compile_seconds'])} | "
                         f"{_f(r['peak_rss_training'] and r['peak_rss_training'] / gib)} | "
                         f"{_f(r['max_rss_process'] / gib)} |")
    for dtype, s in (report.get("fit") or {}).items():
        lines += ["", f"Full sweep (train.fit, early stopping), {dtype} first layer: "
                      f"{s['epochs_run']} epochs in {_f(s['train_seconds'])} s (compile "
                      f"{_f(s['compile_seconds'])} s), test AUC {_f(s['test_auc_mean'])} +- "
                      f"{_f(s['test_auc_std'])}, best-val run {_f(s['best_run_test_auc'])}; "
                      f"vs (1) at the same epochs: {_f(s.get('speedup_vs_1'))}x; first layer "
                      f"{_f(s['first_layer_tflops'])} TFLOP/s, "
                      f"{_f(s.get('roofline_fraction'), '{:.0%}')} of roofline."]
    t = report["targets"]
    lines += ["", "Targets: " + "; ".join(
        f"{k} {'<' if v.get('below') else '>='} {v['goal']}: {_f(v['got'])} "
        f"({'met' if v['met'] else 'NOT met'}"
        f"{', vs (' + v['against'] + ')' if v.get('against') else ''})"
        for k, v in t.items() if v["got"] is not None)]
    if report.get("errors"):
        lines += ["", f"ERRORS: {len(report['errors'])} worker(s) failed, see benchmark.json"]
    return "\n".join(lines) + "\n"


# -- command line -----------------------------------------------------------------------------


RowId = Literal["1", "1c", "2", "2b", "2c", "3", "4", "5"]  # harness.ROW_IDS


@dataclasses.dataclass(frozen=True)
class BenchCommand:
    """The benchmark's command line: a scale (harness.SCALES) and what to change in it."""

    scale: Literal["cpu", "quick", "embed"] = option(
        "cpu", "shapes and rows (cpu: 2,000 bags, D=1152, 36 runs)")
    quick: bool = option(False, "same as --scale quick (CI-sized)", switch=True)
    out: str = option("benchmark-out", "folder for benchmark.json/.md, logs")
    bags: int | None = option(None, "override the number of bags")
    dim: int | None = option(None, "override the embedding size D")
    seeds: int | None = option(None, "override the number of runs")
    epochs: int | None = option(None, "override the timed epochs per row")
    fit_epochs: int | None = option(None, "override the full sweep's epoch cap")
    rows: tuple[RowId, ...] | None = option(
        None, "comma-separated rows to run, e.g. 1,2b,5 (default: the scale's)")
    no_scaling: bool = option(False, "skip both scaling tables", switch=True)
    no_tricks: bool = option(
        False, "skip the process-settings comparison (GLIBC_TUNABLES, XLA_FLAGS)", switch=True)
    no_step_variants: bool = option(
        False, "skip the comparison of the step's code tricks (hand-written VJP, 16-tile "
               "blocks, embeddings in the first layer's dtype, chunked passes)", switch=True)
    fit: bool = option(False, "also run full sweeps (train.fit, early stopping) in f32 and bf16",
                       switch=True)
    worker_spec: str | None = option(None, hidden=True)

    def bench_config(self) -> bench.BenchConfig:
        cfg = bench.SCALES["quick" if self.quick else self.scale]
        changes = {k: v for k, v in dict(n_bags=self.bags, dim=self.dim, seeds=self.seeds,
                                         timed_epochs=self.epochs,
                                         fit_epochs=self.fit_epochs, rows=self.rows).items()
                   if v is not None}
        if self.no_scaling:
            changes.update(scaling_seeds=(), scaling_bags=())
        if self.no_tricks:
            changes.update(trick_variants=())
        if self.no_step_variants:
            changes.update(step_variants=())
        if self.fit and not cfg.fit_dtypes:
            changes.update(fit_dtypes=("float32", "bfloat16"))
        return cfg.replace(**changes)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(p, BenchCommand)
    return p


def config_from_args(args, parser=None) -> bench.BenchConfig:
    """The BenchConfig a command line asks for (a refused value is a usage error)."""
    opts = cli_config_from_args(BenchCommand, args, parser)
    try:
        return opts.bench_config()
    except ValueError as err:
        if parser is None:
            raise
        parser.error(str(err))


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker_spec:
        return run_worker(args.worker_spec)
    cfg = config_from_args(args, parser)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = command_line("benchmarks/benchmark.py", argv)
    with tempfile.TemporaryDirectory(prefix="milpf-bench-") as work:
        report = run_all(cfg, out, Path(work), command=command)
    table = format_tables(report)
    write_text(out / "benchmark.json", json.dumps(report, indent=1, default=_plain))
    write_text(out / "benchmark.md", table)
    print()
    print(table)
    for err in report["errors"]:
        print(err, file=sys.stderr)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(run(main))
