"""Shared fixtures: a tiny preprocessed store (three studies of tests/test_slices.py's kind)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from test_slices import SIZE, SPACING, write_study
from wsseg_nb import slices

__all__ = ["SIZE", "SPACING"]


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RUN/store of three tiny studies (S0, S1 train; S2 val), preprocessed once per session; returns the store path."""
    root = tmp_path_factory.mktemp("tiny")
    df = pd.DataFrame([write_study(root / "data", f"S{i}", "lymphoma") for i in range(3)])
    df["split"] = ["train", "train", "val"]
    slices.preprocess_cohort(df, root / "run" / "store", SPACING, SIZE, workers=1)
    return root / "run" / "store"
