"""Notebook 06: evaluate every method of a run, tabulate beside the paper, export NIfTI masks, print the results."""
from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import metrics
from .progress import progress
from .runs import write_csv_atomic
from .segment import PAPER_PARAMS

PAPER_METHODS = ("cam", "gradcam", "gradcampp", "scorecam", "threshold", "unet")
"""The paper's methods, in the order of its Table 1."""
METHODS = (*PAPER_METHODS, "cam_unet")
"""Every segmentation method: the paper's, then the U-Net trained on CAM pseudo-labels (beyond the paper)."""
WEAKLY_SUPERVISED = ("cam", "gradcam", "gradcampp", "scorecam", "cam_unet")
"""Methods trained on slice labels only (blue in Fig. 5); the others are the baselines (red)."""
DISPLAY = {"cam": "CAM", "gradcam": "GradCAM", "gradcampp": "GradCAM++", "scorecam": "ScoreCAM",
           "threshold": "Threshold", "unet": "U-Net", "cam_unet": "CAM → U-Net", "layercam": "LayerCAM",
           "layercam_fused": "LayerCAM fused"}
"""Method names as the paper prints them."""

PAPER = pd.DataFrame(
    {
        # Sec. 3.1.1: median Dice (IQR)
        "dice_median": [0.46, 0.12, 0.42, 0.47, 0.29, 0.72],
        "dice_iqr": [0.35, 0.21, 0.30, 0.35, 0.28, 0.36],
        # Sec. 3.1.2: median MTV difference (IQR), ml
        "mtv_absdev_median": [26, 30, 24, 27, 44, 17],
        "mtv_absdev_iqr": [68, 76, 48, 48, 92, 27],
        # Sec. 3.1.3: median TLG deviation (IQR), g
        "tlg_absdev_median": [101, 112, 108, 99, 167, 50],
        "tlg_absdev_iqr": [219, 482, 267, 285, 524, 110],
        # Table 1: ICC(2,1) [95% CI], every p < 0.001
        "mtv_icc": [0.64, 0.55, 0.64, 0.64, 0.59, 0.94],
        "mtv_ci_low": [0.50, 0.39, 0.48, 0.50, 0.45, 0.91],
        "mtv_ci_high": [0.74, 0.67, 0.73, 0.75, 0.71, 0.96],
        "tlg_icc": [0.85, 0.40, 0.79, 0.82, 0.88, 0.99],
        "tlg_ci_low": [0.77, 0.19, 0.66, 0.71, 0.83, 0.98],
        "tlg_ci_high": [0.90, 0.57, 0.86, 0.88, 0.92, 0.99],
        # Sec. 3.1: tuned CAM threshold t_m and SUV percentile q_m (Algorithm 1)
        "t": [PAPER_PARAMS.get(m, {}).get("t", np.nan) for m in PAPER_METHODS],
        "q": [PAPER_PARAMS.get(m, {}).get("q", np.nan) for m in PAPER_METHODS],
    },
    index=pd.Index(PAPER_METHODS, name="method"),
)
"""Früh et al. 2021, 90 test patients. 'Median difference' of MTV/TLG read as the median |estimate - truth|."""
PAPER_N_TEST = 90


def _run_dir(run: Any) -> Path:
    """The directory of a runs.Run or a path."""
    return Path(run.dir if hasattr(run, "dir") else run)


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 80) -> Path:
    """Write a matplotlib figure as PNG to a temporary name, then rename (notebook 06)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    tmp.replace(path)
    return path


def split_studies(store: Any, split: str) -> pd.DataFrame:
    """study_id and diagnosis of the studies in one split of the slice store (notebook 06)."""
    index = store.index
    studies = index.loc[index["split"] == split, ["study_id", "diagnosis"]].drop_duplicates("study_id")
    if studies.empty:
        raise ValueError(f"slice store index has no studies in split {split!r} (field 'split'; "
                         f"present: {sorted(index['split'].unique())})")
    return studies.sort_values("study_id").reset_index(drop=True)


def load_mask(run: Any, method: str, study_id: str, shape: tuple[int, ...]) -> np.ndarray:
    """A method's predicted mask masks/<method>/<study>.npz as bool, checked against the store grid (notebook 06)."""
    path = _run_dir(run) / "masks" / method / f"{study_id}.npz"
    if not path.is_file():
        raise ValueError(f"study {study_id}, method {method}: mask file {path} not found (run the notebook that "
                         f"writes masks/{method}/ first)")
    with np.load(path) as npz:
        if "mask" not in npz.files:
            raise ValueError(f"study {study_id}, file {path}: field 'mask' missing (has {npz.files})")
        mask = npz["mask"]
    if mask.shape != tuple(shape):
        raise ValueError(f"study {study_id}, file {path}, field 'mask': shape {mask.shape} differs from the "
                         f"store grid {tuple(shape)}")
    return mask.astype(bool, copy=False)


