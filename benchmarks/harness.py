"""Benchmark pieces: scales, machine facts, in-memory synthetic bags, the baselines, timers.

`benchmarks/benchmark.py` runs these in separate processes (PyTorch and JAX never share one:
on 2 cores both spin threads) and assembles the table. Every measure_* function returns a
plain dict of numbers, so a worker can dump it as JSON and a test can call it on tiny shapes.

The rows: (1) the head as the original PyTorch code runs it, one seed after another,
ragged tiles with scatter softmax, float32; (2) the same under bfloat16 autocast (embeddings
held in float32); (2b) as (2) with the embeddings held in bfloat16; (1c), (2c): (1), (2b) under
torch.compile (inductor), see TORCH_ROWS; (3) JAX, the
jitted `epoch_step` of one run in a Python loop over runs; (4) JAX vmap over runs on padded
[B, Tmax, D] tensors; (5) ours, `epoch_step` vmapped over runs on packed tiles; (6) rooflines:
a plain first-layer-shaped matmul [R*16, D] x [D, N].

This module imports neither JAX nor PyTorch at import time: the orchestrating parent process
uses its config and data helpers and must not load either library.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import platform
import re
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from milpf_jax.data import labels
from milpf_jax.data.labels import class_weights
from milpf_jax.data.packed import PackedBags, numpy_dtype
from milpf_jax.synthetic.embeddings import SyntheticConfig

# CPU flags worth reporting: AMX is what makes bf16 matmuls several times faster than f32 on
# recent Intel CPUs; avx512_bf16 gives bf16 dot products without AMX (e.g. AMD Zen 4).
CPU_FLAGS = ("amx_bf16", "amx_tile", "amx_int8", "avx512_bf16", "avx512_vnni", "avx512f",
             "avx2", "fma")
# The first layer's width (paper, section 3.1: "projecting from embedding size to 16"); kept
# here too because the PyTorch worker must not import milpf_jax.learning.head (it loads JAX).
HIDDEN = 16
# The table's rows, see the module docstring; --rows takes any of them.
ROW_IDS = ("1", "1c", "2", "2b", "2c", "3", "4", "5")


# What the code of (5)'s step does, one trick added at a time (each measured in a fresh process,
# shipped first-layer dtype): the gradient of the attention pooling by autodiff or written by
# hand (learning.attention.attention_stream), tiles packed or in 16-tile blocks
# (learning.batches.bag_batch), the embeddings held in float32 or in the first layer's dtype,
# the backward and then the forward pass over all tiles at once or in chunks, then the rest of
# the step: one backward pass over the tiles instead of two, the per-tile arrays feature-major,
# the tiles' bf16 bits converted chunk by chunk, the 16->8 kernel transposed for XLA:CPU's fast
# dot, and the chunk size from the CPU's L2 cache.
# Each variant is a HeadImpl (`step_impl`), part of the compiled program's key.
STEP_CHANGES = (  # (row, what it changes from the row above)
    ("autodiff, packed tiles, f32 embeddings",
     dict(hand=False, block=1, data="float32", chunk=None, forward_chunk=None,
          feature_major=False, one_pass=False, convert_per_chunk=False,
          second_layer_transposed=False)),
    ("hand-written VJP, packed tiles, f32 embeddings", dict(hand=True)),
    ("+ 16-tile blocks", dict(block=16)),
    ("+ embeddings in the first layer's dtype", dict(data=None)),
    ("+ backward in chunks of 8,192 tiles", dict(chunk=8192)),
    ("+ forward in chunks of 8,192 tiles", dict(forward_chunk=8192)),
    ("+ one backward pass (softmax sums from the pooled features)", dict(one_pass=True)),
    ("+ per-tile arrays feature-major", dict(feature_major=True)),
    ("+ tiles' bf16 bits converted chunk by chunk", dict(convert_per_chunk=True)),
    ("+ the 16->8 kernel transposed for XLA:CPU's fast dot",
     dict(second_layer_transposed=True)),
    ("+ chunk size from the CPU's L2 cache (shipped)", dict(chunk="auto", forward_chunk="auto")),
)
STEP_VARIANTS = dict(zip([name for name, _ in STEP_CHANGES], itertools.accumulate(
    [change for _, change in STEP_CHANGES], lambda row, change: {**row, **change})))


def step_impl(variant: dict):
    """The learning.head.HeadImpl of one STEP_VARIANTS entry ("auto" chunks made concrete)."""
    from milpf_jax.learning.head import HeadImpl

    return HeadImpl(hand_written_gradient=variant["hand"], tile_block=variant["block"],
                    forward_chunk_tiles=variant["forward_chunk"],
                    backward_chunk_tiles=variant["chunk"],
                    feature_major=variant["feature_major"], one_backward_pass=variant["one_pass"],
                    convert_per_chunk=variant["convert_per_chunk"],
                    second_layer_transposed=variant["second_layer_transposed"]).resolved()


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark scale. The defaults are the CPU setting: 2,000 bags, 0-256 tiles
    per bag, D=1152, two views, 36 runs (seeds x lr 2e-3 x wd 1e-4, the original defaults).

    timed_epochs: steady-state epochs timed after the compile and one warm-up epoch (the
    fastest is reported, see `summarise`).
    rows: which of ROW_IDS ((1), (1c), (2), (2b), (2c), (3)-(5)) to run. scaling_seeds /
    scaling_bags: the scaling tables for (5).
    trick_variants: process settings (GLIBC_TUNABLES, XLA_FLAGS) measured on (5) in fresh
    processes. shard_devices: forced host devices for the runs-sharding equality check (0
    skips). fit_dtypes: full sweeps with `train.fit` (early stopping) per first-layer dtype.
    data_dtype: embeddings in memory. in_memory: skip the zarr store (the GPU machine lacks
    zarr) and hand the workers packed arrays instead. compile_cache: share JAX's persistent
    compilation cache between the workers (quick only: compile times then include cache loads).
    extra_xla_flags: XLA_FLAGS for every JAX worker (quick: less optimisation, faster compiles;
    its timings are a smoke test, not a measurement). synthetic_block_bags: draw the cohort in
    independently seeded blocks of this many bags, in parallel (SyntheticConfig.block_bags).
    """

    n_bags: int = 2000
    dim: int = 1152
    min_tiles: int = 0
    max_tiles: int = 256
    n_views: int = 2
    seeds: int = 36
    timed_epochs: int = 3
    rows: tuple[str, ...] = ROW_IDS
    scaling_seeds: tuple[int, ...] = (1, 4, 16, 36, 72)
    scaling_bags: tuple[int, ...] = (500, 1000, 2000, 4000, 8000)
    trick_variants: tuple[str, ...] = ("both", "glibc", "xla", "none")
    shard_devices: int = 4
    fit_dtypes: tuple[str, ...] = ()
    fit_epochs: int = 700
    data_dtype: str = "float32"
    in_memory: bool = False
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    compile_cache: bool = False
    extra_xla_flags: tuple[str, ...] = ()
    step_variants: tuple[str, ...] = tuple(STEP_VARIANTS)
    synthetic_block_bags: int | None = None

    def __post_init__(self):
        bad_rows = sorted(set(self.rows) - set(ROW_IDS))
        if bad_rows:
            raise ValueError(f"rows {bad_rows}: choose from {', '.join(ROW_IDS)}")
        bad_variants = sorted(set(self.step_variants) - set(STEP_VARIANTS))
        if bad_variants:
            raise ValueError(f"step variants {bad_variants}: choose from {list(STEP_VARIANTS)}")
        if self.data_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"data_dtype {self.data_dtype!r}: float32|bfloat16")
        if self.timed_epochs < 1 or self.seeds < 1:
            raise ValueError(f"timed_epochs={self.timed_epochs} and seeds={self.seeds} must be "
                             ">= 1")
        if not 0 <= self.min_tiles <= self.max_tiles:
            raise ValueError(f"tiles per bag range [{self.min_tiles}, {self.max_tiles}] is empty")

    def synthetic(self, n_bags: int | None = None) -> SyntheticConfig:
        """The synthetic cohort; the first n bags of a bigger cohort are the same bags."""
        return SyntheticConfig(n_bags=n_bags or self.n_bags, dim=self.dim,
                               min_tiles=self.min_tiles, max_tiles=self.max_tiles,
                               n_views=self.n_views, block_bags=self.synthetic_block_bags)

    def replace(self, **changes) -> BenchConfig:
        return dataclasses.replace(self, **changes)


