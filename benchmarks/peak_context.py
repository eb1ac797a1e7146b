"""Where a classifier's CAM peak falls on the validation tumor slices: in a lesion cell, or on what SUV and HU.

    python -m benchmarks.peak_context --run-dir runs/demo --checkpoint best last

Reads RUN_DIR/run.json and RUN_DIR/classifier/<checkpoint>.pt; writes nothing. Validation split only.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from wsseg_nb import diagnostics, infer, train
from wsseg_nb.cam import eval_mode
from wsseg_nb.slices import SliceStore

AIR_HU = -500.0
"""A peak cell whose mean CT is below this is mostly air: lung or outside the body outline."""


def peak_context(run_dir: Path, checkpoint: str) -> dict[str, float]:
    """Pointing, and the share of peak cells that are air-like, with the median SUV and HU of the peak cells."""
    run = infer.open_run(run_dir)
    store = SliceStore(run.store)
    rows = np.flatnonzero(((store.index["split"] == "val") & (store.index["label"] > 0)).to_numpy())
    x, masks = store.read(rows)
    model = train.load_classifier(run, checkpoint=checkpoint)
    with eval_mode(model):
        maps = diagnostics.cam_maps(model, torch.from_numpy(x))
    suv, hu = diagnostics.peak_cell_means(maps, x).T
    return {"checkpoint": checkpoint, "slices": len(rows),
            "pointing": float(diagnostics.peak_in_lesion(maps, masks).mean()),
            "peak_air": float(np.mean(hu < AIR_HU)), "peak_median_suv": float(np.median(suv)),
            "peak_median_hu": float(np.median(hu))}


def main() -> None:
    """Print one row per checkpoint."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--checkpoint", nargs="+", default=["best", "last"], choices=["best", "last"])
    args = parser.parse_args()
    for needed in ("run.json", "store/index.csv", *(f"classifier/{c}.pt" for c in args.checkpoint)):
        if not (args.run_dir / needed).exists():
            raise SystemExit(f"error: {args.run_dir / needed}: missing (run notebooks 01-02 into {args.run_dir})")
    print(pd.DataFrame([peak_context(args.run_dir, c) for c in args.checkpoint]).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
