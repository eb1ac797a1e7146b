"""CAM -> U-Net's pseudo-labels on the training studies under two tunings of (t, q), per method; no U-Net trained.

    python -m benchmarks.pseudo_label_probe --run-dir runs/demo

The pseudo-labels are cut in the training slices that their *labels* call tumorous (`cam_unet_gate = "labels"`),
with the t and q that notebook 04 tuned at the classifier's gate (`segment/thresholds.json`). This probe asks
whether the (t, q) tuned behind a perfect gate on validation (the oracle-gate search of notebook 04, the setting
the pseudo-labels are actually cut in) would make better ones. For each method it prints the validation median
Dice behind a perfect gate under both tunings, the training studies' pseudo-label median Dice under both, and
(for reference only, tuned on the very studies it scores) the best training median Dice over the grid. Training
and validation splits only; needs a run through notebook 04.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from wsseg_nb import runs, segment, train
from wsseg_nb.cam import cams_for_slices
from wsseg_nb.slices import SliceStore


def median_dice(cam: np.ndarray, data: segment.GatedSlices, t: float, q: float) -> float:
    """Median per-study Dice over the lesion studies of Algorithm 1 at one (t, q) on data's slices."""
    inter, pred = segment.algorithm1_counts(cam, data.suv, data.gt, [t], [q], desc="algorithm 1")
    per_study = segment.study_dice(inter, pred, data.rows["study_id"], data.gt_total)[:, 0, 0]
    return float(np.median(per_study[data.gt_total.to_numpy() > 0]))


def main() -> None:
    """Print and write (RUN_DIR/bench_pseudo_labels.csv) one row per method."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--profile", default="demo")
    args = parser.parse_args()
    run = runs.start(args.profile, args.run_dir)
    cfg = run.config
    methods = list(cfg.cam_methods)
    gated = segment.load_gated(run.dir, ("val",))
    oracle = gated.oracle()
    val_maps = {m: segment.load_cams(run.dir, m, oracle.rows) for m in methods}
    store = SliceStore(run.store)
    index = store.index
    rows = index[(index["split"] == "train") & (index["label"] > 0)]
    train_data = segment.gather_slices(store, rows[["study_id", "slice", "split"]], ("train",), "store index.csv")
    maps = cams_for_slices(train.load_classifier(run), store, train_data.rows["position"].to_numpy(), methods,
                           cfg.cam_batch, run.device, cfg.scorecam_topk, train.cam_shift(run), cfg.scorecam_weights)
    at_gate = {m: segment.read_method_params(run.dir, m) for m in methods}
    table = []
    for m in methods:
        behind = segment.tune_algorithm1(val_maps[m], oracle.suv, oracle.gt, oracle.rows["study_id"],
                                         oracle.gt_total, cfg.t_grid, cfg.q_grid, desc=m)
        own = segment.tune_algorithm1(maps[m].astype(np.float32), train_data.suv, train_data.gt,
                                      train_data.rows["study_id"], train_data.gt_total, cfg.t_grid, cfg.q_grid, desc=m)
        tuned = {"gate": (at_gate[m]["t"], at_gate[m]["q"]), "oracle": (behind.params["t"], behind.params["q"])}
        table.append({"method": m, **{f"t_{k}": t for k, (t, _) in tuned.items()},
                      **{f"q_{k}": q for k, (_, q) in tuned.items()},
                      **{f"val_oracle_dice_{k}": median_dice(val_maps[m], oracle, t, q) for k, (t, q) in tuned.items()},
                      **{f"train_dice_{k}": median_dice(maps[m].astype(np.float32), train_data, t, q)
                         for k, (t, q) in tuned.items()},
                      "train_dice_self_tuned": own.dice})
        print(pd.DataFrame(table).round(3).to_string(index=False), flush=True)
    pd.DataFrame(table).to_csv(run.dir / "bench_pseudo_labels.csv", index=False)


if __name__ == "__main__":
    main()