SCALES = {
    # CI-sized: every row and table, tiny shapes, well under a minute on 2 cores.
    # Its scaling entries repeat the main shapes, so the shared compile cache serves them.
    "quick": BenchConfig(n_bags=200, dim=64, max_tiles=64, seeds=4, timed_epochs=2,
                         scaling_seeds=(4,), scaling_bags=(200,), trick_variants=("none",),
                         step_variants=tuple(STEP_VARIANTS)[:1],
                         compile_cache=True,
                         extra_xla_flags=("--xla_backend_optimization_level=0",)),
    "cpu": BenchConfig(),
    # The GPU target: 50,000 bags, ~150 tiles each (uniform 0-300), bf16 embeddings, the full
    # 36 x 700-epoch sweep with early stopping. (3) and (4) are left out: (4) would pad to
    # 300 tiles per bag and (3) only repeats (5)'s arithmetic 36 times.
    "embed": BenchConfig(n_bags=50_000, max_tiles=300, rows=("1", "2", "5"), scaling_seeds=(),
                         scaling_bags=(), trick_variants=(), step_variants=(), shard_devices=0,
                         fit_dtypes=("bfloat16", "float32"), data_dtype="bfloat16",
                         in_memory=True, synthetic_block_bags=1000),
}


# -- machine and versions ---------------------------------------------------------------------