def split_masks(run: Any, split: str, methods: Sequence[str], desc: str) -> Iterator[tuple[str, str, Any, dict[str, np.ndarray]]]:
    """(study_id, diagnosis, store study, {method: mask}) for each study of a split, with a progress bar."""
    from .slices import SliceStore

    run_dir = _run_dir(run)
    store = SliceStore(run_dir / "store")
    studies = split_studies(store, split)
    for study_id, diagnosis in progress(studies.itertuples(index=False), desc=desc, total=len(studies)):
        study = store.study(study_id)
        yield study_id, diagnosis, study, {m: load_mask(run_dir, m, study_id, study.mask.shape) for m in methods}


def run_methods(config: Any) -> list[str]:
    """The methods a run's chain produces masks for: its CAM methods, the two baselines, CAM -> U-Net if trained."""
    return [m for m in METHODS if m in config.cam_methods or m in ("threshold", "unet")
            or (m == "cam_unet" and config.cam_unet_epochs > 0)]


def evaluate_run(run: Any, split: str = "test", methods: Sequence[str] = METHODS) -> pd.DataFrame:
    """Per-study metrics of every method on one split: one row per (study, method) (notebook 06)."""
    frames = []
    for study_id, diagnosis, study, preds in split_masks(run, split, methods, f"evaluate {split}"):
        frame = metrics.per_study_metrics(study_id, study.suv, study.mask, preds, study.meta["spacing_mm"])
        frame.insert(1, "diagnosis", diagnosis)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def methods_in(per_study: pd.DataFrame) -> list[str]:
    """Methods present in a per-study table, in paper order (unknown ones after) (notebook 06)."""
    present = list(dict.fromkeys(per_study["method"]))
    return [m for m in METHODS if m in present] + [m for m in present if m not in METHODS]


def with_lesions(per_study: pd.DataFrame) -> pd.DataFrame:
    """Rows of studies with at least one ground-truth lesion (where Dice, MTV and TLG deviation are defined)."""
    return per_study[per_study["n_lesions"] > 0]


def summary_table(per_study: pd.DataFrame) -> pd.DataFrame:
    """Per method: median (IQR) Dice, |MTV|/|TLG| deviation (lesion studies), FPV/FNV, detection (notebook 06)."""
    rows = []
    for method in methods_in(per_study):
        d = per_study[per_study["method"] == method]
        les, neg = with_lesions(d), d[d["n_lesions"] == 0]
        row: dict[str, Any] = {"method": method, "n_studies": len(d), "n_lesion_studies": len(les)}
        for col in ("dice", "mtv_absdev_ml", "mtv_dev_ml", "tlg_absdev_g", "tlg_dev_g", "fn_volume_ml"):
            row[f"{col}_median"], row[f"{col}_iqr"] = metrics.median_iqr(les[col])
        row["fp_volume_ml_median"], row["fp_volume_ml_iqr"] = metrics.median_iqr(d["fp_volume_ml"])
        row["negatives_fp_volume_ml_median"] = metrics.median_iqr(neg["fp_volume_ml"])[0]
        lesions = d["n_lesions"].sum()
        row["lesion_sensitivity"] = d["n_detected"].sum() / lesions if lesions else np.nan
        row["fp_lesions_per_study"] = d["n_fp_lesions"].mean()
        rows.append(row)
    return pd.DataFrame(rows)


