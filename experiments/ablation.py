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

import csv
import sys
import time
from pathlib import Path

import numpy as np

VARIANTS = {  # name -> (global_pool, local_pool); Table 4 rows
    "full (max, attn)": ("max", "attn"),
    "global only (max)": ("max", "none"),
    "local only (attn)": ("none", "attn"),
}


def lesion_kinds_by_bag(manifest: Path) -> dict[str, str]:
    """bag_id -> lesion_kinds from a manifest with that column ('' for normal bags)."""
    kinds: dict[str, str] = {}
    with open(manifest, newline="") as f:
        for row in csv.DictReader(f):
            if "lesion_kinds" not in row:
                return {}
            bag = f"{row['patient_id']}/{row['exam_id']}/{row['laterality']}"
            kinds[bag] = row["lesion_kinds"]
    return kinds


def subgroup_aucs(run_dir: Path, kinds: dict[str, str]) -> dict[str, float]:
    """Test AUC of each positive lesion kind against all negative test bags (best run)."""
    from sklearn.metrics import roc_auc_score

    with open(run_dir / "predictions.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    neg = [float(r["p_best"]) for r in rows if r["label"] == "0"]
    out = {}
    for kind in sorted({kinds.get(r["bag_id"], "") for r in rows if r["label"] == "1"}):
        pos = [float(r["p_best"]) for r in rows
               if r["label"] == "1" and kinds.get(r["bag_id"], "") == kind]
        y = np.r_[np.zeros(len(neg)), np.ones(len(pos))]
        out[f"{kind or 'unlabelled'} (n={len(pos)})"] = float(roc_auc_score(y, neg + pos))
    return out


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import sweep

    from milpf_jax.cli import command_line, config_from_args
    from milpf_jax.compare import compare_runs, format_comparison, write_comparison
    from milpf_jax.experiment import SweepConfig, run_sweep

    parser = sweep.build_parser()
    args = parser.parse_args(argv)
    store, cohort, encoder = sweep.resolve_store(args, parser)
    kinds = {}
    if not args.store:
        from milpf_jax.cohort import resolve_cohort

        c = resolve_cohort(args.cohort or sweep.DEFAULT_COHORT)
        kinds = lesion_kinds_by_bag(Path(c.bags[0].images[0].path).parent.parent / "manifest.csv")
    out = Path(args.out or Path("runs") / f"ablation-{cohort}-{encoder}-"
               f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    lines, run_dirs = [], []
    for name, (gp, lp) in VARIANTS.items():
        cfg = config_from_args(SweepConfig, args, global_pool=gp, local_pool=lp)
        run_dir = out / name.split(" (")[0].replace(" ", "-")
        run_dirs.append(run_dir)
        res = run_sweep(store, cfg, run_dir, command=f"ablation: {name}",
                        progress=not args.quiet)
        best, summ = res["best"]["test"], res["summary"]
        lo, hi = best["auc"]["ci95"] or (float("nan"),) * 2
        sub = subgroup_aucs(run_dir, kinds) if kinds else {}
        lines.append((name, best["auc"]["value"], lo, hi, summ["auc"]["mean"], summ["auc"]["std"],
                      best["spec_at_sens90_roc"]["value"], sub))
        print(f"{name}: test AUC {best['auc']['value']:.3f} [{lo:.3f}, {hi:.3f}]", flush=True)
    print(f"\n| head | best-val run: test AUC [95% CI] | mean ± std, {cfg.seeds} seeds | "
          "Spec@Sens0.9 (ROC) | " + " | ".join(f"AUC {k}" for k in lines[0][7]) + " |")
    print("|---" * (4 + len(lines[0][7])) + "|")
    for name, v, lo, hi, m, s, spec, sub in lines:
        print(f"| {name} | {v:.3f} [{lo:.3f}, {hi:.3f}] | {m:.3f} ± {s:.3f} | {spec:.3f} | "
              + " | ".join(f"{x:.3f}" for x in sub.values()) + " |")
    if cfg.bootstrap:  # --bootstrap 0 asks for no intervals
        comparison = compare_runs(run_dirs, n_boot=cfg.bootstrap,
                                  command=command_line("experiments/ablation.py", argv))
        write_comparison(out, comparison)
        print("\nEach head against the full one, paired on the test patients:\n")
        print(format_comparison(comparison))
    print(f"\nrun folders (and comparison.json, comparison.md) under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