def cpu_info(cpuinfo_text: str | None = None) -> dict:
    """CPU model, selected flags (true/false), logical cores and the cores this process may use.

    `amx` is true when any amx_* flag is present. Reads /proc/cpuinfo on Linux unless text is
    given; elsewhere the flags are unknown (None).
    """
    if cpuinfo_text is None:
        try:
            cpuinfo_text = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo_text = ""
    model, flags = platform.processor() or platform.machine(), None
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key == "flags" and flags is None:
            flags = set(value.split())
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    return dict(
        model=model,
        flags=None if flags is None else {f: f in flags for f in CPU_FLAGS},
        amx=None if flags is None else any(f.startswith("amx") for f in flags),
        logical_cores=os.cpu_count(),
        usable_cores=usable,
    )


# Families named in CPU model strings; the first one found goes into the CPU kind.
CPU_FAMILIES = ("xeon", "core", "epyc", "ryzen", "threadripper", "opteron", "atom", "pentium",
                "celeron", "neoverse", "graviton", "ampere")


def cpu_kind(machine: dict) -> str:
    """A file-name slug of the CPU kind of a `cpu_info` dict: vendor, family and the best bf16
    matmul feature, e.g. "intel-xeon-amx", "amd-epyc-avx512-bf16". Model numbers are left out:
    what sets the rows' speeds apart is the instruction set (AMX, AVX512-BF16, neither), so two
    machines of a kind share a results file. Unknown flags leave the feature out."""
    model = re.sub(r"\((r|tm|c)\)", " ", str(machine.get("model") or "").lower())
    words = re.findall(r"[a-z0-9]+", model)
    vendor = next((v for v in ("intel", "amd", "arm", "apple") if v in words), None)
    if vendor is None and words:
        vendor = words[0]
    family = next((w for w in words if w in CPU_FAMILIES), None)
    flags = machine.get("flags")
    feature = None
    if flags is not None:
        feature = ("amx" if machine.get("amx") else "avx512-bf16" if flags.get("avx512_bf16")
                   else "avx512" if flags.get("avx512f") else "avx2" if flags.get("avx2")
                   else "no-avx2")
    return "-".join(p for p in (vendor or "unknown-cpu", family, feature) if p)


def library_versions(names=("jax", "jaxlib", "torch", "numpy", "optax", "flax", "ml_dtypes",
                            "scikit-learn")) -> dict:
    """Installed versions, read from package metadata (nothing is imported)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# -- data ------------------------------------------------------------------------------------


def split_shapes(packed: PackedBags) -> dict:
    """Bags and tiles per split, and the padded length the naive layout would need."""
    out = {}
    for name in labels.SPLIT_NAMES:
        mask = packed.splits == labels.SPLIT_NAMES.index(name)
        counts = packed.tiles_per_bag()[mask]
        out[name] = dict(bags=int(mask.sum()), tiles=int(counts.sum()),
                         max_tiles=int(counts.max(initial=0)),
                         positives=int(packed.labels[mask].sum()))
    return out


# -- counting and timing ----------------------------------------------------------------------


def first_layer_flops(runs: int, hidden: int, dim: int, n_tiles: int) -> int:
    """Flops of one epoch's local first layer for all runs: 2 GEMMs x 2*R*hidden*D*N.

    The forward [R*hidden, D] x [D, N] and the weight gradient [R*hidden, N] x [N, D]; the
    input gradient is not needed (embeddings are data). The global stream (B*V rows) and the
    validation forward are left out: both are small beside N training tiles.
    """
    return 2 * 2 * runs * hidden * dim * n_tiles


def timed(fn: Callable[[], object], sync: Callable[[object], object]) -> tuple[float, object]:
    """(seconds, result) of one call of fn, synchronised with `sync(result)`."""
    t0 = time.perf_counter()
    out = fn()
    sync(out)
    return time.perf_counter() - t0, out


def summarise(seconds: list[float]) -> dict:
    """The headline is the fastest repeat: on a shared machine other processes only ever add
    time, so the minimum is the least disturbed estimate; median and all repeats are kept."""
    return dict(seconds=min(seconds), median_seconds=statistics.median(seconds),
                mean_seconds=statistics.fmean(seconds), all_seconds=list(seconds))


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water RSS mark (VmHWM) of this process; False if not possible.

    Writing "5" to /proc/self/clear_refs does it (Linux >= 4.0), so the peak measured after
    data preparation is the training's own.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_now() -> dict:
    """Current and peak RSS of this process in bytes (VmRSS, VmHWM; ru_maxrss since start)."""
    out = dict(max_rss_since_start=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


# -- (4) the naive padded layout --------------------------------------------------------------


class PaddedBatch(NamedTuple):
    """B bags padded to T tiles: views [B, V, D], views_mask [B, V], tiles [B, T, D],
    tiles_mask [B, T], labels [B] float32, weights [B] float32."""

    views: object
    views_mask: object
    tiles: object
    tiles_mask: object
    labels: object
    weights: object


def pad_bags(packed: PackedBags, *, weights=None, dtype="float32") -> PaddedBatch:
    """Numpy PaddedBatch of PackedBags (tile_bag non-decreasing); T = the split's most tiles."""
    b, n = packed.n_bags, len(packed.tile_bag)
    counts = np.bincount(packed.tile_bag, minlength=b)
    t = max(1, int(counts.max(initial=0)))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(n) - starts[packed.tile_bag]
    np_dtype = numpy_dtype(dtype)
    tiles = np.zeros((b, t, packed.dim), np_dtype)  # [B, T, D]
    tiles[packed.tile_bag, pos] = packed.tiles
    mask = np.zeros((b, t), bool)
    mask[packed.tile_bag, pos] = True
    return PaddedBatch(
        views=np.asarray(packed.views, np_dtype), views_mask=np.asarray(packed.views_mask),
        tiles=tiles, tiles_mask=mask, labels=np.asarray(packed.labels, np.float32),
        weights=np.ones(b, np.float32) if weights is None else np.asarray(weights, np.float32),
    )


