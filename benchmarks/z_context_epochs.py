"""Per-epoch validation AUC of each seed's classifier with and without the context along z (`cls_z_sigma_mm`).

    python -m benchmarks.z_context_epochs --run-dir runs/demo --seeds 0 1 2 --out /tmp/zepochs

`fit` validates each epoch on a thinned split (`cls_val_stride`), on which the context along z cannot be computed
(it needs every slice of a study), so the epoch is kept by the network's own AUC. This probe trains the seeds as
`benchmarks.classifier_seeds` does (the same trajectories: the extra scoring draws no random numbers) and adds,
after every epoch, the AUC on every validation slice of the network alone (`val_auc_all`) and of the slice score
with the context (`val_auc_z`), so that other epoch rules can be read off OUT/seed<N>/classifier/history.csv. It
prints, per seed, the epoch the demo keeps and the epoch `val_auc_z * val_pointing_visible` would keep.
Validation split only; each epoch's extra scoring costs one pass over the validation slices.
"""
from __future__ import annotations

from collections.abc import Callable

import pandas as pd
from sklearn.metrics import roc_auc_score

from benchmarks.classifier_seeds import kept_epoch, seed_parser, seed_run
from wsseg_nb import train
from wsseg_nb.models import VGG16CAM
from wsseg_nb.runs import Run

COLUMNS = ["epoch", "val_auc", "val_auc_all", "val_auc_z", "val_pointing_visible"]


def with_context_auc(probe: Callable[[VGG16CAM], dict[str, float]], run: Run) -> Callable[[VGG16CAM], dict[str, float]]:
    """`probe` plus the AUC of every validation slice, the network alone and with the run's context along z."""
    def scored(model: VGG16CAM) -> dict[str, float]:
        pred = train.run_predictions(run, model, ("val",))
        labels = pred["label"] > 0
        return {**probe(model), "auc_all": roc_auc_score(labels, pred["prob_slice"]),
                "auc_z": roc_auc_score(labels, pred["prob"])}
    return scored


def main() -> None:
    """Train each seed with the extra per-epoch scores; print the kept epochs under both rules."""
    args = seed_parser(__doc__, [0, 1, 2], "z_context_epochs", "cls_epochs=48").parse_args()
    pointing_probe = train.pointing_probe
    rows = []
    for seed in args.seeds:
        run = seed_run(args.run_dir, args.out, seed, args.profile, args.params)
        train.pointing_probe = lambda *a, **k: with_context_auc(pointing_probe(*a, **k), run)
        try:
            history = train.train_classifier(run)
        finally:
            train.pointing_probe = pointing_probe
        for rule in (run.config.cls_select, "val_auc_z*val_pointing_visible"):
            rows.append({"seed": seed, "rule": rule, **kept_epoch(history, rule)[COLUMNS].round(3).to_dict()})
        table = pd.DataFrame(rows)
        table.to_csv(args.out / "z_context_epochs.csv", index=False)
        print(table.to_string(index=False), flush=True)


if __name__ == "__main__":
    main()