def icc_table(per_study: pd.DataFrame) -> pd.DataFrame:
    """Table 1: ICC(2,1) of MTV and TLG vs truth, 95% CI, p, on lesion studies (NaN if < 3) (notebook 06)."""
    rows = []
    for method in methods_in(per_study):
        d = with_lesions(per_study[per_study["method"] == method])
        row: dict[str, Any] = {"method": method, "n": len(d)}
        for q, true, pred in (("mtv", "mtv_true_ml", "mtv_pred_ml"), ("tlg", "tlg_true_g", "tlg_pred_g")):
            r = metrics.icc_agreement(d[true], d[pred]) if len(d) >= 3 else dict.fromkeys(
                ("icc", "ci_low", "ci_high", "pval"), np.nan)  # too few studies: undefined, not an error
            row.update({f"{q}_icc": r["icc"], f"{q}_ci_low": r["ci_low"], f"{q}_ci_high": r["ci_high"],
                        f"{q}_pval": r["pval"]})
        rows.append(row)
    return pd.DataFrame(rows)


def wilcoxon_table(per_study: pd.DataFrame, metric: str = "dice", alpha: float = 0.05) -> pd.DataFrame:
    """Paired Wilcoxon signed-rank tests of a per-study metric between every two methods, with Holm p (notebook 06)."""
    import pingouin as pg
    from scipy import stats

    wide = per_study.pivot(index="study_id", columns="method", values=metric)
    rows = []
    for a, b in itertools.combinations(methods_in(per_study), 2):
        pair = wide[[a, b]].dropna()
        diff = (pair[a] - pair[b]).to_numpy()
        if np.count_nonzero(diff) == 0:
            stat, p = np.nan, 1.0
        else:
            res = stats.wilcoxon(pair[a], pair[b])
            stat, p = float(res.statistic), float(res.pvalue)
        rows.append({"method_a": a, "method_b": b, "n": len(pair), f"median_{metric}_a": pair[a].median(),
                     f"median_{metric}_b": pair[b].median(),
                     "median_difference": np.median(diff) if len(diff) else np.nan,
                     "statistic": stat, "pval": p})
    table = pd.DataFrame(rows)
    table["pval_holm"] = pg.multicomp(table["pval"].to_numpy(), alpha=alpha, method="holm")[1]
    table["significant"] = table["pval"] < alpha
    table["significant_holm"] = table["pval_holm"] < alpha
    return table


def diagnosis_table(per_study: pd.DataFrame) -> pd.DataFrame:
    """Per diagnosis and method: studies, median (IQR) Dice, median |MTV| deviation, median FP volume (notebook 06)."""
    rows = []
    for (diagnosis, method), d in per_study.groupby(["diagnosis", "method"], sort=False):
        les = with_lesions(d)
        dice_med, dice_iqr = metrics.median_iqr(les["dice"])
        rows.append({"diagnosis": diagnosis, "method": method, "n_studies": len(d), "dice_median": dice_med,
                     "dice_iqr": dice_iqr, "mtv_absdev_ml_median": metrics.median_iqr(les["mtv_absdev_ml"])[0],
                     "fp_volume_ml_median": metrics.median_iqr(d["fp_volume_ml"])[0]})
    order = {m: i for i, m in enumerate(methods_in(per_study))}
    table = pd.DataFrame(rows)
    return table.sort_values(["diagnosis", "method"], key=lambda s: s.map(order) if s.name == "method" else s,
                             ignore_index=True)


def read_thresholds(run: Any) -> pd.DataFrame:
    """Tuned t_m, q_m and SUV floor per method from segment/thresholds.json (empty when absent) (notebook 06)."""
    path = _run_dir(run) / "segment" / "thresholds.json"
    if not path.is_file():
        return pd.DataFrame(columns=["t", "q", "floor"], index=pd.Index([], name="method"))
    raw = json.loads(path.read_text())
    rows = {m: {k: v.get(k, np.nan) for k in ("t", "q", "floor")} for m, v in raw.items() if isinstance(v, dict)}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("method")


def paper_comparison(summary: pd.DataFrame, icc: pd.DataFrame, thresholds: pd.DataFrame | None = None) -> pd.DataFrame:
    """Our numbers beside the paper's, per method: Dice, |MTV| and |TLG| deviation, ICCs, t_m, q_m; our floor (nb 06)."""
    ours = summary.set_index("method").rename(columns={
        "mtv_absdev_ml_median": "mtv_absdev_median", "mtv_absdev_ml_iqr": "mtv_absdev_iqr",
        "tlg_absdev_g_median": "tlg_absdev_median", "tlg_absdev_g_iqr": "tlg_absdev_iqr"})
    ours = ours.join(icc.set_index("method").drop(columns="n"))
    if thresholds is not None and len(thresholds):
        ours = ours.join(thresholds[["t", "q", "floor"]].astype(float))
    table = pd.DataFrame({"method": ours.index, "n_lesion_studies": ours["n_lesion_studies"].to_numpy()})
    for col in PAPER.columns:
        table[col] = ours[col].to_numpy() if col in ours else np.nan
        table[f"paper_{col}"] = PAPER[col].reindex(ours.index).to_numpy()
    table["floor"] = ours["floor"].to_numpy() if "floor" in ours else np.nan  # not the paper's: no paper_floor
    return table


