"""Data-stage ceiling: Dice of a relative SUV threshold when the lesions' locations are given, per study.

    python -m benchmarks.threshold_ceiling_probe --run-dir runs/demo [--split val] [--margin 2]

`diagnostics.oracle_threshold_dice` keeps SUV >= f x the local SUVmax inside each truth region dilated by `margin`
voxels: localization is the oracle's, delineation the PET's own (the PSF-blurred uptake against the geometric truth).
It says how much of a segmenter's Dice the image allows, so the supervised U-Net's score can be read against it.
Session 10, demo store, 12 val lesion studies: median Dice 0.62 / 0.66 / 0.66 / 0.56 / 0.47 at f = 0.3 / 0.4 / 0.41 /
0.5 / 0.6 (the U-Net scores 0.48 on test).
"""
from __future__ import annotations

import argparse
import time

from wsseg_nb import diagnostics, slices

FRACTIONS = (0.3, 0.4, 0.41, 0.5, 0.6)
"""Fractions of the local SUVmax; 0.41 is the EANM 41% SUVmax delineation."""


def main() -> None:
    """Print the per-study table and its medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--margin", type=int, default=2)
    args = parser.parse_args()
    start = time.perf_counter()
    store = slices.SliceStore(f"{args.run_dir}/store")
    table = diagnostics.oracle_threshold_dice(store, args.split, FRACTIONS, args.margin)
    print(table.round(3).to_string(index=False))
    print(f"median over {len(table)} {args.split} lesion studies:",
          ", ".join(f"f={f}: {table[f].median():.3f}" for f in FRACTIONS), f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
