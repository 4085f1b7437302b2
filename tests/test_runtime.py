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
