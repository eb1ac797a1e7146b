"""Algorithm 1's validation Dice of each seed's kept classifier from `benchmarks.classifier_seeds` (notebooks 02-04).

    python -m benchmarks.classifier_seeds --seeds 0 1 --out /tmp/gmp -p cls_head=gmp_fc -p vgg_pools=early
    python -m benchmarks.seed_dice_probe --out /tmp/gmp --seeds 0 1

For OUT/seed<N> (read back from its run.json, so its own head and pools) it predicts the validation slices,
computes the maps of the slices called at the lowest gate plus every tumor slice (moved back by the checkpoint's displacement),
writes them as notebook 03 does into OUT/seed<N>/cams, tunes the gate, t and q together as notebook 04 does, and
prints the gated and the perfect-gate median Dice per method. The test split is never predicted. Run on a copy
of session 15's chain run directory it gives that run's diagnostics.json numbers exactly (gate 0.8; CAM 0.337,
GradCAM 0.321, GradCAM++ 0.329, ScoreCAM 0.326; perfect gate 0.361, 0.456, 0.447, 0.450).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

from benchmarks.cam_stride_probe import stage_row
from wsseg_nb import cam, diagnostics, infer, runs, segment, train
from wsseg_nb.slices import SliceStore


def seed_dice(run: runs.Run) -> dict[str, float]:
    """Validation AUC and its study-bootstrap 95 % interval, the tuned gate (precision, recall), each map's Dice."""
    cfg = run.config
    store = SliceStore(run.store)
    model = train.load_classifier(run)
    pred = train.run_predictions(run, model, ("val",), store)
    rows = cam.gated_rows(pred, store.index, min(cfg.gates), tumor_slices=True)
    maps = cam.cams_for_slices(model, store, rows["position"].to_numpy(), cfg.cam_methods, batch_size=cfg.cam_batch,
                               device=run.device, topk=cfg.scorecam_topk, shift=train.cam_shift(run),
                               scorecam_weights=cfg.scorecam_weights)
    cam.save_cams(run.path("cams"), rows[["study_id", "slice", "split", "label", "prob"]], maps)
    val = segment.load_gated(run.dir, ("val",))
    cams = {m: segment.load_cams(run.dir, m, val.rows) for m in cfg.cam_methods}
    gate, _, _ = segment.tune_with_gate(cams, val, cfg.t_grid, cfg.q_grid, cfg.gates, cfg.floor_grid)
    low, high = diagnostics.study_bootstrap_auc(pred, "val")
    row = {"val_auc": roc_auc_score(pred["label"] > 0, pred["prob"]), "val_auc_ci_low": low, "val_auc_ci_high": high,
           **diagnostics.gate_stats(pred["label"], pred["prob"], gate)}
    return {**row, **stage_row(cams, val, cfg, gate)}


def main() -> None:
    """Print and write OUT/seed_dice.csv, one row per seed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the --out of benchmarks.classifier_seeds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        directory = args.out / f"seed{seed}"
        if not (directory / "classifier" / "best.pt").exists():
            raise SystemExit(f"error: {directory}/classifier/best.pt: no trained classifier (run classifier_seeds)")
        rows.append({"seed": seed, **seed_dice(infer.open_run(directory))})
    table = pd.DataFrame(rows).round(3)
    table.to_csv(args.out / "seed_dice.csv", index=False)
    print(table.T.to_string(header=False))


if __name__ == "__main__":
    main()
