"""Score a trained run on studies the demo never reads: the manifest's test-split studies outside the demo subset.

    python -m benchmarks.holdout_probe --run-dir runs/demo --out /tmp/holdout [--studies 40] [--floors 0 2 2.5 3 3.5]
        [--lows 0.5 0.7] [--no-maps]

The demo's 12 test studies are read once per recipe (notebook 06); a lever chosen after that read needs other
held-out data. The committed manifest holds 453 studies, and those of its test split with demo = 0 come from the
same cohort and are never generated, trained on, tuned on or scored by the chain. This probe generates them (the
phantom, into OUT/data), preprocesses them on the run's grid (OUT/store), predicts them with the run's classifier,
computes the maps of every slice at p >= the lowest gate searched (OUT/cams, the run's own shift undone), and
scores Algorithm 1 per study with parameter sets chosen on the run's validation split only (and, where the run has
them, the global threshold behind the run's gate with its percentile tuned on validation, its U-Net and its
CAM -> U-Net, each at its validation threshold):

- no floor: the gate, t and q searched as notebook 04 does with f = 0 (Algorithm 1 as printed);
- floor@gate: the SUV floor (`--floors`) searched with t and q at that gate;
- floor: the floor searched with t, q and the gate together (the demo profile's search since session 20);
- floor, low L (`--lows`): as floor, with a hysteresis gate along z (`gate_hysteresis_probe.hysteresis`: slices at
  p >= the gate, and those at p >= L z-connected to them); session 21, rejected (docs/log.md).

It prints the median per-study Dice per set and method, the gate's precision and recall on these studies, the
ICC(A,1) of MTV and a paired Wilcoxon test of each set against no floor (each hysteresis set against floor);
writes OUT/holdout_dice.csv (one row per study, set and method).
Nothing in the run directory is written.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon
from sklearn.metrics import roc_auc_score

from benchmarks.gate_hysteresis_probe import hysteresis
from wsseg_nb import cam, diagnostics, infer, manifest, metrics, phantom, pseudo, runs, segment, slices, train

MANIFEST = Path("data_manifest.csv")


def holdout_rows(path: Path, n: int | None) -> pd.DataFrame:
    """The manifest's test-split studies outside the demo subset (the first n per diagnosis in proportion, or all)."""
    df = manifest.load_manifest(path, subset="all", check_files=False)
    rows = df[(df["split"] == "test") & (df["demo"] == 0)].sort_values("study_id")
    if n is not None and n < len(rows):
        sizes = rows.groupby("diagnosis").size()
        counts = dict(zip(sizes.index, manifest.largest_remainder(n, sizes.tolist())))
        rows = pd.concat([g.head(counts[d]) for d, g in rows.groupby("diagnosis")]).sort_values("study_id")
    return rows.reset_index(drop=True)


def build_store(rows: pd.DataFrame, out: Path, run: runs.Run) -> slices.SliceStore:
    """Generate the studies into OUT/data and preprocess them on the run's grid into OUT/store (both resumable)."""
    rows, data = rows.copy(), (out / "data").resolve()  # resolved: OUT/data may link to another OUT's studies
    for field, name in phantom.STUDY_FILES.items():
        rows[field] = [str(data / sid / name) for sid in rows["study_id"]]
    phantom.generate_cohort(rows)
    return slices.preprocess_cohort(rows, out / "store", run.config.spacing_mm, run.config.slice_size)


def parameter_sets(run: runs.Run, floors: list[float],
                   lows: list[float]) -> dict[str, tuple[float, float | None, dict[str, dict[str, float]]]]:
    """{set: (gate, hysteresis low or None, {method: {t, q, floor}})}, every set chosen on the run's validation split."""
    c = run.config
    val = segment.load_gated(run.dir, ("val",)).select("val")
    cams = {m: segment.load_cams(run.dir, m, val.rows) for m in c.cam_methods}
    prob = val.rows["prob"].to_numpy()
    plain_gate = segment.tune_with_gate(cams, val, c.t_grid, c.q_grid, c.gates, (0.0,))[0]
    searches = {"no floor": (None, c.gates, (0.0,)), "floor@gate": (None, [plain_gate], floors),
                "floor": (None, c.gates, floors), **{f"floor, low {low:g}": (low, [g for g in c.gates if g > low], floors)
                                                       for low in lows}}
    sets = {}
    for name, (low, gates, floor_grid) in searches.items():
        calls = None if low is None else (lambda g, low=low: hysteresis(val.rows, prob, g, low))
        gate, tuned, _ = segment.tune_with_gate(cams, val, c.t_grid, c.q_grid, gates, floor_grid, calls)
        sets[name] = (gate, low, {m: dict(tu.params) for m, tu in tuned.items()})
        print(f"validation, {name}: gate {gate}, low {low}, median Dice "
              + ", ".join(f"{m} {tu.dice:.3f}" for m, tu in tuned.items()), flush=True)
    return sets


