import os
import subprocess
import sys

import pytest

from milpf_jax import runtime

SCRIPT = """
if __name__ == "__main__":
    from milpf_jax.runtime import configure_process
    configure_process()
import os, sys
print(os.environ.get("GLIBC_TUNABLES", "-"), "|", os.environ.get("XLA_FLAGS", "-"), "|",
      " ".join(sys.argv[1:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc re-exec is Linux-only")
def test_entry_point_reexecs_once_with_settings(tmp_path):
    script = tmp_path / "entry.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", "XLA_FLAGS", "MILPF_TUNED", "MILPF_NO_TUNING")}
    env["MILPF_CACHE"] = str(tmp_path / "cache")
    out = subprocess.run([sys.executable, str(script), "--a", "b c"], env=env,
                         capture_output=True, text=True, check=True).stdout.strip().split(" | ")
    assert out[0] == runtime.GLIBC_TUNABLES
    assert out[1] == " ".join(runtime.supported_xla_flags())
    assert out[2] == "--a b c"  # arguments survive the re-exec
    assert (tmp_path / "cache" / "xla_flags.json").exists()  # the probe is cached
    env["MILPF_NO_TUNING"] = "1"
    out = subprocess.run([sys.executable, str(script), "x"], env=env, capture_output=True,
                         text=True, check=True).stdout.strip().split(" | ")
    assert out[:2] == ["-", "-"]


def test_unknown_xla_flags_are_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv("MILPF_CACHE", str(tmp_path))
    flags = runtime.supported_xla_flags(("--xla_this_flag_does_not_exist=1",))
    assert flags == []


def test_auto_first_layer_dtype_follows_the_variable(monkeypatch):
    from milpf_jax import runtime

    monkeypatch.setenv("MILPF_FIRST_LAYER_DTYPE", "bfloat16")
    assert runtime.default_first_layer_dtype() == "bfloat16"
    monkeypatch.setenv("MILPF_FIRST_LAYER_DTYPE", "float32")
    assert runtime.default_first_layer_dtype() == "float32"
    monkeypatch.setenv("MILPF_FIRST_LAYER_DTYPE", "fp8")
    with pytest.raises(ValueError, match=r"MILPF_FIRST_LAYER_DTYPE='fp8': expected float32"):
        runtime.default_first_layer_dtype()
    monkeypatch.delenv("MILPF_FIRST_LAYER_DTYPE")
    assert runtime.default_first_layer_dtype() == (
        "bfloat16" if runtime.cpu_has_fast_bf16() else "float32")


def _cache_dir(root, entries):
    """A sysfs-like cache folder: entries [(level, type, size)]."""
    for i, (level, kind, size) in enumerate(entries):
        index = root / f"index{i}"
        index.mkdir(parents=True)
        (index / "level").write_text(f"{level}\n")
        (index / "type").write_text(f"{kind}\n")
        (index / "size").write_text(f"{size}\n")
    return root


def test_auto_chunk_size_comes_from_the_l2_cache(tmp_path):
    xeon = _cache_dir(tmp_path / "xeon", [(1, "Data", "48K"), (1, "Instruction", "64K"),
                                          (2, "Unified", "2048K"), (3, "Unified", "491520K")])
    epyc = _cache_dir(tmp_path / "epyc", [(1, "Data", "32K"), (2, "Unified", "1024K")])
    assert runtime.l2_cache_bytes(str(xeon)) == 2 << 20
    assert runtime.l2_cache_bytes(str(epyc)) == 1 << 20
    assert runtime.l2_cache_bytes(str(tmp_path / "none")) is None
    # L2 / 512 bytes a tile, rounded down to a power of two, within [1024, 16384].
    assert runtime.chunk_tiles_for_l2(2 << 20) == 4096
    assert runtime.chunk_tiles_for_l2(1 << 20) == 2048
    assert runtime.chunk_tiles_for_l2(1280 << 10) == 2048
    assert runtime.chunk_tiles_for_l2(256 << 10) == 1024
    assert runtime.chunk_tiles_for_l2(64 << 20) == 16384
    assert runtime.chunk_tiles_for_l2(None) == runtime.CHUNK_TILES_FALLBACK == 4096


def test_a_resolved_head_records_concrete_chunk_sizes():
    from milpf_jax.config import ConfigError
    from milpf_jax.learning.head import HeadConfig, HeadImpl

    head = HeadConfig().resolved()
    expected = runtime.default_chunk_tiles()
    assert head.impl.forward_chunk_tiles == head.impl.backward_chunk_tiles == expected
    assert head.first_layer_dtype in ("float32", "bfloat16")
    pinned = HeadConfig(impl=HeadImpl(forward_chunk_tiles=None, backward_chunk_tiles=512))
    assert pinned.resolved().impl == pinned.impl  # concrete sizes are kept
    with pytest.raises(ConfigError, match="backward_chunk_tiles"):
        HeadImpl(backward_chunk_tiles="big")
    with pytest.raises(ConfigError, match="forward_chunk_tiles"):
        HeadImpl(forward_chunk_tiles=0)
