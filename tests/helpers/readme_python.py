"""`python` for the README's cluster commands: the coupled stand-in encoder registered under the
encoder names the README uses, then the script run as `python SCRIPT ARGS` runs it.

A test puts an executable `python` that runs `python -m helpers.readme_python "$@"` first on
PATH, so a shell script from the README (the sbatch body) runs unchanged but offline and fast.
`ReadmeShard` does the same for the jobs of `extract.py --submit local`.
"""

from __future__ import annotations

import dataclasses
import runpy
import sys
from dataclasses import dataclass

from helpers.standin import STANDIN, StandIn, standin_spec
from milpf_jax.extraction import encoders
from milpf_jax.extraction.submit import ExtractShard

README_ENCODERS = ("medsiglip",)


def install(setitem=None, setattr_=None) -> None:
    """Register the coupled stand-in as each of README_ENCODERS (and under its own name)."""
    setitem = setitem or (lambda m, k, v: m.__setitem__(k, v))
    setattr_ = setattr_ or setattr
    specs = {name: dataclasses.replace(standin_spec(), name=name)
             for name in (*README_ENCODERS, STANDIN)}
    real = encoders.get_encoder

    def get_encoder(name, **kw):
        if name not in specs:
            return real(name, **kw)
        return StandIn(specs[name], coupling=0.5)

    for name, spec in specs.items():
        setitem(encoders.ENCODERS, name, spec)
    setattr_(encoders, "get_encoder", get_encoder)


@dataclass(frozen=True)
class ReadmeShard(ExtractShard):
    def __call__(self):
        install()
        return super().__call__()


if __name__ == "__main__":
    install()
    script, *args = sys.argv[1:]
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")