def called_rows(rows: pd.DataFrame, gate: float, low: float | None) -> np.ndarray:
    """bool per row: p >= gate, or with a hysteresis low, also z-connected to such a row through p >= low."""
    prob = rows["prob"].to_numpy()
    return prob >= gate if low is None else hysteresis(rows, prob, gate, low)


def score(data: segment.GatedSlices, out: Path, sets: dict, methods: list[str], voxel_ml: float) -> pd.DataFrame:
    """Per study, set and method: Dice and MTV (ml, predicted and true) of Algorithm 1 on the slices the gate calls."""
    frames = []
    for m in methods:
        cams = segment.load_cams(out, m, data.rows)  # read once; each set's gate selects its rows
        for name, (gate, low, params) in sets.items():
            keep, p = called_rows(data.rows, gate, low), params[m]
            called = data.subset(keep)
            masks = segment.algorithm1(cams[keep], called.suv, p["t"], p["q"], floor=p.get("floor", 0.0))
            frames.append(study_scores(called, masks, voxel_ml, set=name, method=m, gate=gate, low=low, t=p["t"],
                                       q=p["q"], floor=p.get("floor", 0.0)))
    return pd.concat(frames, ignore_index=True)


def study_scores(data: segment.GatedSlices, masks: np.ndarray, voxel_ml: float, **labels: object) -> pd.DataFrame:
    """Per study of `data`: the `labels` columns, Dice and MTV (ml, predicted and true) of its gated slices' masks."""
    inter, pred = (masks & data.gt).sum(axis=(1, 2)), masks.sum(axis=(1, 2))
    dice = segment.study_dice(inter, pred, data.rows["study_id"], data.gt_total)
    pred_voxels = pd.Series(pred, dtype=np.int64).groupby(data.rows["study_id"].to_numpy()).sum()
    return pd.DataFrame({"study_id": data.studies.index, **labels, "dice": dice,
                         "mtv_ml": pred_voxels.reindex(data.studies.index, fill_value=0).to_numpy() * voxel_ml,
                         "true_mtv_ml": data.gt_total.to_numpy() * voxel_ml})


def score_threshold(run: runs.Run, out: Path, voxel_ml: float) -> pd.DataFrame:
    """Per study: Dice and MTV of the global threshold (histogram reading, notebook 05) behind the run's gate, its
    percentile tuned on the run's validation slices at that gate."""
    gate = segment.read_gate(run.dir)
    val = segment.load_gated(run.dir, ("val",)).select("val").at_gate(gate)
    p = segment.tune_global_threshold(val.suv, val.gt, val.rows["study_id"], val.gt_total,
                                      run.config.threshold_grid, "histogram").params["p"]
    held = segment.load_gated(out, ("test",)).at_gate(gate)
    print(f"threshold: gate {gate}, p {p:.1f} (tuned on validation)")
    return study_scores(held, segment.global_threshold(held.suv, p, "histogram"), voxel_ml, set=f"gate {gate:g}",
                        method="threshold", gate=gate)


def score_unet(run: runs.Run, store: slices.SliceStore, out: Path, voxel_ml: float, pred: pd.DataFrame | None,
               folder: str = "unet") -> pd.DataFrame:
    """Per study: Dice and MTV of a U-Net of the run (<folder>/best.pt at its validation threshold) on the store.

    pred: the classifier's held-out predictions; the CAM -> U-Net's masks cover only the slices it calls at the run's
    gate (`cam_unet_gated`)."""
    c, unet = run.config, train.load_unet(run, "best", folder=folder)
    threshold = train.unet_threshold(run.dir / folder / "best.pt")
    gated = folder == pseudo.FOLDER and c.cam_unet_gated
    called = pred[pred["prob"] >= segment.read_gate(run.dir)] if gated else None
    train.predict_unet_masks(unet, store, out, ("test",), c.cam_batch, run.device, threshold, method=folder,
                             called=called)
    rows = []
    for sid, pred in segment.load_study_masks(out, folder).items():
        truth = store.study(sid).mask.astype(bool)
        rows.append({"study_id": sid, "set": f"p >= {threshold:g}", "method": folder, "dice": metrics.dice(pred, truth),
                     "mtv_ml": pred.sum() * voxel_ml, "true_mtv_ml": truth.sum() * voxel_ml})
    return pd.DataFrame(rows)