def _median_iqr_text(median: float, iqr: float, fmt: str) -> str:
    """'median (IQR)' or '-' when undefined."""
    return "-" if not np.isfinite(median) else f"{median:{fmt}} ({iqr:{fmt}})"


def results_table(comparison: pd.DataFrame) -> pd.DataFrame:
    """The headline table as text cells: ours beside the paper for Dice, |dMTV|, |dTLG| and ICCs (notebook 06)."""
    c = comparison
    cells: dict[str, list[str]] = {"Method": [DISPLAY.get(m, m) for m in c["method"]]}
    columns = (("Dice", "dice", ".2f"), ("|dMTV| ml", "mtv_absdev", ".0f"), ("|dTLG| g", "tlg_absdev", ".0f"))
    for label, key, fmt in columns:
        for who, prefix in (("ours", ""), ("paper", "paper_")):
            cells[f"{label} {who}"] = [_median_iqr_text(m, i, fmt) for m, i in
                                       zip(c[f"{prefix}{key}_median"], c[f"{prefix}{key}_iqr"])]
    for q in ("mtv", "tlg"):
        for who, prefix in (("ours", ""), ("paper", "paper_")):
            cells[f"ICC {q.upper()} {who}"] = ["-" if not np.isfinite(v) else f"{v:.2f}" for v in c[f"{prefix}{q}_icc"]]
    return pd.DataFrame(cells)


def results_text(run: Any) -> str | None:
    """results/comparison.csv of a run as the printed headline table (None when absent) (notebook 06)."""
    path = _run_dir(run) / "results" / "comparison.csv"
    if not path.is_file():
        return None
    comparison = pd.read_csv(path)
    n = int(comparison["n_lesion_studies"].max())
    return (f"Median (IQR) over {n} test studies with lesions (paper: {PAPER_N_TEST} patients); ICC(2,1) agreement\n"
            + results_table(comparison).to_string(index=False))


def print_results(run: Any) -> None:
    """Print the final results table of a run (the chain's last step) (notebook 06)."""
    text = results_text(run)
    print(text if text is not None else f"no results yet: {_run_dir(run) / 'results' / 'comparison.csv'} is missing")


def write_tables(run: Any, per_study: pd.DataFrame) -> dict[str, Path]:
    """Compute and write per_study, summary, icc, wilcoxon, diagnosis and comparison CSVs to results/ (notebook 06)."""
    out = _run_dir(run) / "results"
    summary, icc = summary_table(per_study), icc_table(per_study)
    tables = {"per_study": per_study, "summary": summary, "icc": icc, "wilcoxon": wilcoxon_table(per_study),
              "diagnosis": diagnosis_table(per_study),
              "comparison": paper_comparison(summary, icc, read_thresholds(run))}
    return {name: write_csv_atomic(out / f"{name}.csv", df) for name, df in tables.items()}


def export_nifti_masks(run: Any, methods: Sequence[str] = METHODS, split: str = "test",
                       images: bool = True) -> list[Path]:
    """results/nifti/<method>/<study>.nii.gz (+ truth; CT, SUV if images) on the store grid and affine (notebook 06)."""
    from .volume import save_nifti

    out = _run_dir(run) / "results" / "nifti"
    written = []
    for study_id, _, study, preds in split_masks(run, split, methods, "export NIfTI"):
        affine = np.asarray(study.meta["affine"], dtype=np.float64)
        volumes = {"truth": np.asarray(study.mask, dtype=np.uint8)}
        if images:
            volumes.update(ct=np.asarray(study.ct), suv=np.asarray(study.suv))
        volumes.update(preds)
        for name, volume in volumes.items():
            path = out / name / f"{study_id}.nii.gz"
            save_nifti(volume, affine, path)
            written.append(path)
    return written
