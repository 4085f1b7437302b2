"""Process settings that must precede the process (or jax's import) for fast CPU training.

XLA:CPU frees and re-allocates hundreds of MB per training step, and page faults can eat a
large share of the step; glibc's allocator keeps that memory with the settings below (the
README's performance section measures them: benchmarks/benchmark.py, "process settings").
glibc reads GLIBC_TUNABLES only at process start, so `configure_process()` re-executes the
script once with it set. XLA aborts on an unknown flag, so the XLA flag is probed once per jaxlib
version (in a subprocess) before use.

Call it first thing in an entry point, before anything imports jax:

    from milpf_jax.runtime import configure_process
    configure_process()

Set MILPF_NO_TUNING=1 to leave the process as it is.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from milpf_jax.files import write_text
from milpf_jax.paths import cache_root

GLIBC_TUNABLES = ("glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
                  "glibc.malloc.trim_threshold=68719476736")
# Stops XLA:CPU's YNNPACK fusions from materialising broadcasts in reductions.
XLA_CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-reduce",)
_MARK = "MILPF_TUNED"


def _cache_file() -> Path:
    return cache_root() / "xla_flags.json"


def _jaxlib_version() -> str | None:
    try:
        return importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return None


def supported_xla_flags(flags=XLA_CPU_FLAGS) -> list[str]:
    """The flags this jaxlib accepts, probed in a subprocess once and cached per version."""
    version = _jaxlib_version()
    if version is None:
        return []
    cache = _cache_file()
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    key = f"{version}|{' '.join(flags)}"
    if key not in known:
        ok = []
        for flag in flags:
            env = dict(os.environ, XLA_FLAGS=flag, JAX_PLATFORMS="cpu")
            probe = subprocess.run([sys.executable, "-c", "import jax; jax.numpy.zeros(1)"],
                                   env=env, capture_output=True, timeout=120)
            if probe.returncode == 0:
                ok.append(flag)
        known[key] = ok
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_text(cache, json.dumps(known))
        except OSError:
            pass  # a read-only home only costs a probe next time
    return known[key]


def configure_process() -> None:
    """Re-exec once with GLIBC_TUNABLES and XLA_FLAGS set (Linux/glibc, CPU); else no-op."""
    if os.environ.get("MILPF_NO_TUNING") or os.environ.get(_MARK):
        return
    if not sys.platform.startswith("linux") or "jax" in sys.modules:
        return
    env = dict(os.environ)
    env[_MARK] = "1"
    if not env.get("GLIBC_TUNABLES"):
        env["GLIBC_TUNABLES"] = GLIBC_TUNABLES
    flags = env.get("XLA_FLAGS", "")
    extra = [f for f in supported_xla_flags() if f.split("=")[0] not in flags]
    if extra:
        env["XLA_FLAGS"] = " ".join([flags, *extra]).strip()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU computes bf16 natively (AMX or AVX512-BF16): there bf16 autocast
    speeds the encoders up (README, "Performance"); without either flag bf16 is emulated and
    slower than float32.
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass  # not Linux: fall through to float32
    return False


FIRST_LAYER_ENV = "MILPF_FIRST_LAYER_DTYPE"  # what "auto" resolves to, when set


def default_first_layer_dtype() -> str:
    """What `first_layer_dtype="auto"` resolves to: $MILPF_FIRST_LAYER_DTYPE when set (float32
    or bfloat16: runs comparable across machines, the tests' float32 references), else
    bfloat16 (f32 accumulation) where the hardware computes it natively, else float32.

    On the phantom, 36 seeds' test AUCs with a bf16 first layer stayed within noise of f32
    (README, "Performance"), and bf16 halves the first layer's memory traffic; on a CPU without
    native bf16 it would be emulated and slower.
    """
    forced = os.environ.get(FIRST_LAYER_ENV, "").strip()
    if forced:
        if forced not in ("float32", "bfloat16"):
            raise ValueError(f"${FIRST_LAYER_ENV}={forced!r}: expected float32 or bfloat16")
        return forced
    import jax

    if jax.default_backend() in ("gpu", "tpu"):
        return "bfloat16"
    return "bfloat16" if cpu_has_fast_bf16() else "float32"


# A chunk of `attention_stream` keeps about this many bytes per tile and run in flight: the
# first layer's output, the features recomputed from it and their gradients (16 and 8 float32
# each). The "auto" chunk holds that for one run within one core's L2 cache.
CHUNK_BYTES_PER_TILE = 512
CHUNK_TILES_RANGE = (1024, 16384)
CHUNK_TILES_FALLBACK = 4096  # a 2 MiB L2, where the cache cannot be read
GPU_CHUNK_TILES = 8192  # the earlier default, where no L2 cache is read (GPU, TPU)


def l2_cache_bytes(sysfs: str = "/sys/devices/system/cpu/cpu0/cache") -> int | None:
    """One core's L2 cache in bytes, from Linux's sysfs; None where it cannot be read."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        for index in sorted(Path(sysfs).glob("index*")):
            if (index / "level").read_text().strip() != "2":
                continue
            size = (index / "size").read_text().strip()
            factor = units.get(size[-1:].upper(), 1)
            return int(size.rstrip("KMGkmg")) * factor
    except (OSError, ValueError):
        return None
    return None


def chunk_tiles_for_l2(l2_bytes: int | None) -> int:
    """Tiles per chunk for a core with `l2_bytes` of L2: L2 / CHUNK_BYTES_PER_TILE rounded down
    to a power of two, within CHUNK_TILES_RANGE (CHUNK_TILES_FALLBACK for None)."""
    if not l2_bytes or l2_bytes <= 0:
        return CHUNK_TILES_FALLBACK
    low, high = CHUNK_TILES_RANGE
    tiles = 1 << max(0, (l2_bytes // CHUNK_BYTES_PER_TILE).bit_length() - 1)
    return min(max(tiles, low), high)


def default_chunk_tiles() -> int:
    """What a chunk size of "auto" (`HeadImpl`) resolves to: from the CPU's L2 cache on CPU
    (4096 tiles for a 2 MiB L2; README, "Performance", measures the step against it), else
    GPU_CHUNK_TILES."""
    import jax

    if jax.default_backend() != "cpu":
        return GPU_CHUNK_TILES
    return chunk_tiles_for_l2(l2_cache_bytes())