def padded_init(key, dim: int, hidden: int = 16, proj: int = 8) -> dict:
    """Parameters of the padded head, PyTorch's default Linear init, the latent ~ N(0, 1)."""
    import jax

    keys = iter(jax.random.split(key, 16))

    def linear(n_in, n_out):
        bound = 1.0 / math.sqrt(n_in)
        return dict(kernel=jax.random.uniform(next(keys), (n_in, n_out), minval=-bound,
                                              maxval=bound),
                    bias=jax.random.uniform(next(keys), (n_out,), minval=-bound, maxval=bound))

    return dict(
        global_proj={"0": linear(dim, hidden), "1": linear(hidden, proj)},
        local_proj={"0": linear(dim, hidden), "1": linear(hidden, proj)},
        local_attn=dict(k=linear(proj, proj), v=linear(proj, proj),
                        latent=jax.random.normal(next(keys), (proj,))),
        linear_out=linear(2 * proj, 1),
    )


def padded_logits(params: dict, batch: PaddedBatch, first_layer_dtype: str = "float32"):
    """Logits [B] of the full MIL-PF head on a padded batch (max over views, latent attention
    over the masked tiles); the dense, mask-everything way."""
    import jax
    import jax.numpy as jnp

    def mlp(p, x):  # [..., D] -> [..., 8]
        if first_layer_dtype == "bfloat16":
            h = jnp.dot(x.astype(jnp.bfloat16), p["0"]["kernel"].astype(jnp.bfloat16),
                        preferred_element_type=jnp.float32)
        else:
            h = jnp.dot(x.astype(jnp.float32), p["0"]["kernel"])
        h = jax.nn.relu(h + p["0"]["bias"])
        return jax.nn.relu(h @ p["1"]["kernel"] + p["1"]["bias"])

    hv = mlp(params["global_proj"], batch.views)  # [B, V, 8]
    g = jnp.max(jnp.where(batch.views_mask[..., None], hv, 0.0), axis=1)  # ReLU outputs >= 0
    ht = mlp(params["local_proj"], batch.tiles)  # [B, T, 8]
    att = params["local_attn"]
    keys = ht @ att["k"]["kernel"] + att["k"]["bias"]
    values = ht @ att["v"]["kernel"] + att["v"]["bias"]
    scores = keys @ att["latent"] / math.sqrt(att["latent"].shape[0])  # [B, T]
    masked = jnp.where(batch.tiles_mask, scores, -jnp.inf)
    top = jnp.max(masked, axis=1, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0.0)  # an empty bag: no finite score
    e = jnp.where(batch.tiles_mask, jnp.exp(jnp.where(batch.tiles_mask, scores - top, 0.0)), 0.0)
    w = e / jnp.maximum(e.sum(axis=1, keepdims=True), 1e-30)  # [B, T], zeros for empty bags
    local = jnp.einsum("bt,btf->bf", w, values)  # [B, 8]
    z = jnp.concatenate([g, local], axis=-1)
    return (z @ params["linear_out"]["kernel"] + params["linear_out"]["bias"])[:, 0]


def padded_epoch_step(state, lr_wd, train: PaddedBatch, val: PaddedBatch,
                      first_layer_dtype: str = "float32"):
    """One full-batch step of the padded head: weighted BCE, the trainer's Adam (coupled L2),
    then the validation AUC, as in `train.epoch_step`. state = (params, opt_state),
    lr_wd = (learning rate, weight decay); returns (state, (loss, val_auc))."""
    import jax
    import optax

    from milpf_jax.learning.auc import auc_jax
    from milpf_jax.learning.train import adam_l2

    params, opt_state = state

    def loss_fn(p):
        bce = optax.sigmoid_binary_cross_entropy(padded_logits(p, train, first_layer_dtype),
                                                 train.labels)
        return (train.weights * bce).sum() / (train.weights > 0).sum()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = adam_l2(*lr_wd).update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    auc = auc_jax(padded_logits(params, val, first_layer_dtype), val.labels)
    return (params, opt_state), (loss, auc)


