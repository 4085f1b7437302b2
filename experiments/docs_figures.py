"""The README's pictures in docs/figures/, from one finished run (the main job's):

    python experiments/docs_figures.py --run runs/phantom-efficientnet-lite0-<UTC time>

Writes docs/figures/roc.png and runs.png (the run's figures, made again), overlay-store.png and
overlay-retile.png (the same test breast's most attended view under both maps modes: the
highest-probability test breast with ground truth) and froc.png (the store maps' FROC with both
baselines). Explain runs in each mode first when the run has no RUN/explain/<mode>/ yet. Every
PNG is kept under 200 kB (downscaled when needed); no store or checkpoint is copied.
"""

from __future__ import annotations

if __name__ == "__main__":  # allocator and XLA settings, before jax loads (milpf_jax.runtime)
    from milpf_jax.runtime import configure_process

    configure_process()

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

from milpf_jax.cli import add_config_flags, config_from_args, run
from milpf_jax.config import option

MAX_BYTES = 200_000
MODES = ("store", "retile")


@dataclass(frozen=True)
class DocsFiguresCommand:
    run: str = option(help="a finished sweep folder (the main job's)")
    out: str = option("docs/figures", "where the PNGs go")
    quiet: bool = option(False, "no progress bars", switch=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_flags(p, DocsFiguresCommand)
    return p


def small_png(source: Path, target: Path, max_bytes: int = MAX_BYTES) -> Path:
    """`source` as a PNG at `target`, downscaled by steps of 0.8 until it is under max_bytes."""
    from PIL import Image

    image = Image.open(source).convert("RGB")
    while True:
        image.save(target, optimize=True)
        if target.stat().st_size <= max_bytes or image.width < 64:
            return target
        image = image.resize((round(image.width * 0.8), round(image.height * 0.8)),
                             Image.LANCZOS)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def example_overlay(run_dir: Path) -> str:
    """The overlay file name (the same in both modes) of the most attended view of the
    highest-probability test breast that has ground truth boxes."""
    rows = {r["bag_id"]: r for r in _rows(run_dir / "explain" / "store" / "bags.csv")}
    boxes = _rows(run_dir / "explain" / "store" / "boxes.csv")
    with_truth = {b["bag_id"] for b in boxes if b["best_iou"] != ""}
    ranked = sorted((r for r in rows.values() if r["bag_id"] in with_truth) or rows.values(),
                    key=lambda r: -float(r["probability"]))
    best = ranked[0]
    top = max((b for b in boxes if b["bag_id"] == best["bag_id"]),
              key=lambda b: float(b["score"]), default=None)
    names = best["overlays"].split()
    if top is None:
        return names[0]
    views = [v for v in names if f"_{top['view_code']}" in v]
    return (views or names)[0]


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import explain

    from milpf_jax.evaluation.figures import write_run_figures

    parser = build_parser()
    opts = config_from_args(DocsFiguresCommand, parser.parse_args(argv), parser)
    run_dir, out = Path(opts.run), Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    for mode in MODES:
        if not (run_dir / "explain" / mode / "detection.json").is_file():
            flags = ["--run", str(run_dir), "--maps", mode] + (["--quiet"] if opts.quiet else [])
            explain.main(flags)
    write_run_figures(run_dir, log=lambda *_: None)
    written = [small_png(run_dir / "figures" / f"{name}.png", out / f"{name}.png")
               for name in ("roc", "runs")]
    name = example_overlay(run_dir)
    written += [small_png(run_dir / "explain" / mode / "overlays" / name,
                          out / f"overlay-{mode}.png") for mode in MODES]
    written.append(small_png(run_dir / "explain" / "store" / "figures" / "froc.png",
                             out / "froc.png"))
    print("wrote " + ", ".join(f"{p} ({p.stat().st_size // 1000} kB)" for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
