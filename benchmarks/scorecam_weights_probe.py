"""ScoreCAM's channel weights: a softmax over the masked inputs' logits (Eq. 6) or their probabilities as they are.

    python -m benchmarks.scorecam_weights_probe --run-dir RUN [--gate G]

Eq. 6 of ScoreCAM normalises the channel scores with a softmax; the authors' released code instead weights each
channel by the class probability of its masked input, unnormalised. With a single-logit head the softmax of logits
weights channel k by exp(logit_k) (nearly one-hot when the logits spread), the probability by sigmoid(logit_k)
(every channel whose region alone reads as tumor counts about equally). This probe recomputes notebook 03's
ScoreCAM on the run's validation rows (cams/index.csv) both ways (`scorecam_weights`), checks the run's own kind
against its stored maps, and prints each kind's median per-study Dice at the run's gate and behind a perfect
gate, t, q and floor tuned on validation (notebook 04's search). Validation only; needs a run through notebook 04, or, with --gate, a
`benchmarks.seed_dice_probe` seed directory (its maps, and the gate it printed).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from wsseg_nb import cam, infer, segment, train
from wsseg_nb.config import Config
from wsseg_nb.slices import SliceStore


def tuned_dice(maps: dict[str, np.ndarray], data: segment.GatedSlices, cfg: Config, gate: float) -> dict[str, float]:
    """Each variant's median per-study Dice at `gate`, (t, q, floor) tuned on `data` as notebook 04 does."""
    _, tuned, _ = segment.tune_with_gate(maps, data, cfg.t_grid, cfg.q_grid, [gate], cfg.floor_grid)
    return {name: round(result.dice, 3) for name, result in tuned.items()}


def main() -> None:
    """Print and write (RUN/bench_scorecam_weights.csv) both variants' validation Dice, at the gate and perfect."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--gate", type=float, help="the classifier's gate (default: RUN/segment/thresholds.json's)")
    args = parser.parse_args()
    run = infer.open_run(args.run_dir)
    cfg = run.config
    store = SliceStore(run.store)
    model = train.load_classifier(run)
    val = segment.load_gated(run.dir, ("val",))
    positions, shift = val.rows["position"].to_numpy(), train.cam_shift(run)

    maps = {weights: cam.cams_for_slices(model, store, positions, ["scorecam"], batch_size=cfg.cam_batch,
                                         device=run.device, topk=cfg.scorecam_topk, shift=shift,
                                         scorecam_weights=weights)["scorecam"].astype(np.float32)
            for weights in cam.SCORECAM_WEIGHTS}
    stored = segment.load_cams(run.dir, "scorecam", val.rows)
    print(f"the run's own weights ({cfg.scorecam_weights}) against its stored maps: max |d| "
          f"{np.abs(maps[cfg.scorecam_weights] - stored).max():.4f}")
    gate = segment.read_gate(run.dir) if args.gate is None else args.gate
    tumorous = (val.rows["label"] > 0).to_numpy()
    behind_oracle = {name: m[tumorous] for name, m in maps.items()}
    table = pd.DataFrame({f"gate {gate:g}": tuned_dice(maps, val, cfg, gate),
                          "perfect gate": tuned_dice(behind_oracle, val.oracle(), cfg, 0.0)})
    print(table.to_string())
    table.to_csv(run.dir / "bench_scorecam_weights.csv")


if __name__ == "__main__":
    main()
