"""The CAM -> U-Net of a trained classifier at other settings, scored on validation only (notebook 05 section 4).

    python -m benchmarks.cam_unet_probe --run-dir /tmp/seeds/seed1 --out /tmp/cu_seed1 [-p cam_unet_unsure_suv=0]
    python -m benchmarks.holdout_probe --run-dir /tmp/cu_seed1 --out /tmp/h_cu_seed1 --no-maps

OUT links RUN_DIR's store, classifier and maps (cams/: notebook 03's, or `benchmarks.seed_dice_probe`'s) and runs
the profile with RUN_DIR's seed and the overrides (cam_unet_epochs 48 unless given; name the classifier's own
overrides too if it was trained with any). The gate, t, q and floor are RUN_DIR's segment/thresholds.json, or tuned
on validation as notebook 04 does (OUT/segment). Then, as notebook 05 does: the pseudo-labels, the CAM -> U-Net
(resumable) and its masks on the validation slices the gate calls. It prints the pseudo-labels' median Dice and the
median per-study validation Dice of the gated masks; the test split is never read. Session 22 judged
`cam_unet_unsure_suv` with it on session 20's seed-1 classifier (docs/log.md).
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pandas as pd

from wsseg_nb import infer, pseudo, report, runs, segment, train
from wsseg_nb.__main__ import parse_overrides
from wsseg_nb.slices import SliceStore


def probe_run(run_dir: Path, out: Path, profile: str, params: list[str]) -> runs.Run:
    """OUT: links to RUN_DIR's store, classifier and maps, its thresholds (copied or tuned on validation), a run."""
    for name in ("store", "classifier", "cams"):
        if not (run_dir / name).exists():
            raise SystemExit(f"error: {run_dir / name}: missing (a classifier run with its validation maps)")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("store", "classifier", "cams"):
        if not (out / name).exists():
            (out / name).symlink_to((run_dir / name).resolve())
    overrides = {"seed": infer.run_config(run_dir).seed, "cam_unet_epochs": 48, **parse_overrides(params)}
    run = runs.start(profile, out, **overrides)
    given = run_dir / "segment" / "thresholds.json"
    if given.exists():
        (out / "segment").mkdir(exist_ok=True)
        shutil.copyfile(given, out / "segment" / "thresholds.json")
    elif not (out / "segment" / "thresholds.json").exists():
        c = run.config
        val = segment.load_gated(out, ("val",)).select("val")
        cams = {m: segment.load_cams(out, m, val.rows) for m in c.cam_methods}
        gate, tuned, _ = segment.tune_with_gate(cams, val, c.t_grid, c.q_grid, c.gates, c.floor_grid)
        segment.write_thresholds(out, gate, tuned)
    return run


def validation_dice(run: runs.Run) -> pd.Series:
    """Per validation study with lesions: the Dice of the CAM -> U-Net's masks on the slices the gate calls."""
    c, store = run.config, SliceStore(run.store)
    classifier = train.load_classifier(run)
    pred = train.run_predictions(run, classifier, ("val",), store)
    called = pred[pred["prob"] >= segment.read_gate(run.dir)]
    net = train.load_unet(run, "best", folder=pseudo.FOLDER)
    threshold = train.unet_threshold(run.dir / pseudo.FOLDER / "best.pt")
    train.predict_unet_masks(net, store, run.dir, ("val",), c.cam_batch, run.device, threshold, method=pseudo.FOLDER,
                             called=called if c.cam_unet_gated else None)
    scored = report.evaluate_run(run, "val", [pseudo.FOLDER]).dropna(subset=["dice"])
    return scored.set_index("study_id")["dice"]


def main() -> None:
    """Pseudo-labels, CAM -> U-Net and its gated validation Dice for one classifier run; OUT/val_dice.csv."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--profile", default="demo")
    parser.add_argument("-p", dest="params", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value (repeatable), e.g. -p cam_unet_unsure_suv=0")
    args = parser.parse_args()
    run = probe_run(args.run_dir, args.out, args.profile, args.params)
    labels = pseudo.write_pseudo_labels(run, train.load_classifier(run))
    print(f"pseudo-labels: median Dice {labels['dice'].median():.3f}; {labels['unsure_voxels'].sum()} unsure voxels "
          f"({labels['unsure_lesion_voxels'].sum()} lesion of {labels['true_voxels'].sum()})", flush=True)
    pseudo.train_cam_unet(run)
    dice = validation_dice(run)
    dice.to_csv(args.out / "val_dice.csv")
    print(f"CAM -> U-Net, unsure SUV {run.config.cam_unet_unsure_suv:g}: median validation Dice {dice.median():.3f} "
          f"over {len(dice)} studies (masks on the slices at p >= {segment.read_gate(run.dir)})")


if __name__ == "__main__":
    main()
