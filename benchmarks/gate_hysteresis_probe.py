"""What the gate costs, split into false and missed slices, and a hysteresis gate along z; validation only.

    python -m benchmarks.gate_hysteresis_probe --run-dir runs/demo [--low 0.5]

Part 1, at the run's tuned gate and each method's tuned t and q: the validation median Dice as gated, without its
false slices (a perfect precision), with the missed tumor slices added (a perfect recall), and behind a perfect
gate. Part 2: a hysteresis gate (as in Canny's edges, along z): a slice counts when p >= the gate, or p >= `low`
and it touches such a slice through slices with p >= `low` of the same study (a lesion spans several slices, its
end slices score lower). For every gate of the run's grid, with and without it, t and q tuned anew: slices
called, precision, recall and each method's validation median Dice. Needs a run through notebook 04.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.pseudo_label_probe import median_dice
from wsseg_nb import runs, segment


def hysteresis(rows: pd.DataFrame, prob: np.ndarray, high: float, low: float) -> np.ndarray:
    """bool per row: p >= high, or p >= low and z-connected (same study_id, slices +-1) to such a row via p >= low."""
    keep = prob >= high
    weak = prob >= low
    position = pd.Series(np.arange(len(rows)), index=pd.MultiIndex.from_arrays([rows["study_id"], rows["slice"]]))
    neighbours = []
    for dz in (-1, 1):
        found = position.reindex(pd.MultiIndex.from_arrays([rows["study_id"], rows["slice"] + dz])).to_numpy()
        neighbours.append((np.flatnonzero(~np.isnan(found)), found[~np.isnan(found)].astype(np.int64)))
    while True:
        grown = keep.copy()
        for rows_with, neighbour in neighbours:
            grown[rows_with] |= keep[neighbour] & weak[rows_with]
        if np.array_equal(grown, keep):
            return keep
        keep = grown


def main() -> None:
    """Print both tables; write RUN_DIR/bench_gate_decomposition.csv and RUN_DIR/bench_gate_hysteresis.csv."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--low", type=float, default=0.5, help="the hysteresis gate's lower threshold")
    args = parser.parse_args()
    run = runs.start(args.profile, args.run_dir)
    cfg = run.config
    val = segment.load_gated(run.dir, ("val",))
    prob, tumor = val.rows["prob"].to_numpy(), (val.rows["label"] > 0).to_numpy()
    maps = {m: segment.load_cams(run.dir, m, val.rows) for m in cfg.cam_methods}
    gate = segment.read_gate(run.dir)
    called = prob >= gate
    cases = {"gated": called, "no false slices": called & tumor, "missed added": called | tumor, "perfect gate": tumor}
    params = {m: segment.read_method_params(run.dir, m) for m in cfg.cam_methods}
    split = pd.DataFrame({name: {m: median_dice(maps[m][keep], val.subset(keep), params[m]["t"], params[m]["q"])
                                 for m in cfg.cam_methods} for name, keep in cases.items()})
    print(f"gate p >= {gate}: {called.sum()} called, {(called & ~tumor).sum()} false, {(~called & tumor).sum()} "
          f"missed\n{split.round(3).to_string()}", flush=True)
    split.rename_axis("method").to_csv(run.dir / "bench_gate_decomposition.csv")
    table = []
    for high in cfg.gate_grid:
        for low in (None, args.low):
            if low is not None and low >= high:
                continue
            keep = prob >= high if low is None else hysteresis(val.rows, prob, high, low)
            kept = val.subset(keep)
            table.append({"gate": high, "low": low, "called": int(keep.sum()), "precision": tumor[keep].mean(),
                          "recall": keep[tumor].mean(),
                          **{m: segment.tune_algorithm1(maps[m][keep], kept.suv, kept.gt, kept.rows["study_id"],
                                                        kept.gt_total, cfg.t_grid, cfg.q_grid, desc=m).dice
                             for m in cfg.cam_methods}})
            print(pd.DataFrame(table).round(3).to_string(index=False), flush=True)
    pd.DataFrame(table).to_csv(run.dir / "bench_gate_hysteresis.csv", index=False)


if __name__ == "__main__":
    main()
