"""A demo manifest with more training studies: the demo's own rows plus N training-split rows from outside it.

    python -m benchmarks.more_train_studies --extra 60 --out /tmp/run120/manifest.csv
    python -m wsseg_nb synth --manifest /tmp/run120/manifest.csv
    python -m wsseg_nb preprocess --manifest /tmp/run120/manifest.csv --out /tmp/run120/store
    python -m benchmarks.classifier_seeds --run-dir /tmp/run120 --seeds 0 1 2 --out /tmp/run120/seeds

The added rows (demo = 0, split = train in the committed manifest) are taken in study order per diagnosis, in the
proportions of the demo's training studies, and marked demo = 1; validation and test stay the demo's 12 + 12, so a
classifier trained on the larger store is scored on the same slices. Paths are written absolute (the studies are
generated where the committed manifest puts them). Session 22 measured the lever with it (30 -> 60 studies,
docs/log.md); the demo has trained its classifier on 60 since session 26.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from wsseg_nb import manifest

MANIFEST = Path("data_manifest.csv")


def more_train_studies(path: Path, extra: int) -> pd.DataFrame:
    """The manifest (as strings) with `extra` training rows outside the demo marked demo = 1, stratified by diagnosis."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    demo = df[(df["split"] == "train") & (df["demo"] == "1")]
    pool = df[(df["split"] == "train") & (df["demo"] == "0")].sort_values("study_id")
    sizes = demo.groupby("diagnosis").size()
    counts = dict(zip(sizes.index, manifest.largest_remainder(extra, sizes.tolist())))
    picked = pd.concat([pool[pool["diagnosis"] == d].head(n) for d, n in counts.items()])
    if len(picked) < extra:
        raise SystemExit(f"error: {path}: only {len(picked)} training studies outside the demo in its proportions")
    df.loc[picked.index, "demo"] = "1"
    for column in manifest.PATH_FIELDS:
        df[column] = [str((path.parent / p).resolve()) for p in df[column]]
    return df


def main() -> None:
    """Write the manifest to --out and print the training studies per diagnosis."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra", type=int, default=30)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    df = more_train_studies(MANIFEST, args.extra)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    train = df[(df["split"] == "train") & (df["demo"] == "1")]
    print(f"{args.out}: {len(train)} training studies {train['diagnosis'].value_counts().to_dict()}")


if __name__ == "__main__":
    main()
