"""A classifier's map displacement and the pointing game before and after undoing it, per checkpoint.

    python -m benchmarks.align_probe --run-dir runs/demo --checkpoint best last

Reads RUN_DIR/run.json, RUN_DIR/store and RUN_DIR/classifier/<checkpoint>.pt; writes nothing. The displacement d
is measured on up to cam.ALIGN_SLICES training tumor slices without masks (`cam.flip_displacement`); pointing and
the most common peak offsets (cells from the nearest lesion cell to the CAM peak) are read on the validation tumor
slices, as the maps come and moved back by d.
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import pandas as pd
import torch

from wsseg_nb import cam, diagnostics, infer, train
from wsseg_nb.slices import SliceStore


def align_rows(run_dir: Path, checkpoint: str) -> list[dict[str, object]]:
    """Two rows (as the maps come, moved back by d): pointing, visible pointing and the three commonest offsets."""
    run = infer.open_run(run_dir)
    store = SliceStore(run.store)
    x, masks = store.read(diagnostics.tumor_slices(store, "val"))
    suvmax = diagnostics.lesion_suvmax(x[:, 0], masks)
    x_align = torch.from_numpy(store.read(diagnostics.tumor_slices(store, "train", cam.ALIGN_SLICES))[0])
    model = train.load_classifier(run, checkpoint=checkpoint)
    with cam.eval_mode(model):
        shift = cam.flip_displacement(model, x_align)
        raw = torch.from_numpy(diagnostics.cam_maps(model, torch.from_numpy(x)))
    rows = []
    for name, maps in (("as they come", raw), ("moved back by d", cam.shift_maps(raw, shift, x.shape[-1]))):
        maps = maps.numpy()
        offsets = Counter(map(tuple, diagnostics.peak_offset(maps, masks).tolist())).most_common(3)
        rows.append({"checkpoint": checkpoint, "maps": name, "d_rows_px": shift[0], "d_cols_px": shift[1],
                     **diagnostics.pointing(diagnostics.peak_in_lesion(maps, masks), suvmax),
                     "commonest_offsets": " ".join(f"{o}:{c}" for o, c in offsets)})
    return rows


def main() -> None:
    """Print two rows per checkpoint."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--checkpoint", nargs="+", default=["best", "last"], choices=["best", "last"])
    args = parser.parse_args()
    for needed in ("run.json", "store/index.csv", *(f"classifier/{c}.pt" for c in args.checkpoint)):
        if not (args.run_dir / needed).exists():
            raise SystemExit(f"error: {args.run_dir / needed}: missing (run notebooks 01-02 into {args.run_dir})")
    table = pd.DataFrame([row for c in args.checkpoint for row in align_rows(args.run_dir, c)])
    with pd.option_context("display.width", 200):
        print(table.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
