"""Train the demo classifier at several seeds on one run's slice store and tabulate each seed's kept epoch.

    python -m benchmarks.classifier_seeds --run-dir runs/demo --seeds 1 2 --out /tmp/seeds [-p cls_ct_dropout=0.5]

Each seed trains in OUT/seed<N>/classifier (resumable), with OUT/seed<N>/store a link to RUN_DIR/store, so every
seed sees the same studies and slices and only the training draws differ. Validation split only.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from wsseg_nb import runs, train
from wsseg_nb.__main__ import parse_overrides

COLUMNS = ("val_auc", "val_pointing", "val_pointing_visible", "val_cell_auc")


def kept_epoch(history: pd.DataFrame, select: str) -> pd.Series:
    """The history row the classifier keeps (`train.selection_score` maximised; first on ties, as `fit` does)."""
    return history.loc[train.selection_score(history, select).idxmax()]


def seed_row(history: pd.DataFrame, seed: int, select: str) -> dict[str, float]:
    """One seed's table row: the kept epoch's numbers, the best AUC reached and when training left ln 2."""
    kept = kept_epoch(history, select)
    left = history.index[history["train_loss"] < 0.65]
    return {"seed": seed, "kept_epoch": int(kept["epoch"]), "epochs": len(history),
            **{k.removeprefix("val_"): round(float(kept[k]), 3) for k in COLUMNS},
            "max_val_auc": round(float(history["val_auc"].max()), 3),
            "left_plateau_epoch": int(history.loc[left[0], "epoch"]) if len(left) else None}


def seed_run(run_dir: Path, out: Path, seed: int, profile: str, params: list[str]) -> runs.Run:
    """OUT/seed<N>, a run of the profile (overrides KEY=VALUE, seed N) whose store links to RUN_DIR/store."""
    store = (run_dir / "store").resolve()
    if not (store / "index.csv").exists():
        raise SystemExit(f"error: {store}: no slice store (run notebook 01 into {run_dir} first)")
    directory = out / f"seed{seed}"
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "store").exists():
        (directory / "store").symlink_to(store)
    return runs.start(profile, directory, **{**parse_overrides(params), "seed": seed})


def seed_parser(doc: str, seeds: list[int], out: str, example: str) -> argparse.ArgumentParser:
    """The arguments every seed probe takes: --run-dir, --seeds, --out (bench_results/<out>), --profile, -p."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--seeds", type=int, nargs="+", default=seeds)
    parser.add_argument("--out", type=Path, default=Path("bench_results") / out)
    parser.add_argument("--profile", default="demo")
    parser.add_argument("-p", dest="params", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override one config value (repeatable), e.g. -p {example}")
    return parser


def main() -> None:
    """Train each seed (resuming where a seed stopped) and print the table; write it to OUT/seeds.csv."""
    args = seed_parser(__doc__, [0, 1, 2], "classifier_seeds", "cls_ct_dropout=0.5").parse_args()
    rows = []
    for seed in args.seeds:
        run = seed_run(args.run_dir, args.out, seed, args.profile, args.params)
        history = train.train_classifier(run)
        rows.append(seed_row(history, seed, run.config.cls_select))
        table = pd.DataFrame(rows)
        table.to_csv(args.out / "seeds.csv", index=False)
        print(table.to_string(index=False), flush=True)


if __name__ == "__main__":
    main()
