"""Keep a benchmark run as the results of its CPU kind: benchmarks/results/<kind>.{json,md}.

    python benchmarks/benchmark.py --no-scaling --no-tricks --no-step-variants \
        --rows 1,1c,2,2b,2c,5 --out bench-out
    python benchmarks/save_results.py bench-out     # -> benchmarks/results/intel-xeon-amx.*

The kind (`harness.cpu_kind`) is a slug of the run's machine block: vendor, family and the best
bf16 matmul feature (AMX, AVX512-BF16, neither), e.g. intel-xeon-amx or amd-epyc-avx512-bf16.
The .md is the run's benchmark.md under a line naming the kind and the run; the .json is the
run's benchmark.json with `cpu_kind` and `machine_line` (the table's "Machine:" line) added.
Either replaces an earlier run of the same kind. What names the measuring machine's own folders
(the run's --out, the compiler's temporary cache) is written as OUT and TEMPORARY, so the
committed files speak of the CPU kind only.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import harness as bench
from benchmark import machine_line
from milpf_jax.cli import add_config_flags, config_from_args, run
from milpf_jax.config import option
from milpf_jax.files import write_text

RESULTS = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass(frozen=True)
class SaveCommand:
    run_dir: str = option(help="a benchmark run's --out folder (benchmark.json, benchmark.md)",
                          positional=True, metavar="RUN_DIR")
    results_dir: str = option(str(RESULTS), "where <cpu kind>.json and .md go")


def _local_paths_named(text: str) -> str:
    """The run's --out folder as OUT, the inductor cache folder as TEMPORARY."""
    text = re.sub(r"--out [^\s\"`]+", "--out OUT", text)
    return re.sub(r'("TORCHINDUCTOR_CACHE_DIR": )"[^"]*"', r'\1"TEMPORARY"', text)


def save_results(run_dir: Path, results_dir: Path = RESULTS) -> tuple[Path, Path]:
    """Copy run_dir's benchmark.json and .md to results_dir/<cpu kind>.{json,md}."""
    report = json.loads(_local_paths_named((run_dir / "benchmark.json").read_text()))
    table = _local_paths_named((run_dir / "benchmark.md").read_text())
    kind = bench.cpu_kind(report["machine"])
    line = machine_line(report)
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = results_dir / f"{kind}.json", results_dir / f"{kind}.md"
    write_text(json_path, json.dumps(dict(cpu_kind=kind, machine_line=line, **report),
                                     indent=1) + "\n")
    write_text(md_path, f"CPU kind: `{kind}` (`benchmarks/save_results.py`, from the run of "
                        f"{report['date']}).\n\n" + table)
    return json_path, md_path


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_flags(parser, SaveCommand)
    opts = config_from_args(SaveCommand, parser.parse_args(argv), parser)
    for path in save_results(Path(opts.run_dir), Path(opts.results_dir)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