# -- (1) and (2): the head as the original PyTorch code runs it -------------------------------


_TORCH_HEAD_CLASS = None


def _torch_head_class():
    """The head's nn.Module class, made once: torch.compile guards on a module's type, so
    runs whose heads had a class each would recompile per run (and past Dynamo's recompile
    limit silently run eagerly)."""
    global _TORCH_HEAD_CLASS
    if _TORCH_HEAD_CLASS is not None:
        return _TORCH_HEAD_CLASS
    import torch
    from torch import nn

    class OriginalStyleHead(nn.Module):
        def __init__(self, dim: int, hidden: int, proj: int):
            super().__init__()
            self.proj = proj
            self.global_proj = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(),
                                             nn.Linear(hidden, proj), nn.ReLU())
            self.local_proj = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(),
                                            nn.Linear(hidden, proj), nn.ReLU())
            self.k = nn.Linear(proj, proj)
            self.v = nn.Linear(proj, proj)
            self.latent = nn.Parameter(torch.randn(1, proj))
            self.linear_out = nn.Linear(2 * proj, 1)

        def forward(self, views, views_mask, tiles, tile_bag, n_bags: int):
            proj = self.proj
            hv = self.global_proj(views)  # [B, V, 8]
            g = hv.masked_fill(~views_mask[..., None], 0).amax(dim=1)  # ReLU outputs >= 0
            ht = self.local_proj(tiles)  # [N, 8]
            keys, values = self.k(ht), self.v(ht)
            scores = (keys @ self.latent.T).squeeze(-1) / math.sqrt(proj)  # [N]
            # Scatter softmax per bag. The max only shifts the exponent (softmax is
            # shift-invariant), so it needs no gradient.
            with torch.no_grad():
                top = scores.new_full((n_bags,), -math.inf).scatter_reduce(
                    0, tile_bag, scores, reduce="amax", include_self=True)
            e = torch.exp(scores - top[tile_bag])
            denom = e.new_zeros(n_bags).index_add(0, tile_bag, e)
            weighted = (e / denom[tile_bag])[:, None] * values  # [N, 8]
            local = weighted.new_zeros(n_bags, proj).index_add(0, tile_bag, weighted)
            z = torch.cat([g.to(local.dtype), local], dim=-1)
            return self.linear_out(z).squeeze(-1)

    _TORCH_HEAD_CLASS = OriginalStyleHead
    return OriginalStyleHead


def torch_head(dim: int, hidden: int = 16, proj: int = 8):
    """The MIL-PF head from the paper's equations in PyTorch, ragged tiles, one run.

    Names and shapes follow the original (see milpf_jax.learning.convert). Call with views
    [B, V, D],
    views_mask [B, V] bool, tiles [N, D], tile_bag [N] int64, n_bags; returns logits [B].
    """
    return _torch_head_class()(dim, hidden, proj)


def torch_batch(packed: PackedBags, *, weights=None, device="cpu",
                dtype: str = "float32") -> dict:
    """Tensors of a PackedBags for `torch_head`; the embeddings (views, tiles) in `dtype`:
    float32 is what the original code feeds, bfloat16 what rows (2b) and (2c) hold."""
    import torch

    def tensor(a):
        a = np.asarray(a)
        if a.dtype == numpy_dtype("bfloat16"):
            return torch.from_numpy(a.view(np.uint16).copy()).view(torch.bfloat16).to(device)
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    embed = dict(float32=torch.float32, bfloat16=torch.bfloat16)[dtype]
    w = np.ones(packed.n_bags, np.float32) if weights is None else weights
    return dict(
        views=tensor(packed.views).to(embed), views_mask=tensor(packed.views_mask),
        tiles=tensor(packed.tiles).to(embed), tile_bag=tensor(packed.tile_bag).long(),
        n_bags=packed.n_bags, labels=tensor(packed.labels).float(),
        weights=tensor(np.asarray(w, np.float32)), labels_np=np.asarray(packed.labels),
    )


