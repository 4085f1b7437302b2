"""Jobs for the submitit tests: `ExtractShard` with the stand-in encoder, optionally killed.

The local executor runs each job in a fresh Python process that unpickles the job, so the
stand-in cannot be monkeypatched in: `StandinShard` installs it in that process (tests put
tests/ on PYTHONPATH so the child can import this module). `kill=(shard, attempt, call)` makes
that attempt of that shard SIGKILL itself at the given encoder call, mid-shard.
"""

from __future__ import annotations

from dataclasses import dataclass

from helpers.standin import Patch, install_standin
from milpf_jax.extraction.submit import ExtractShard


@dataclass(frozen=True)
class StandinShard(ExtractShard):
    kill: tuple[int, int, int] | None = None

    def __call__(self):
        hit = self.kill is not None and (self.shard[0], self.attempt) == tuple(self.kill[:2])
        install_standin(Patch.setitem, setattr, coupling=0.5,
                        kill_at_call=self.kill[2] if hit else None)
        return super().__call__()
