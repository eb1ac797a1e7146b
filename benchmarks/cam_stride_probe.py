"""The kept classifier's maps at finer cells: its last pool dropped at CAM time (same weights), tuned on validation.

    python -m benchmarks.cam_stride_probe --run-dir runs/demo [--methods cam gradcampp scorecam]

Training at stride 4 did not leave the plateau (docs/log.md), but a stride-8 classifier's convolutions can run without
the pool before its last block: the feature map doubles (16 mm cells at the demo's 4 mm pixels, the paper's cell)
and the head is unchanged (GAP + one FC). For stride 8 (the run's stored maps) and stride 4 (recomputed) it prints
the pointing numbers (maps moved back by their own flip displacement), Algorithm 1's validation median Dice at the
gate, t and q tuned together on the run's grids, the oracle-gate Dice, and the perfect-region ceiling at the
cell size. Validation split only; needs a run through notebook 04.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from wsseg_nb import cam, diagnostics, runs, segment, train
from wsseg_nb.config import Config
from wsseg_nb.models import VGG16CAM
from wsseg_nb.slices import SliceStore


def convs(model: nn.Module) -> list[nn.Conv2d]:
    """The model's convolutions in forward order."""
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def restride(model: VGG16CAM, config: Config, stride: int) -> VGG16CAM:
    """A copy of `model` at another stride: the same convolutions and head, a different number of max-pools."""
    other = train.classifier_model(dataclasses.replace(config, vgg_stride=stride), "none")
    for src, dst in zip(convs(model), convs(other), strict=True):
        dst.load_state_dict(src.state_dict())
    other.fc.load_state_dict(model.fc.state_dict())
    return other.eval()


def stage_row(cams: dict[str, np.ndarray], val: segment.GatedSlices, cfg: Config, gate: float) -> dict[str, float]:
    """Validation median Dice of each method at `gate` (t, q tuned) and with the oracle gate, and the ceiling."""
    row = {}
    keep_gate, keep_oracle = (val.rows["prob"] >= gate).to_numpy(), (val.rows["label"] > 0).to_numpy()
    at_gate, oracle = val.subset(keep_gate), val.subset(keep_oracle)  # GatedSlices.at_gate / .oracle, same masks
    for method, maps in cams.items():
        for name, data, keep in (("val_dice", at_gate, keep_gate), ("oracle_dice", oracle, keep_oracle)):
            row[f"{name}_{method}"] = segment.tune_algorithm1(maps[keep], data.suv, data.gt, data.rows["study_id"],
                                                              data.gt_total, cfg.t_grid, cfg.q_grid,
                                                              desc=f"{name} {method}").dice
    row["ceiling"] = diagnostics.algorithm1_ceiling(val, next(iter(cams.values())).shape[-1], cfg.q_grid)
    return row


def main() -> None:
    """Print and write (RUN_DIR/bench_cam_stride.csv) the stride-8 and stride-4 rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--methods", nargs="+", default=["cam", "gradcampp", "scorecam"])
    args = parser.parse_args()
    run = runs.start(args.profile, args.run_dir)
    cfg = run.config
    store = SliceStore(run.dir / "store")
    gate = segment.read_gate(run.dir)
    val = segment.load_gated(run.dir, ("val",))
    model8 = train.load_classifier(run)
    probe = diagnostics.pointing_probe(store, "val", align=True)
    x_align = torch.from_numpy(store.read(diagnostics.tumor_slices(store, "train", cam.ALIGN_SLICES))[0])
    rows = []
    for stride in (cfg.vgg_stride, 4):
        t0 = time.perf_counter()
        model = model8 if stride == cfg.vgg_stride else restride(model8, cfg, stride)
        if stride == cfg.vgg_stride:
            maps = {m: segment.load_cams(run.dir, m, val.rows) for m in args.methods}
        else:
            shift = cam.flip_displacement(model, x_align)
            maps = cam.cams_for_slices(model, store, val.rows["position"].to_numpy(), args.methods, cfg.cam_batch,
                                       topk=cfg.scorecam_topk, shift=shift, scorecam_weights=cfg.scorecam_weights)
            maps = {m: v.astype(np.float32) for m, v in maps.items()}
        row = {"stride": stride, "cell_mm": stride * cfg.spacing_mm[1],
               "cells": maps[args.methods[0]].shape[-1], **probe(model), **stage_row(maps, val, cfg, gate),
               "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        table = pd.DataFrame(rows).set_index("stride").T
        print(table.round(3).to_string(), flush=True)
    table.to_csv(run.dir / "bench_cam_stride.csv")


if __name__ == "__main__":
    main()
