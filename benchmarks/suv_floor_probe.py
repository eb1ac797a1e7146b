"""Where the maps' false volume sits, and what an absolute SUV floor does to Algorithm 1 (validation only).

    python -m benchmarks.suv_floor_probe --run-dir runs/demo --floors 0 2 2.5 3

1. The committed masks of each method (masks/<method>/), cut into 18-connected components: false volume per study
   in components that hit a lesion, in components apart from it on a tumor slice, and on tumor-free slices.
2. Algorithm 1 with the voxel cut max(percentile q, floor), the (gate, t, q) search of notebook 04 re-run per floor.
3. The floor alone: SUV >= floor on the slices the gate calls (no CAM, no percentile), at each gate's best and on
   the truly tumorous slices. Where it matches (2), the maps add nothing to the gate on this cohort.
Nothing in the run directory is written.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from wsseg_nb import infer, metrics, report, segment

MASKS = ("cam", "gradcam", "gradcampp", "scorecam", "threshold", "unet")


def component_kinds(pred: np.ndarray, truth: np.ndarray) -> pd.DataFrame:
    """Per 18-connected component of `pred`: where it sits (hits lesion, apart on a tumor slice, on tumor-free slices)."""
    labels, _ = metrics.components(pred)
    tumor_slice = truth.any(axis=(1, 2))
    rows = []
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        part = labels[box] == i
        hit = int((part & truth[box]).sum())
        kind = ("hits lesion" if hit else "tumor slice, apart" if tumor_slice[box[0]].any() else "tumor-free slices")
        rows.append({"kind": kind, "voxels": int(part.sum()), "false_voxels": int(part.sum()) - hit})
    return pd.DataFrame(rows, columns=["kind", "voxels", "false_voxels"])


def false_volume_table(run_dir: Path, split: str = "val", methods: tuple[str, ...] = MASKS) -> pd.DataFrame:
    """False volume (ml) and components per study, by kind and method, from the run's masks on one split."""
    frames, studies = [], 0
    for _, _, study, preds in report.split_masks(run_dir, split, methods, f"false volume {split}"):
        truth, ml, studies = study.mask.astype(bool), metrics.voxel_volume_ml(study.meta["spacing_mm"]), studies + 1
        for m, pred in preds.items():
            kinds = component_kinds(pred, truth)
            frames.append(kinds.assign(method=m, false_ml=kinds["false_voxels"] * ml))
    parts = pd.concat(frames, ignore_index=True)
    table = parts.groupby(["method", "kind"]).agg(components=("voxels", "size"), false_ml=("false_ml", "sum"))
    return (table / studies).unstack("kind", fill_value=0.0).reindex(list(methods))


def floor_table(run_dir: Path, floors: list[float]) -> pd.DataFrame:
    """Per floor: each method's best validation Dice over (gate, t, q), and the floor alone (gated, oracle-gated)."""
    run = infer.open_run(run_dir)
    c = run.config
    data = segment.load_gated(run_dir, ("val",)).select("val")
    cams = {m: segment.load_cams(run_dir, m, data.rows) for m in c.cam_methods}
    whole = np.ones((len(data.suv), 1, 1), np.float32)  # t = 0, q = 0: every voxel of the slice, cut at the floor
    oracle, truly = data.oracle(), (data.rows["label"] > 0).to_numpy()
    rows = []
    for floor in floors:
        gate, tuned, _ = segment.tune_with_gate(cams, data, c.t_grid, c.q_grid, c.gates, [floor])
        row = {"floor": floor, "gate": gate, **{m: tu.dice for m, tu in tuned.items()}}
        row.update({f"{m} (t, q)": f"{tu.params['t']:.2f}, {tu.params['q']:.1f}" for m, tu in tuned.items()})
        if floor > 0:
            gate_alone, alone, _ = segment.tune_with_gate({"floor": whole}, data, (0.0,), (0.0,), c.gates, [floor])
            on_oracle = segment.tune_algorithm1(whole[truly], oracle.suv, oracle.gt, oracle.rows["study_id"],
                                                oracle.gt_total, (0.0,), (0.0,), floor_grid=[floor])
            row.update({"floor alone": alone["floor"].dice, "its gate": gate_alone,
                        "floor alone, oracle gate": on_oracle.dice})
        rows.append(row)
    return pd.DataFrame(rows).set_index("floor")


def main() -> None:
    """Print both tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--floors", type=float, nargs="+", default=[0.0, 2.0, 2.5, 3.0])
    args = parser.parse_args()
    for needed in ("run.json", "cams/index.csv", "masks/cam", "store/index.csv"):
        if not (args.run_dir / needed).exists():
            raise SystemExit(f"error: {args.run_dir / needed}: missing (run notebooks 01-05 into {args.run_dir})")
    print("false volume per validation study (ml) and components per study, by where they sit:")
    print(false_volume_table(args.run_dir).round(2).to_string())
    print("\nvalidation median per-study Dice, Algorithm 1 with voxel cut max(q-th percentile, floor):")
    print(floor_table(args.run_dir, sorted(args.floors)).round(3).to_string())


if __name__ == "__main__":
    main()