def torch_epoch_step(model, opt, train: dict, val: dict, *, autocast: bool,
                     forward=None) -> tuple:
    """One full-batch step (weighted BCE, Adam), then the validation AUC: (loss, val_auc).
    `forward`: what computes the logits (default the model; rows (1c), (2c): the model under
    torch.compile, sharing its parameters)."""
    import contextlib

    import torch
    import torch.nn.functional as F
    from sklearn.metrics import roc_auc_score

    device = train["tiles"].device.type
    forward = model if forward is None else forward

    def ctx():
        return torch.autocast(device, dtype=torch.bfloat16) if autocast \
            else contextlib.nullcontext()

    args = ("views", "views_mask", "tiles", "tile_bag", "n_bags")
    opt.zero_grad(set_to_none=True)
    with ctx():
        logits = forward(*(train[a] for a in args))
    loss = F.binary_cross_entropy_with_logits(logits.float(), train["labels"],
                                              weight=train["weights"])
    loss.backward()
    opt.step()
    with torch.no_grad(), ctx():
        val_logits = forward(*(val[a] for a in args)).float()
    return float(loss.detach()), float(roc_auc_score(val["labels_np"],
                                                     val_logits.cpu().numpy()))


# The PyTorch rows: the original loop (1), under bf16 autocast (2), with the embeddings held in
# bf16 on the device (2b), and (1), (2b) under torch.compile (1c, 2c). "dtype" is the first
# layer's (what the table's first-layer column and the ratio columns go by).
TORCH_ROWS = {
    "1": dict(autocast=False, embeddings="float32", compile=False, dtype="float32",
              name="PyTorch, original loop, runs one after another"),
    "1c": dict(autocast=False, embeddings="float32", compile=True, dtype="float32",
               name="PyTorch, (1) under torch.compile"),
    "2": dict(autocast=True, embeddings="float32", compile=False, dtype="bfloat16",
              name="PyTorch, same loop, bf16 autocast, f32 embeddings"),
    "2b": dict(autocast=True, embeddings="bfloat16", compile=False, dtype="bfloat16",
               name="PyTorch, bf16 autocast, bf16 embeddings"),
    "2c": dict(autocast=True, embeddings="bfloat16", compile=True, dtype="bfloat16",
               name="PyTorch, (2b) under torch.compile"),
}
def measure_torch(packed: PackedBags, cfg: BenchConfig, *, autocast: bool,
                  embeddings: str = "float32", compile: bool = False,
                  backend: object = "inductor", device: str = "cpu") -> dict:
    """A PyTorch row (TORCH_ROWS): seconds per epoch of all runs, one after another.

    One warm-up epoch (with compile, it compiles), then cfg.timed_epochs timed ones; `loss`
    and `val_auc` are [epochs + 1][R], the warm-up first, as the JAX rows. With compile, each
    head is wrapped in torch.compile(backend, dynamic=False) (one head class, so every run
    shares the two compiled graphs, training and validation); a compiler that fails (no C
    compiler, an inductor error) gives {"skipped": reason} instead of a row.
    """
    import torch

    if compile:
        torch._dynamo.reset()  # each compiled row compiles afresh, within the recompile limit
    tr, va = packed.split("train"), packed.split("val")
    train = torch_batch(tr, weights=class_weights(tr.labels), device=device, dtype=embeddings)
    val = torch_batch(va, device=device, dtype=embeddings)
    runs = []
    for seed in range(cfg.seeds):
        torch.manual_seed(seed)
        model = torch_head(packed.dim).to(device)
        forward = torch.compile(model, backend=backend, dynamic=False) if compile else model
        runs.append((model, forward, torch.optim.Adam(model.parameters(), lr=cfg.learning_rate,
                                                      weight_decay=cfg.weight_decay)))

    def epoch():
        return [torch_epoch_step(m, o, train, val, autocast=autocast, forward=f)
                for m, f, o in runs]

    def sync(_):
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    if compile:
        from torch._dynamo.utils import counters

        counters.clear()
        try:
            first, out = timed(epoch, sync)
        except Exception as err:  # noqa: BLE001 (any compiler failure skips the row)
            reason = f"torch.compile({backend!r}) failed: {type(err).__name__}: {err}"
            return dict(skipped=reason[:2000], device=device, threads=torch.get_num_threads())
    else:
        first, out = timed(epoch, sync)
    seconds, history = [], [out]
    for _ in range(cfg.timed_epochs):
        s, out = timed(epoch, sync)
        seconds.append(s)
        history.append(out)
    result = dict(first_epoch_seconds=first, **summarise(seconds),
                  loss=[[x for x, _ in h] for h in history],
                  val_auc=[[a for _, a in h] for h in history],
                  threads=torch.get_num_threads(), device=device, autocast=autocast,
                  embeddings=embeddings, compiled=compile)
    if compile:
        # The warm-up epoch compiled; what it took beyond a steady epoch is the compile time.
        result["compile_seconds"] = max(first - result["seconds"], 0.0)
        result["compile_backend"] = str(backend)
        stats = {k: dict(v) for k, v in counters.items()}
        result["compiled_graphs"] = stats.get("stats", {}).get("unique_graphs")
        result["dynamo_counters"] = {k: stats.get(k, {}) for k in ("frames", "stats",
                                                                   "graph_break")}
        # Past the recompile limit Dynamo runs the rest eagerly: a row then is not compiled.
        result["recompile_limit_hit"] = any("recompile" in k.lower() and "limit" in k.lower()
                                            for k in stats.get("unimplemented", {}))
    return result


