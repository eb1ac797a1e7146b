"""Segmentation benchmark: the 4-method x 200-point grid search, its cost per validation slice, and explorer redraws.

Usage: PYTHONPATH=. python -m benchmarks.bench_segment [--run-dir runs/demo] [--redraws 20]
Uses the run directory's store and cams/ when cams/index.csv exists, else a synthetic run of demo size (128 x 128
slices, 16 x 16 CAMs, 420 gated validation slices in 12 studies). Targets: grid <= 60 s, redraw <= 0.3 s (2 cores).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import ndimage  # noqa: E402

from wsseg_nb import segment, slices, widgets  # noqa: E402
from wsseg_nb.config import get_config  # noqa: E402

METHODS = ("cam", "gradcam", "gradcampp", "scorecam")


def synthetic_run(root: Path, studies: int, depth: int, gated: int, size: int) -> Path:
    """A run directory with a store (blob lesions in gamma background) and CAMs: blurred lesion maps plus noise."""
    rng = np.random.default_rng(0)
    h = size // 8
    rows, cam_rows = [], []
    yy, xx = np.mgrid[:size, :size]
    for i in range(studies):
        sid = f"SYN_{i:03d}"
        suv = rng.gamma(2.0, 0.5, (depth, size, size)).astype(np.float32)
        cy, cx, r = rng.integers(size // 4, 3 * size // 4, 2).tolist() + [size / 16]
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        mask = np.zeros(suv.shape, np.uint8)
        mask[depth // 4: depth // 4 + gated // 2] = disk
        suv[mask.astype(bool)] += rng.uniform(3, 10)
        (root / "store" / sid).mkdir(parents=True)
        for name, arr in (("suv", suv), ("ct", np.zeros(suv.shape, np.int16)), ("mask", mask)):
            np.save(root / "store" / sid / f"{name}.npy", arr)
        meta = {"study_id": sid, "shape": list(suv.shape), "spacing_mm": [6, 4, 4], "affine": np.eye(4).tolist(),
                "lesion_voxels": mask.reshape(depth, -1).sum(1).tolist()}
        (root / "store" / sid / "meta.json").write_text(json.dumps(meta))
        rows.append(slices._index_rows(meta, "val", "melanoma"))
        cam_rows.append(pd.DataFrame({"study_id": sid, "slice": np.arange(depth // 4 - gated // 4,
                                                                          depth // 4 + 3 * gated // 4),
                                      "split": "val", "label": 1, "prob": 0.9}))
    pd.concat(rows).to_csv(root / "store" / "index.csv", index=False)
    (root / "cams").mkdir()
    index = pd.concat(cam_rows, ignore_index=True)
    index.to_csv(root / "cams" / "index.csv", index=False)
    data = segment.load_gated(root, ("val",))
    low = data.gt.reshape(len(data.gt), h, 8, h, 8).mean(axis=(2, 4))
    for k, method in enumerate(METHODS):
        cam = ndimage.gaussian_filter(low, (0, 1 + k / 2, 1 + k / 2)) + rng.random(low.shape) * 0.15
        cam = cam / cam.max(axis=(1, 2), keepdims=True)
        np.save(root / "cams" / f"{method}.npy", cam.astype(np.float16))
    return root


def timed(fn, *args, **kwargs):
    """(result, seconds) of one call."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def redraw_times(explorer: widgets.Explorer, n: int) -> tuple[float, float]:
    """Median seconds of update(t or q) + Agg draw, and of update + PNG (what the live widget shows)."""
    draw, png = [], []
    for i in range(n):
        change = {"t": 0.2 + 0.6 * (i % 7) / 6} if i % 2 else {"q": 20 + 30 * (i % 5) / 4}
        _, s = timed(lambda: (explorer.update(**change), explorer.figure.canvas.draw()))
        draw.append(s)
        _, s = timed(lambda: (explorer.update(**change), explorer.png()))
        png.append(s)
    return float(np.median(draw)), float(np.median(png))


def main() -> None:
    """Run the measurements and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--redraws", type=int, default=20)
    args = parser.parse_args()
    config = get_config("demo")
    t_grid, q_grid = config.t_grid, config.q_grid
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        real = (args.run_dir / "cams" / "index.csv").is_file()
        run_dir = args.run_dir if real else synthetic_run(Path(tmp) / "demo", 12, 60, 35, 128)
        source = str(args.run_dir) if real else "synthetic demo-size"
        data, load_s = timed(segment.load_gated, run_dir, ("val",))
        n, size = len(data.rows), data.suv.shape[-1]
        table.append((f"load_gated ({source})", f"{load_s:.2f} s", f"{n} val slices, S={size}"))
        cams = {m: segment.load_cams(run_dir, m, data.rows) for m in METHODS}
        tuned, total = {}, 0.0
        for method in METHODS:
            tuned[method], s = timed(segment.tune_algorithm1, cams[method], data.suv, data.gt, data.rows["study_id"],
                                     data.gt_total, t_grid, q_grid, desc=method)
            total += s
            table.append((f"grid {method} {len(t_grid)}x{len(q_grid)}", f"{s:.2f} s",
                          f"best t={tuned[method].params['t']:.2f} q={tuned[method].params['q']:.1f}"))
        table.append(("grid, 4 methods x 200 points (target <= 60 s)", f"{total:.2f} s",
                      f"{1e3 * total / max(n, 1) / 4:.2f} ms per val slice per method"))
        for semantics in segment.SEMANTICS:
            _, s = timed(segment.tune_global_threshold, data.suv, data.gt, data.rows["study_id"], data.gt_total,
                         q_grid, semantics)
            table.append((f"global threshold grid ({semantics}), 20 p", f"{s:.2f} s", ""))
        explorer = widgets.Explorer(data, cams, tuned)
        draw_s, png_s = redraw_times(explorer, args.redraws)
        table.append(("explorer update + Agg draw (target <= 0.3 s)", f"{draw_s:.3f} s", f"median of {args.redraws}"))
        table.append(("explorer update + PNG (live widget)", f"{png_s:.3f} s", f"median of {args.redraws}"))
        paper = synthetic_run(Path(tmp) / "paper", 4, 64, 32, 256)
        pdata = segment.load_gated(paper, ("val",))
        _, s = timed(segment.tune_algorithm1, segment.load_cams(paper, "cam", pdata.rows), pdata.suv, pdata.gt,
                     pdata.rows["study_id"], pdata.gt_total, t_grid, q_grid)
        table.append(("grid 1 method, paper size (S=256, 32x32 CAM)", f"{s:.2f} s",
                      f"{1e3 * s / len(pdata.rows):.2f} ms per val slice per method"))
    print(pd.DataFrame(table, columns=["measurement", "value", "note"]).to_string(index=False))


if __name__ == "__main__":
    main()
