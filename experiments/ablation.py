"""Ablation of the head's streams on one store (paper, Table 4): full vs global-only vs local-only.

    python experiments/ablation.py                      # the phantom, EfficientNet-Lite0
    python experiments/ablation.py --cohort manifest.csv --encoder medsiglip

Each variant is a full sweep (36 seeds, selected on validation, test read once) on the same
embeddings; each head is then compared with the full one on the same test patients (paired
bootstrap: differences with 95% intervals, Holm-adjusted p-values). Where the cohort's manifest
has a `lesion_kinds` column (the phantom's does), the table adds the test AUC of each kind of
positive bag against all negative bags: calcification-only bags show why the tile stream exists
(the specks vanish from the downsized whole view).
"""

from __future__ import annotations

if __name__ == "__main__":  # allocator and XLA settings, before jax loads (milpf_jax.runtime)
    from milpf_jax.runtime import configure_process

    configure_process()

import sys
from pathlib import Path

from milpf_jax.cli import command_line, parse_sweep, resolve_store, run, sweep_parser
from milpf_jax.evaluation.compare import compare_runs, format_comparison, write_comparison
from milpf_jax.evaluation.runs import recorded_cohort
from milpf_jax.evaluation.subgroups import subgroup_aucs
from milpf_jax.paths import default_run_dir
from milpf_jax.reading.manifest import bag_values
from milpf_jax.reading.sources import manifest_of
from milpf_jax.sweep import run_sweep

VARIANTS = {  # name -> (global_pool, local_pool); Table 4 rows
    "full (max, attn)": ("max", "attn"),
    "global only (max)": ("max", "none"),
    "local only (attn)": ("none", "attn"),
}


def lesion_kinds(run_dir) -> dict[str, str]:
    """bag -> its `lesion_kinds` manifest value, where the run's cohort has such a column."""
    try:
        manifest = manifest_of(recorded_cohort(run_dir))
        return bag_values(manifest, "lesion_kinds") if manifest is not None else {}
    except ValueError:  # no cohort recorded, or a manifest without that column
        return {}


def main(argv=None) -> int:
    args, opts, cfg, xcfg = parse_sweep(sweep_parser(__doc__.split("\n\n")[0]), argv)
    store, cohort, encoder = resolve_store(opts, xcfg)
    command = command_line("experiments/ablation.py", argv)  # each variant's results.json
    out = Path(opts.out or default_run_dir("ablation", cohort, encoder))
    lines, run_dirs, kinds = [], [], None
    for name, (gp, lp) in VARIANTS.items():
        head = cfg.train.head.replace(global_pool=gp, local_pool=lp)
        variant = cfg.replace(train=cfg.train.replace(head=head))
        run_dir = out / name.split(" (")[0].replace(" ", "-")
        run_dirs.append(run_dir)
        res = run_sweep(store, variant, run_dir, command=command, progress=not opts.quiet)
        kinds = lesion_kinds(run_dir) if kinds is None else kinds
        best, summ = res["best"]["test"], res["summary"]
        lo, hi = best["auc"]["ci95"] or (float("nan"),) * 2
        sub = {f"{g['value'] or 'unlabelled'} (n={g['positives']})": g["auc"]
               for g in subgroup_aucs(run_dir, kinds, n_boot=0)["groups"]} if kinds else {}
        lines.append((name, best["auc"]["value"], lo, hi, summ["auc"]["mean"], summ["auc"]["std"],
                      best["spec_at_sens90_roc"]["value"], sub))
        print(f"{name}: test AUC {best['auc']['value']:.3f} [{lo:.3f}, {hi:.3f}]", flush=True)
    print(f"\n| head | best-val run: test AUC [95% CI] | mean ± std, {cfg.seeds} seeds | "
          "Spec@Sens0.9 (ROC) | " + " | ".join(f"AUC {k}" for k in lines[0][7]) + " |")
    print("|---" * (4 + len(lines[0][7])) + "|")
    for name, v, lo, hi, m, s, spec, sub in lines:
        print(f"| {name} | {v:.3f} [{lo:.3f}, {hi:.3f}] | {m:.3f} ± {s:.3f} | {spec:.3f} | "
              + " | ".join(f"{x:.3f}" for x in sub.values()) + " |")
    if cfg.eval.bootstrap:  # --bootstrap 0 asks for no intervals
        comparison = compare_runs(run_dirs, n_boot=cfg.eval.bootstrap, command=command)
        write_comparison(out, comparison)
        print("\nEach head against the full one, paired on the test patients:\n")
        print(format_comparison(comparison))
    print(f"\nrun folders (and comparison.json, comparison.md) under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