def measure_matmul_torch(m: int, k: int, n: int, dtype: str, *, device="cpu",
                         repeats: int = 5) -> dict:
    """Roofline: [m, k] x [k, n] in PyTorch (bf16 inputs give bf16 output, f32 accumulation)."""
    import torch

    tdtype = dict(float32=torch.float32, bfloat16=torch.bfloat16)[dtype]
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(device=device, dtype=tdtype)
    b = torch.randn(k, n, generator=gen).to(device=device, dtype=tdtype)

    def sync(_):
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    first, _ = timed(lambda: a @ b, sync)
    seconds = [timed(lambda: a @ b, sync)[0] for _ in range(repeats)]
    out = summarise(seconds)
    return dict(first_seconds=first, **out, tflops=2 * m * k * n / out["seconds"] / 1e12,
                shape=[m, k, n], dtype=dtype, library="torch")


# -- (6) JAX rooflines; (3) and (5) --------------------------------------------------------------


def measure_matmul_jax(m: int, k: int, n: int, dtype: str, *, repeats: int = 5) -> dict:
    """Roofline: [m, k] x [k, n] in JAX, bf16 inputs accumulated in f32
    (preferred_element_type), the shapes of the first layer for all runs."""
    import jax
    import jax.numpy as jnp

    jdtype = dict(float32=jnp.float32, bfloat16=jnp.bfloat16)[dtype]
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (m, k), jnp.float32).astype(jdtype)
    b = jax.random.normal(kb, (k, n), jnp.float32).astype(jdtype)
    mm = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    t0 = time.perf_counter()
    compiled = mm.lower(a, b).compile()
    compile_seconds = time.perf_counter() - t0
    first, _ = timed(lambda: compiled(a, b), jax.block_until_ready)
    seconds = [timed(lambda: compiled(a, b), jax.block_until_ready)[0] for _ in range(repeats)]
    out = summarise(seconds)
    return dict(compile_seconds=compile_seconds, first_seconds=first, **out,
                tflops=2 * m * k * n / out["seconds"] / 1e12, shape=[m, k, n], dtype=dtype,
                library="jax")


def run_grid(seeds: int, cfg: BenchConfig):
    """Keys and Hparams of `seeds` runs at the config's learning rate and weight decay."""
    from milpf_jax.learning import train as T

    keys, hp, _ = T.hparam_grid(seeds, [cfg.learning_rate], [cfg.weight_decay])
    return keys, hp


def measure_vmapped(data, train_cfg, keys, hparams, epochs: int, *, devices=None) -> dict:
    """Row (5): `epoch_step` vmapped over runs, compiled once; one warm-up epoch, then
    `epochs` timed epochs. With `devices`, runs are sharded over them and the data replicated.
    Returns timings, per-epoch val_auc and loss [epochs + 1][R], the final state and XLA's temp
    buffer of the compiled step (step_temp_bytes; None where the backend does not say)."""
    import functools

    import jax

    from milpf_jax.learning import train as T

    init = jax.jit(jax.vmap(functools.partial(T.init_state, cfg=train_cfg),
                            in_axes=(0, 0, None)))
    state = init(keys, hparams, data)
    if devices is not None:
        from milpf_jax.learning.sharding import place

        state, data = place(state, data, devices, "runs")
    step = jax.jit(jax.vmap(functools.partial(T.epoch_step, cfg=train_cfg), in_axes=(0, None)))
    t0 = time.perf_counter()
    compiled = step.lower(state, data).compile()
    compile_seconds = time.perf_counter() - t0
    # XLA's temp buffer: the step's working memory (memory_analysis may be None).
    temp_bytes = getattr(compiled.memory_analysis(), "temp_size_in_bytes", None)
    seconds, aucs, losses = [], [], []
    for _ in range(epochs + 1):
        s, (state, hist) = timed(lambda st=state: compiled(st, data), jax.block_until_ready)
        seconds.append(s)
        aucs.append(np.asarray(hist.val_auc).tolist())
        losses.append(np.asarray(hist.loss).tolist())
    return dict(compile_seconds=compile_seconds, first_epoch_seconds=seconds[0],
                **summarise(seconds[1:]), val_auc=aucs, loss=losses, state=state,
                step_temp_bytes=temp_bytes)


