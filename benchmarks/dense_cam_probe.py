"""The kept classifier's CAM at finer cells by shift-and-stitch (same weights, same net), tuned on validation.

    python -m benchmarks.dense_cam_probe --run-dir runs/demo [--factors 1 2 4]

A stride-8 network maps each 8-pixel cell once. Shifting the input by a fraction of a cell and interleaving the
maps (OverFeat's shift-and-stitch; Long et al. 2015 show it equals the net with its last pool's stride removed and
the later filters dilated) gives the same network's CAM on a grid `factor` times finer: at factor 2 the demo's
32 mm cells become the paper's 16 mm. Unlike `benchmarks.cam_stride_probe` (the last pool dropped, the receptive
field changed), nothing about the network changes. For each factor it prints CAM and GradCAM (with GAP + one FC
exactly ReLU(CAM), so stitching the ReLU'd CAM stitches GradCAM) as in `cam_stride_probe.stage_row`: validation
median Dice at the run's gate and behind a perfect gate, t and q tuned on the run's grids, and the perfect-region
ceiling at the cell size. Validation split only; needs a run through notebook 04.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks.cam_stride_probe import stage_row
from wsseg_nb import cam, runs, segment, train


def stitch_offsets(stride: int, factor: int) -> list[int]:
    """Input shifts (pixels) whose maps interleave into cells stride / factor wide, each centred on its own cell."""
    if stride % factor:
        raise ValueError(f"factor {factor} must divide the stride {stride}")
    step = stride // factor
    return [step * a - (stride - step) // 2 for a in range(factor)]


def stitched_cam(model: torch.nn.Module, x: torch.Tensor, stride: int, factor: int, batch: int = 128) -> torch.Tensor:
    """Raw CAM (Eq. 1, unnormalised) of slices x (B,2,S,S) on a grid `factor` times finer: (B, factor h, factor w).

    D[factor i + a, factor j + b] is the CAM at cell (i, j) of x moved by (-o_a, -o_b) pixels (`stitch_offsets`,
    wrapped around the slice edge, air on whole-body slices). factor 1 gives the plain CAM.
    """
    offsets = stitch_offsets(stride, factor)
    out = None
    with torch.inference_mode():
        for a, oy in enumerate(offsets):
            for b, ox in enumerate(offsets):
                moved = torch.roll(x, shifts=(-oy, -ox), dims=(-2, -1))
                maps = torch.cat([cam.classic_cam(model, xb) for xb in moved.split(batch)])
                if out is None:
                    out = maps.new_empty(len(x), factor * maps.shape[1], factor * maps.shape[2])
                out[:, a::factor, b::factor] = maps
    return out


def main() -> None:
    """Print and write (RUN_DIR/bench_dense_cam.csv) one row per factor."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    run = runs.start(args.profile, args.run_dir)
    cfg = run.config
    val = segment.load_gated(run.dir, ("val",))
    gate = segment.read_gate(run.dir)
    model = train.load_classifier(run).eval()
    shift = train.cam_shift(run)
    x = torch.from_numpy(val.store.read(val.rows["position"].to_numpy())[0])
    size = x.shape[-1]
    stride = size // cam.compute_cams(model, x[:1], "cam").shape[-1]
    rows = []
    for factor in args.factors:
        raw = stitched_cam(model, x, stride, factor, cfg.cam_batch)
        maps = {name: cam.normalize_maps(cam.shift_maps(cam.normalize_maps(m), shift, size)).numpy()
                for name, m in (("cam", raw), ("gradcam", raw.relu()))}
        rows.append({"factor": factor, "cell_mm": cfg.spacing_mm[1] * stride / factor, "gate": gate,
                     **stage_row(maps, val, cfg, gate)})
        print(pd.DataFrame(rows).round(3).to_string(index=False), flush=True)
    pd.DataFrame(rows).to_csv(run.dir / "bench_dense_cam.csv", index=False)


if __name__ == "__main__":
    main()
