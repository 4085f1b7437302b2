"""Attention maps, lesion boxes and detection mAP@IoU 0.25 for a finished sweep.

The main job's run (the phantom, EfficientNet-Lite0), its test split, tiles re-cut with 75%
overlap (paper, section 3.2), ground truth from the phantom's lesions.csv:

    python experiments/explain.py --run runs/phantom-efficientnet-lite0-<UTC time> --out DIR

Another cohort, a few bags, your own ground-truth CSV (y0, x0, y1, x1 in source pixels; path or
view_ref; kind):

    python experiments/explain.py --run runs/<run> --cohort manifest.csv --split all --bags 20 \\
        --lesions boxes.csv --out DIR

Writes DIR/overlays/<bag>_<view>.png, DIR/boxes.csv, DIR/bags.csv and DIR/detection.json, and
prints AP overall, per lesion kind and per size bucket (see milpf_jax.explanation.explain for the
definitions).
"""

from __future__ import annotations

if __name__ == "__main__":  # allocator and XLA settings, before jax loads (milpf_jax.runtime)
    from milpf_jax.runtime import configure_process

    configure_process()

import argparse
import sys
import time

from milpf_jax.cli import command_line
from milpf_jax.evaluation.detection import IOU_THRESHOLD
from milpf_jax.explanation.explain import BOX_THRESHOLD, DEFAULT_OVERLAP, explain_run, format_report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a sweep folder (results.json, predictions.csv, "
                                                "best/)")
    p.add_argument("--out", required=True, help="folder for overlays/, boxes.csv, bags.csv, "
                                                "detection.json")
    p.add_argument("--cohort", help="manifest CSV, mias:DIR or phantom[:...] (default: the "
                                    "cohort the run was trained on, from its results.json)")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"),
                   help="the run's split to explain, or all of the cohort (default: test)")
    p.add_argument("--bags", type=int, help="only the first N bags of the split")
    p.add_argument("--overlap", type=float, default=DEFAULT_OVERLAP,
                   help=f"tile overlap for the maps (default: {DEFAULT_OVERLAP}, the paper's)")
    p.add_argument("--lesions", help="ground-truth box CSV (default: the cohort's own: the "
                                     "phantom's lesions.csv, mini-MIAS's circles)")
    p.add_argument("--threshold", type=float, default=BOX_THRESHOLD,
                   help=f"box regions: map >= this x the bag's peak (default: {BOX_THRESHOLD})")
    p.add_argument("--iou", type=float, default=IOU_THRESHOLD,
                   help=f"IoU for a detection to count (default: {IOU_THRESHOLD}, the paper's)")
    p.add_argument("--pixel-spacing-mm", type=float,
                   help="spacing of images whose files give none, for size buckets (e.g. 0.2 "
                        "for mini-MIAS)")
    p.add_argument("--device", default="auto", help="torch device for the encoder (default: auto)")
    p.add_argument("--model-dir", help="local encoder weights (as for extraction)")
    p.add_argument("--precision", choices=("auto", "float32", "bfloat16"),
                   help="encoder precision (default: the store's)")
    p.add_argument("--batch-size", type=int, help="encoder inputs per pass (default: the store's)")
    p.add_argument("--save-maps", action="store_true", help="also write maps/<bag>_<view>.npy")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    command = command_line("experiments/explain.py", argv)
    t0 = time.perf_counter()
    summary = explain_run(
        args.run, args.out, cohort=args.cohort, split=args.split, max_bags=args.bags,
        overlap=args.overlap, lesions=args.lesions, threshold=args.threshold,
        iou_threshold=args.iou, default_spacing_mm=args.pixel_spacing_mm, device=args.device,
        model_dir=args.model_dir, precision=args.precision, batch_size=args.batch_size,
        save_maps=args.save_maps, progress=not args.quiet, command=command,
    )  # fmt: skip
    print(format_report(summary))
    print(f"\nwrote {summary['out']}/overlays/, boxes.csv, bags.csv and detection.json "
          f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
