"""The seed probe's table (benchmarks/classifier_seeds.py) on a hand-made training history."""
from __future__ import annotations

import numpy as np
import pandas as pd

from benchmarks.classifier_seeds import seed_row


def test_seed_row_keeps_the_epoch_fit_keeps_and_finds_where_training_left_ln2() -> None:
    history = pd.DataFrame({"epoch": [1, 2, 3, 4], "train_loss": [0.693, 0.69, 0.60, 0.40],
                            "val_auc": [0.70, np.nan, 0.90, 0.96], "val_pointing": [0.5, 0.5, 0.8, 0.3],
                            "val_pointing_visible": [0.6, 0.9, 0.8, 0.5], "val_cell_auc": [0.8, 0.8, 0.9, 0.7]})
    row = seed_row(history, seed=3, select="val_auc*val_pointing_visible")
    # scores 0.42, NaN (skipped, as fit scores it -inf), 0.72, 0.48: epoch 3 is kept
    assert row["kept_epoch"] == 3 and row["auc"] == 0.9 and row["pointing_visible"] == 0.8
    assert row["max_val_auc"] == 0.96 and row["left_plateau_epoch"] == 3 and row["epochs"] == 4 and row["seed"] == 3


def test_seed_row_reports_a_run_that_never_left_the_plateau() -> None:
    history = pd.DataFrame({"epoch": [1, 2], "train_loss": [0.693, 0.692], "val_auc": [0.5, 0.6],
                            "val_pointing": [0.1, 0.2], "val_pointing_visible": [0.1, 0.2], "val_cell_auc": [0.5, 0.5]})
    row = seed_row(history, seed=0, select="val_auc")
    assert row["kept_epoch"] == 2 and row["left_plateau_epoch"] is None
