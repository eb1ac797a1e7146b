"""Per-study evaluation: 3D Dice, MTV, TLG, autoPET false-positive/negative volumes, lesion detection, ICC."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

CONNECTIVITY_18 = ndimage.generate_binary_structure(3, 2)
"""Lesion connectivity of the autoPET challenge: faces and edges touch, corners alone do not."""


def voxel_volume_ml(spacing_mm: Sequence[float]) -> float:
    """Volume of one voxel in ml from its (z, y, x) spacing in mm (1 ml = 1000 mm^3) (notebook 06)."""
    spacing = np.asarray(spacing_mm, dtype=float)
    if spacing.shape != (3,) or not np.all(spacing > 0):
        raise ValueError(f"spacing_mm must be three positive numbers (z, y, x) in mm, got {spacing_mm!r}")
    return float(np.prod(spacing)) / 1000.0


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """3D Dice 2|A∩B| / (|A|+|B|); NaN when the ground truth is empty (undefined, as in autoPET) (notebook 06)."""
    pred, truth = _pair(pred, truth)
    n_truth = np.count_nonzero(truth)
    if n_truth == 0:
        return float("nan")
    return 2.0 * np.count_nonzero(pred & truth) / (np.count_nonzero(pred) + n_truth)


def mtv_ml(mask: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Metabolic tumour volume: voxels in the mask times the voxel volume, in ml (notebook 06)."""
    return np.count_nonzero(mask) * voxel_volume_ml(spacing_mm)


