"""Validation Dice of Algorithm 1 at classifier gates below and above the config's grid (is the tuned gate at an edge?).

    python -m benchmarks.gate_probe --run-dir runs/demo --gates 0.3 0.4 0.5 0.6 0.7 0.8 0.9 --methods cam gradcampp

Maps the run's kept classifier on every validation slice with p >= the lowest gate or a lesion (notebook 03 maps
only those above the config's lowest gate), then runs notebook 04's joint (gate, t, q) search on them.
Validation split only; nothing in the run directory is written.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from wsseg_nb import cam, infer, segment, train
from wsseg_nb.slices import SliceStore


def gate_table(run_dir: Path, gates: list[float], methods: list[str]) -> tuple[pd.DataFrame, float, dict]:
    """Best median per-study Dice per gate and method, slices called and their precision; the best gate and its (t, q)."""
    run = infer.open_run(run_dir)
    store = SliceStore(run.store)
    source = run_dir / "classifier" / "predictions.csv"
    predictions = pd.read_csv(source, dtype={"study_id": str})
    mapped = (predictions["prob"] >= min(gates)) | (predictions["label"] > 0)
    rows = predictions[(predictions["split"] == "val") & mapped]
    data = segment.gather_slices(store, rows, ("val",), str(source))
    maps = cam.cams_for_slices(train.load_classifier(run), store, data.rows["position"].to_numpy(), methods,
                               topk=run.config.scorecam_topk, shift=train.cam_shift(run),
                               scorecam_weights=run.config.scorecam_weights)
    best, tuned, table = segment.tune_with_gate({m: maps[m].astype(np.float32) for m in methods}, data,
                                                run.config.t_grid, run.config.q_grid, gates)
    rows = data.rows
    called = [rows["prob"] >= g for g in gates]
    table["called"] = [int(c.sum()) for c in called]
    table["precision"] = [float((rows["label"][c] > 0).mean()) if c.any() else float("nan") for c in called]
    return table, best, {m: {**v.params, "dice": v.dice} for m, v in tuned.items()}


def main() -> None:
    """Print the table of gates and the best gate's (t, q) per method."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--gates", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    parser.add_argument("--methods", nargs="+", default=["cam", "gradcampp"])
    args = parser.parse_args()
    for needed in ("run.json", "classifier/predictions.csv", "classifier/best.pt", "store/index.csv"):
        if not (args.run_dir / needed).exists():
            raise SystemExit(f"error: {args.run_dir / needed}: missing (run notebooks 01-02 into {args.run_dir})")
    table, best, tuned = gate_table(args.run_dir, sorted(args.gates), args.methods)
    print(table.round(3).to_string())
    print(f"best gate {best}: " + ", ".join(f"{m} t {v['t']:.3f} q {v['q']:.1f} Dice {v['dice']:.3f}"
                                            for m, v in tuned.items()))


if __name__ == "__main__":
    main()
