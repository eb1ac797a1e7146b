"""Train the demo U-Net at several seeds on one run's slice store; tabulate the epoch kept within each budget.

    python -m benchmarks.unet_seeds --run-dir runs/demo --seeds 0 1 --budgets 12 24 --out /tmp/unet -p unet_epochs=24

Each seed trains in OUT/seed<N>/unet (resumable) on RUN_DIR/store, as `benchmarks.classifier_seeds` does for the
classifier. With a constant learning rate (the demo's `unet_schedule`) the first E epochs of a longer run are the
E-epoch run, so one run per seed answers every budget E: the row keeps the best of epochs 1..E by `unet_select`.
Validation split only.
"""
from __future__ import annotations

import pandas as pd

from benchmarks.classifier_seeds import kept_epoch, seed_parser, seed_run
from wsseg_nb import train


def budget_row(history: pd.DataFrame, seed: int, budget: int, select: str) -> dict[str, float]:
    """One seed's row at an epoch budget: the epoch kept among the first `budget`, its validation numbers."""
    first = history[history["epoch"] <= budget]
    if len(first) < budget:
        raise ValueError(f"seed {seed}: {len(first)} epochs trained, budget {budget} needs more (-p unet_epochs=...)")
    kept = kept_epoch(first, select)
    return {"seed": seed, "budget": budget, "kept_epoch": int(kept["epoch"]),
            "study_dice": round(float(kept["val_study_dice"]), 3), "threshold": float(kept["val_threshold"]),
            "pooled_dice": round(float(kept["val_dice"]), 3),
            "train_s_per_epoch": round(float(first["train_s"].mean()), 1)}


def main() -> None:
    """Train each seed (resuming where one stopped), print the table and write it to OUT/unet_seeds.csv."""
    parser = seed_parser(__doc__, [0, 1], "unet_seeds", "unet_epochs=24")
    parser.add_argument("--budgets", type=int, nargs="+", default=None, help="epoch budgets (default: unet_epochs)")
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        run = seed_run(args.run_dir, args.out, seed, args.profile, args.params)
        history = train.train_unet(run)
        for budget in args.budgets or [run.config.unet_epochs]:
            rows.append(budget_row(history, seed, budget, run.config.unet_select))
        table = pd.DataFrame(rows)
        table.to_csv(args.out / "unet_seeds.csv", index=False)
        print(table.to_string(index=False), flush=True)


if __name__ == "__main__":
    main()