def tlg_g(suv: np.ndarray, mask: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Total lesion glycolysis SUVmean x MTV = sum of SUV in the mask x voxel ml, in g (SUV in g/ml) (notebook 06)."""
    suv, mask = np.asarray(suv), np.asarray(mask, dtype=bool)
    if suv.shape != mask.shape:
        raise ValueError(f"SUV shape {suv.shape} differs from mask shape {mask.shape}")
    return float(suv[mask].sum(dtype=np.float64)) * voxel_volume_ml(spacing_mm)


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """18-connected lesion labels (0 = background) and their count (notebook 06)."""
    return ndimage.label(np.asarray(mask, dtype=bool), structure=CONNECTIVITY_18)


def lesion_uptake(suv: np.ndarray, mask: np.ndarray, spacing_mm: Sequence[float],
                  shell_mm: float = 10.0) -> pd.DataFrame:
    """Per 18-connected lesion: volume (ml), measured SUVmax and its ratio to the local background (notebook 01).

    The local background is the median SUV of a shell `shell_mm` thick around the lesion (other lesions excluded).
    """
    suv, mask = np.asarray(suv), np.asarray(mask, dtype=bool)
    if suv.shape != mask.shape:
        raise ValueError(f"SUV shape {suv.shape} differs from mask shape {mask.shape}")
    labels, n = components(mask)
    steps = np.maximum(1, np.round(shell_mm / np.asarray(spacing_mm, dtype=float))).astype(int)
    rows = []
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        grown = tuple(slice(max(b.start - k, 0), b.stop + k) for b, k in zip(box, steps))
        own = labels[grown] == i
        near = ndimage.binary_dilation(own, np.ones(tuple(2 * steps + 1), bool)) & ~mask[grown]
        background = float(np.median(suv[grown][near])) if near.any() else float("nan")
        suvmax = float(suv[grown][own].max())
        rows.append({"lesion": i, "volume_ml": own.sum() * voxel_volume_ml(spacing_mm), "suvmax": suvmax,
                     "background_suv": background, "lesion_to_background": suvmax / background})
    return pd.DataFrame(rows, columns=["lesion", "volume_ml", "suvmax", "background_suv", "lesion_to_background"])


def _unmatched(labels: np.ndarray, n: int, own: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per component of `labels` (of mask `own`): its size in voxels and whether it overlaps no voxel of `other`."""
    sizes = np.bincount(labels[own], minlength=n + 1)[1:]  # foreground voxels only: fast for sparse masks
    hits = np.bincount(labels[other], minlength=n + 1)[1:]
    return sizes, hits == 0


def lesion_metrics(pred: np.ndarray, truth: np.ndarray, spacing_mm: Sequence[float],
                   truth_labels: tuple[np.ndarray, int] | None = None) -> dict[str, float]:
    """autoPET FP/FN volumes (ml) and lesion-wise detection from 18-connected components (notebook 06)."""
    pred, truth = _pair(pred, truth)
    ml = voxel_volume_ml(spacing_mm)
    pred_lab, n_pred = components(pred)
    truth_lab, n_truth = components(truth) if truth_labels is None else truth_labels
    pred_sizes, pred_fp = _unmatched(pred_lab, n_pred, pred, truth)
    truth_sizes, truth_missed = _unmatched(truth_lab, n_truth, truth, pred)
    n_detected = int(n_truth - truth_missed.sum())
    return {
        "fp_volume_ml": float(pred_sizes[pred_fp].sum()) * ml,
        "fn_volume_ml": float(truth_sizes[truth_missed].sum()) * ml,
        "n_lesions": int(n_truth),
        "n_detected": n_detected,
        "sensitivity": n_detected / n_truth if n_truth else float("nan"),
        "n_pred_components": int(n_pred),
        "n_fp_lesions": int(pred_fp.sum()),
    }


def per_study_metrics(study_id: str, suv: np.ndarray, truth: np.ndarray, preds: Mapping[str, np.ndarray],
                      spacing_mm: Sequence[float]) -> pd.DataFrame:
    """One row per method for one study: Dice, true/predicted MTV and TLG and deviations, FPV/FNV (notebook 06)."""
    truth = np.asarray(truth, dtype=bool)
    suv = np.asarray(suv, dtype=np.float32)
    if suv.shape != truth.shape:
        raise ValueError(f"study {study_id}: SUV shape {suv.shape} differs from ground-truth mask shape {truth.shape}")
    truth_labels = components(truth)
    mtv_true, tlg_true = mtv_ml(truth, spacing_mm), tlg_g(suv, truth, spacing_mm)
    rows = []
    for method, pred in preds.items():
        pred = np.asarray(pred, dtype=bool)
        if pred.shape != truth.shape:
            raise ValueError(f"study {study_id}, method {method}: predicted mask shape {pred.shape} "
                             f"differs from ground-truth shape {truth.shape}")
        mtv_pred, tlg_pred = mtv_ml(pred, spacing_mm), tlg_g(suv, pred, spacing_mm)
        rows.append({
            "study_id": study_id, "method": method, "dice": dice(pred, truth),
            "mtv_true_ml": mtv_true, "mtv_pred_ml": mtv_pred,
            "mtv_dev_ml": mtv_pred - mtv_true, "mtv_absdev_ml": abs(mtv_pred - mtv_true),
            "tlg_true_g": tlg_true, "tlg_pred_g": tlg_pred,
            "tlg_dev_g": tlg_pred - tlg_true, "tlg_absdev_g": abs(tlg_pred - tlg_true),
            **lesion_metrics(pred, truth, spacing_mm, truth_labels),
        })
    return pd.DataFrame(rows)


def median_iqr(values: Sequence[float] | np.ndarray | pd.Series) -> tuple[float, float]:
    """Median and interquartile range Q3 - Q1 (linear percentiles), ignoring NaN, as the paper reports (notebook 06)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return float(med), float(q3 - q1)


def icc_agreement(truth: Sequence[float], pred: Sequence[float]) -> dict[str, float]:
    """ICC(2,1): two-way random, absolute agreement, single measure, 95% CI and p (pingouin) (notebook 06)."""
    import pingouin as pg

    truth, pred = np.asarray(truth, dtype=float), np.asarray(pred, dtype=float)
    if truth.shape != pred.shape or truth.ndim != 1:
        raise ValueError(f"ICC needs two 1-D arrays of equal length, got shapes {truth.shape} and {pred.shape}")
    keep = np.isfinite(truth) & np.isfinite(pred)
    n = int(keep.sum())
    if n < 3:
        raise ValueError(f"ICC needs at least 3 studies with finite values, got {n}")
    long = pd.DataFrame({"target": np.tile(np.arange(n), 2), "rater": np.repeat(["truth", "pred"], n),
                         "rating": np.concatenate([truth[keep], pred[keep]])})
    saved = pg.options.get("round.column.CI95")
    pg.options["round.column.CI95"] = None  # full-precision CI; pingouin rounds to 2 decimals by default
    try:  # a perfect or constant estimate (MSE = 0) gives F = inf and a degenerate CI: no warnings for that
        with np.errstate(divide="ignore", invalid="ignore"):
            table = pg.intraclass_corr(long, targets="target", raters="rater", ratings="rating")
    finally:
        pg.options["round.column.CI95"] = saved
    row = table[table["Type"].isin(["ICC2", "ICC(A,1)"])].iloc[0]  # name differs across pingouin versions
    lo, hi = row["CI95"] if "CI95" in row else row["CI95%"]
    return {"icc": float(row["ICC"]), "ci_low": float(lo), "ci_high": float(hi), "pval": float(row["pval"]),
            "F": float(row["F"]), "n": n}


def bland_altman(truth: Sequence[float], pred: Sequence[float]) -> dict[str, float]:
    """Bland-Altman bias (mean of pred - truth) and 95% limits of agreement bias ± 1.96 SD (notebook 06)."""
    diff = np.asarray(pred, dtype=float) - np.asarray(truth, dtype=float)
    diff = diff[np.isfinite(diff)]
    bias, sd = float(diff.mean()), float(diff.std(ddof=1))
    return {"bias": bias, "sd": sd, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd}


def _pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as bool arrays of one shape."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"predicted mask shape {pred.shape} differs from ground-truth shape {truth.shape}")
    return pred, truth