def score_maps(run: runs.Run, store: slices.SliceStore, out: Path, floors: list[float], lows: list[float],
               pred: pd.DataFrame) -> pd.DataFrame:
    """Map the held-out slices (`pred`: the classifier's predictions) with the run's classifier, score every parameter
    set; print the gates."""
    c = run.config
    sets = parameter_sets(run, floors, lows)
    model = train.load_classifier(run)
    lowest = min(low if low is not None else gate for gate, low, _ in sets.values())
    gated = cam.gated_rows(pred, store.index, lowest)
    maps = cam.cams_for_slices(model, store, gated["position"].to_numpy(), c.cam_methods, batch_size=c.cam_batch,
                               device=run.device, topk=c.scorecam_topk, shift=train.cam_shift(run),
                               scorecam_weights=c.scorecam_weights)
    cam.save_cams(out / "cams", gated[["study_id", "slice", "split", "label", "prob"]], maps)
    table = score(segment.load_gated(out, ("test",)), out, sets, list(c.cam_methods),
                  metrics.voxel_volume_ml(c.spacing_mm))
    print(f"\nclassifier on the held-out slices: AUC {roc_auc_score(pred['label'] > 0, pred['prob']):.3f}")
    for name, (gate, low, params) in sets.items():
        keep = called_rows(pred, gate, low)
        stats = {"called": int(keep.sum()), "precision": round(float((pred["label"].to_numpy()[keep] > 0).mean()), 3),
                 "recall": round(float(keep[pred["label"].to_numpy() > 0].mean()), 3)}
        print(f"{name:>10}: gate {gate}, low {low}, {stats}; " + ", ".join(
            f"{m} t {p['t']:.2f} q {p['q']:.1f} f {p.get('floor', 0.0):g}" for m, p in params.items()))
    return table


def report(table: pd.DataFrame) -> None:
    """Median Dice and ICC(A,1) of MTV per set and method; floor sets paired against no floor, hysteresis against floor."""
    lesion = table.dropna(subset=["dice"])
    print(f"\n{lesion['study_id'].nunique()} held-out studies with lesions; median per-study Dice, ICC(A,1) of MTV:")
    rows = [{"set": name, "method": m, "dice": g["dice"].median(),
             "mtv_icc": metrics.icc_agreement(g["true_mtv_ml"], g["mtv_ml"])["icc"]}
            for (name, m), g in lesion.groupby(["set", "method"], sort=False)]
    table = pd.DataFrame(rows).pivot(index="set", columns="method", values=["dice", "mtv_icc"])
    print(table.reindex(list(dict.fromkeys(lesion["set"]))).round(3).to_string())
    if "no floor" not in set(lesion["set"]):
        return
    wide = lesion.pivot_table(index="study_id", columns=["set", "method"], values="dice")
    print("\npaired (median of differences; Wilcoxon p):")
    for name in [s for s in dict.fromkeys(lesion["set"]) if s != "no floor" and not s.startswith(("p >=", "gate "))]:
        base = "floor" if name.startswith("floor, low") else "no floor"
        print(f"{name:>14} vs {base}: " + ", ".join(
            f"{m} {np.median(wide[name, m] - wide[base, m]):+.3f} (p {wilcoxon(wide[name, m], wide[base, m]).pvalue:.3g})"
            for m in wide[base].columns))


def main() -> None:
    """Build the held-out store, score the run's maps and U-Net (whichever it has), print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--studies", type=int, default=None, help="this many held-out studies (default: all)")
    parser.add_argument("--floors", type=float, nargs="+", default=[0.0, 2.0, 2.5, 3.0, 3.5])
    parser.add_argument("--lows", type=float, nargs="*", default=[],
                        help="also a hysteresis gate along z at each of these lower thresholds (floor searched)")
    parser.add_argument("--no-maps", action="store_true", help="score the run's U-Nets only (not the maps' sets)")
    args = parser.parse_args()
    has_maps = not args.no_maps and all((args.run_dir / f).exists() for f in ("classifier/best.pt", "cams/index.csv"))
    unets = [f for f in ("unet", pseudo.FOLDER) if (args.run_dir / f / "best.pt").exists()]
    if not (args.run_dir / "run.json").exists() or not (has_maps or unets):
        raise SystemExit(f"error: {args.run_dir}: needs run.json and classifier/best.pt with cams/index.csv "
                         f"(notebooks 01-03, or benchmarks.seed_dice_probe) or unet/ or cam_unet/best.pt (notebook 05)")
    run = infer.open_run(args.run_dir)
    rows = holdout_rows(MANIFEST, args.studies)
    print(f"{len(rows)} held-out studies: {rows['diagnosis'].value_counts().to_dict()}")
    store = build_store(rows, args.out, run)
    pred = None  # read by the maps and the CAM -> U-Net
    if (args.run_dir / "classifier" / "best.pt").exists():
        pred = train.run_predictions(run, train.load_classifier(run), ("test",), store)
    parts = []
    if has_maps:
        parts.append(score_maps(run, store, args.out, sorted(args.floors), args.lows, pred))
        if (args.run_dir / "segment" / "thresholds.json").exists():
            parts.append(score_threshold(run, args.out, metrics.voxel_volume_ml(run.config.spacing_mm)))
    parts += [score_unet(run, store, args.out, metrics.voxel_volume_ml(run.config.spacing_mm), pred, f) for f in unets]
    table = pd.concat(parts, ignore_index=True)
    table.to_csv(args.out / "holdout_dice.csv", index=False)
    report(table)


if __name__ == "__main__":
    main()