def measure_sequential(data, train_cfg, keys, hparams, epochs: int) -> dict:
    """Row (3): one run's jitted `epoch_step`, called for each run in a Python loop."""
    import functools

    import jax

    from milpf_jax.learning import train as T

    init = jax.jit(functools.partial(T.init_state, cfg=train_cfg))
    runs = len(keys)
    states = [init(keys[r], jax.tree_util.tree_map(lambda a, r=r: a[r], hparams), data)
              for r in range(runs)]
    step = jax.jit(functools.partial(T.epoch_step, cfg=train_cfg))
    t0 = time.perf_counter()
    compiled = step.lower(states[0], data).compile()
    compile_seconds = time.perf_counter() - t0

    def epoch():
        out = [compiled(s, data) for s in states]
        states[:] = [s for s, _ in out]
        return [h for _, h in out]

    seconds, aucs, losses = [], [], []
    for _ in range(epochs + 1):
        s, hists = timed(epoch, jax.block_until_ready)
        seconds.append(s)
        aucs.append([float(h.val_auc) for h in hists])
        losses.append([float(h.loss) for h in hists])
    return dict(compile_seconds=compile_seconds, first_epoch_seconds=seconds[0],
                **summarise(seconds[1:]), val_auc=aucs, loss=losses)


def measure_padded(train: PaddedBatch, val: PaddedBatch, dim: int, keys, hparams, epochs: int,
                   first_layer_dtype: str = "float32") -> dict:
    """Row (4): the padded head's step vmapped over runs (params from each run's key)."""
    import functools

    import jax
    import jax.numpy as jnp

    from milpf_jax.learning.train import adam_l2

    train, val = (PaddedBatch(*map(jnp.asarray, b)) for b in (train, val))

    def init(key, lr, wd):
        params = padded_init(key, dim)
        return params, adam_l2(lr, wd).init(params)

    lr_wd = (hparams.learning_rate, hparams.weight_decay)
    state = jax.jit(jax.vmap(init))(keys, *lr_wd)
    step = jax.jit(jax.vmap(functools.partial(padded_epoch_step,
                                              first_layer_dtype=first_layer_dtype),
                            in_axes=(0, 0, None, None)))
    t0 = time.perf_counter()
    compiled = step.lower(state, lr_wd, train, val).compile()
    compile_seconds = time.perf_counter() - t0
    seconds, aucs = [], []
    for _ in range(epochs + 1):
        s, (state, (_, auc)) = timed(lambda st=state: compiled(st, lr_wd, train, val),
                                     jax.block_until_ready)
        seconds.append(s)
        aucs.append(np.asarray(auc).tolist())
    return dict(compile_seconds=compile_seconds, first_epoch_seconds=seconds[0],
                **summarise(seconds[1:]), val_auc=aucs)


def profile_step(data, train_cfg, state, repeats: int = 3) -> dict:
    """Seconds of the pieces of (5)'s step, each compiled alone and vmapped over runs: the
    training forward (loss), forward + backward (loss and gradient), and the validation
    forward + AUC. What is left of the step (Adam, keep-best, patience) is the step time
    minus the last two. Each piece returns only [R] scalars (the gradient is reduced to its
    squared norm), so XLA keeps the layouts it would choose inside the step. Uses
    `train.loss_fn` and `train.val_auc`."""
    import functools

    import jax
    import jax.numpy as jnp

    from milpf_jax.learning import train as T

    loss = functools.partial(T.loss_fn, head=train_cfg.head)

    def loss_and_grad_norm(params, batch):
        value, grads = jax.value_and_grad(loss)(params, batch)
        return value, sum(jnp.sum(g * g) for g in jax.tree_util.tree_leaves(grads))

    pieces = (
        ("forward", loss, data.train),
        ("loss_and_grad", loss_and_grad_norm, data.train),
        ("validation", functools.partial(T.val_auc, head=train_cfg.head), data.val),
    )
    out = {}
    for name, fn, batch in pieces:
        compiled = jax.jit(jax.vmap(fn, in_axes=(0, None))).lower(state.params, batch).compile()
        timed(lambda c=compiled, b=batch: c(state.params, b), jax.block_until_ready)
        out[name] = min(  # the least disturbed repeat, as `summarise`
            timed(lambda c=compiled, b=batch: c(state.params, b), jax.block_until_ready)[0]
            for _ in range(repeats))
    return out


def measure_fit(data, test_batch, train_cfg, keys, hparams) -> dict:
    """A full sweep with `train.fit` (early stopping): compile and training seconds, epochs
    run, and each run's best-validation AUC and test AUC (f32 predictions)."""
    from sklearn.metrics import roc_auc_score

    from milpf_jax.learning import train as T

    result = T.fit(keys, hparams, data, train_cfg, progress=False)
    probs = T.predict_runs(result.state.best_params, test_batch, train_cfg.head)  # [R, B]
    y = np.asarray(test_batch.labels)
    test_auc = [float(roc_auc_score(y, p)) for p in probs]
    best_val = np.asarray(result.state.best_val_auc)
    return dict(compile_seconds=result.compile_seconds, train_seconds=result.train_seconds,
                epochs_run=int(result.epochs_run), val_auc=best_val.tolist(),
                test_auc=test_auc, best_run_test_auc=test_auc[int(np.argmax(best_val))],
                test_auc_mean=float(np.mean(test_auc)), test_auc_std=float(np.std(test_auc)))
