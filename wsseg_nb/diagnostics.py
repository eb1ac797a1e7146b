"""Stage diagnostics: which stage limits the weak method (data, shortcut, localization, gate, masks) (notebooks 02-04)."""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

VISIBLE_SUV = 3.0
"""A lesion slice is 'visible' when its lesion voxels reach this SUV (liver plus noise reaches about 3)."""


def lesion_cells(masks: np.ndarray, cells: int) -> np.ndarray:
    """(n, S, S) lesion masks -> (n, cells, cells) bool: the feature-map cells that hold any lesion voxel."""
    masks = np.asarray(masks, dtype=bool)
    n, size = masks.shape[0], masks.shape[-1]
    if size % cells:
        raise ValueError(f"slice size {size} is not a multiple of the map size {cells}")
    f = size // cells
    return masks.reshape(n, cells, f, cells, f).any(axis=(2, 4))


def peak_in_lesion(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Pointing game per slice: does the map's maximum cell hold lesion voxels? (n, h, w), (n, S, S) -> bool (n,)."""
    maps = np.asarray(maps, dtype=np.float32)
    cells = lesion_cells(masks, maps.shape[-1]).reshape(len(maps), -1)
    return cells[np.arange(len(maps)), maps.reshape(len(maps), -1).argmax(axis=1)]


def peak_offset(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(rows, cols) in cells from the nearest lesion cell (Chebyshev) to the map's maximum cell: (n, 2) ints,
    (0, 0) where pointing hits; slices without lesion get a large sentinel. A constant offset is a displacement."""
    maps = np.asarray(maps, dtype=np.float32)
    n, h, w = maps.shape
    cells = lesion_cells(masks, w).reshape(n, h, w)
    out = np.full((n, 2), 10 ** 6, dtype=np.int64)
    for i, k in enumerate(maps.reshape(n, -1).argmax(axis=1)):
        rows, cols = np.nonzero(cells[i])
        if len(rows):
            dy, dx = k // w - rows, k % w - cols
            j = np.argmin(np.maximum(np.abs(dy), np.abs(dx)))
            out[i] = dy[j], dx[j]
    return out


def peak_cell_means(maps: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Mean of each input channel over the map's maximum cell: (n, h, w), raw (n, C, S, S) -> (n, C), e.g. [SUV, HU].

    Where the evidence sits when it is not on the lesion: a peak cell of low SUV and air-like HU lies on the lungs
    or the body outline, anatomy the CT shows, not uptake.
    """
    maps, x = np.asarray(maps, dtype=np.float32), np.asarray(x, dtype=np.float32)
    n, h, w = maps.shape
    size = x.shape[-1]
    if size % h or size % w or x.shape[-2] != size:
        raise ValueError(f"slice size {x.shape[-2:]} is not a multiple of the map size {(h, w)}")
    f = size // h
    cells = x.reshape(n, x.shape[1], h, f, w, f).mean(axis=(3, 5)).reshape(n, x.shape[1], -1)
    return cells[np.arange(n), :, maps.reshape(n, -1).argmax(axis=1)]


def cell_auc(maps: np.ndarray, masks: np.ndarray) -> float:
    """ROC AUC of the map value as a score for 'this cell holds lesion', over all cells of the slices given."""
    from sklearn.metrics import roc_auc_score

    maps = np.asarray(maps, dtype=np.float32)
    truth = lesion_cells(masks, maps.shape[-1]).ravel()
    return float(roc_auc_score(truth, maps.ravel())) if truth.any() and not truth.all() else float("nan")


def lesion_suvmax(suv: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Highest SUV inside each slice's lesion mask (0 where a slice has none): (n, S, S) -> (n,)."""
    return np.where(np.asarray(masks, dtype=bool), suv, 0.0).reshape(len(suv), -1).max(axis=1)


def relative_level(index: pd.DataFrame) -> np.ndarray:
    """Each slice's position along its study's stored volume, 0 (first slice) to 1 (last)."""
    n = index.groupby("study_id")["slice"].transform("max").to_numpy(float)
    return index["slice"].to_numpy(float) / np.maximum(n, 1.0)


def level_auc(index: pd.DataFrame, split: str = "val", bins: int = 20) -> float:
    """The body-level shortcut's score: ROC AUC on `split` of the training tumor fraction at the slice's level."""
    from sklearn.metrics import roc_auc_score

    level = np.minimum((relative_level(index) * bins).astype(int), bins - 1)
    labels = index["label"].to_numpy() > 0
    train = (index["split"] == "train").to_numpy()
    rate = (np.bincount(level[train], weights=labels[train], minlength=bins)
            / np.maximum(np.bincount(level[train], minlength=bins), 1))
    rows = (index["split"] == split).to_numpy()
    return float(roc_auc_score(labels[rows], rate[level[rows]]))


AREA_BINS_MM2 = (0.0, 80.0, 320.0, 800.0, float("inf"))
"""Lesion cross-section bins (mm²) of `auc_by_lesion_area`: 80 mm² = 5 demo pixels (4 mm), 320 = 20, 800 = 50."""


def auc_by_lesion_area(pred: pd.DataFrame, index: pd.DataFrame, split: str = "val",
                       bins: Sequence[float] = AREA_BINS_MM2) -> pd.DataFrame:
    """Per bin of lesion cross-section: tumor slices, their median p, and the ROC AUC against every tumor-free slice.

    `pred` holds (study_id, slice, split, label, prob) (classifier/predictions.csv), `index` the store index with
    lesion_area_mm2. "AUC" scores the bin's tumor slices alone, "AUC from here" the bin's and all larger ones:
    where the slice AUC is lost (notebook 02).
    """
    from sklearn.metrics import roc_auc_score

    rows = pred[pred["split"] == split].merge(index[["study_id", "slice", "lesion_area_mm2"]], on=["study_id", "slice"],
                                              how="left", validate="one_to_one")
    if rows["lesion_area_mm2"].isna().any():
        bad = rows[rows["lesion_area_mm2"].isna()].iloc[0]
        raise ValueError(f"predictions: study {bad.study_id} slice {bad.slice} is not in the store index")
    tumor, prob, area = rows["label"].to_numpy() > 0, rows["prob"].to_numpy(), rows["lesion_area_mm2"].to_numpy()
    negative = prob[~tumor]

    def auc(chosen: np.ndarray) -> float:
        scores = np.concatenate([negative, prob[chosen]])
        truth = np.r_[np.zeros(len(negative)), np.ones(int(chosen.sum()))]
        return float(roc_auc_score(truth, scores)) if chosen.any() and len(negative) else float("nan")

    table = []
    for low, high in zip(bins[:-1], bins[1:]):
        chosen = tumor & (area >= low) & (area < high)
        table.append({"lesion area (mm²)": f"{low:g}–{high:g}", "tumor slices": int(chosen.sum()),
                      "median p": float(np.median(prob[chosen])) if chosen.any() else float("nan"),
                      "AUC": auc(chosen), "AUC from here": auc(tumor & (area >= low))})
    return pd.DataFrame(table).set_index("lesion area (mm²)")


def study_bootstrap_auc(pred: pd.DataFrame, split: str = "val", level: float = 0.95, draws: int = 1000,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the slice AUC when the split's studies (patients, the independent unit) are resampled.

    Each draw picks as many studies as the split has, with replacement, and scores all their slices (a study drawn
    twice counts twice); draws without both classes are skipped. `pred` as in `auc_by_lesion_area` (notebook 02).
    """
    from sklearn.metrics import roc_auc_score

    if not 0 < level < 1 or draws < 1:
        raise ValueError(f"study_bootstrap_auc: level must lie in (0, 1) and draws be >= 1, got {level}, {draws}")
    rows = pred[pred["split"] == split]
    studies = [g for _, g in rows.groupby("study_id", sort=True)]
    if len(studies) < 2:
        raise ValueError(f"study_bootstrap_auc: split {split!r} has {len(studies)} studies; resampling needs >= 2")
    labels = [g["label"].to_numpy() > 0 for g in studies]
    if not any(t.any() for t in labels) or all(t.all() for t in labels):
        raise ValueError(f"study_bootstrap_auc: split {split!r} holds only one class; the AUC needs both")
    probs = [g["prob"].to_numpy(float) for g in studies]
    rng = np.random.default_rng(seed)
    aucs = []
    for pick in rng.integers(0, len(studies), size=(draws, len(studies))):
        truth = np.concatenate([labels[i] for i in pick])
        if truth.all() or not truth.any():
            continue
        aucs.append(roc_auc_score(truth, np.concatenate([probs[i] for i in pick])))
    if not aucs:
        raise ValueError(f"study_bootstrap_auc: no draw of split {split!r} held both classes; raise draws")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(aucs, [tail, 100 - tail])
    return float(low), float(high)


def pointing(hits: np.ndarray, suvmax: np.ndarray, visible_suv: float = VISIBLE_SUV) -> dict[str, float]:
    """Share of tumor slices whose CAM peak cell holds lesion: all of them, and the visible ones (lesion SUV >= 3)."""
    hits, visible = np.asarray(hits, bool), np.asarray(suvmax) >= visible_suv
    return {"pointing": float(hits.mean()) if hits.size else float("nan"),
            "pointing_visible": float(hits[visible].mean()) if visible.any() else float("nan")}


def cam_maps(model: nn.Module, x: torch.Tensor, batch: int = 128) -> np.ndarray:
    """Classic CAM (Eq. 1, unnormalised) of raw slices x (n, 2, S, S) as float32 numpy, on the model's device.

    For a head without GAP + FC (cls_head 'authors'), where CAM is undefined, GradCAM (min-max normalised) instead.
    """
    from .cam import classic_cam, compute_cams, has_global_pool_fc

    device = next(model.parameters()).device
    if not has_global_pool_fc(model):
        return compute_cams(model, x, "gradcam", batch_size=batch).numpy()
    with torch.no_grad():
        return torch.cat([classic_cam(model, xb.to(device)).cpu() for xb in x.split(batch)]).numpy()


def tumor_slices(store, split: str, limit: int | None = None, seed: int = 0) -> np.ndarray:
    """Store rows of `split`'s tumor slices (slice labels only); at most `limit` of them, a seeded sorted choice."""
    rows = np.flatnonzero(((store.index["split"] == split) & (store.index["label"] > 0)).to_numpy())
    if limit is not None and len(rows) > limit:
        rows = np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))
    return rows


def pointing_probe(store, split: str = "val", batch: int = 128,
                   align: bool = False) -> Callable[[nn.Module], dict[str, float]]:
    """A `train.fit` probe: pointing, pointing_visible and cell_auc on `split`'s tumor slices of a SliceStore.

    The tumor slices are read once; each call runs one forward per batch in eval mode (BatchNorm frozen). With
    `align`, the maps' displacement is measured on training tumor slices (`cam.flip_displacement`, no masks),
    undone before scoring and returned as cam_shift_y / cam_shift_x (input pixels).
    """
    from .cam import ALIGN_SLICES

    rows = tumor_slices(store, split)
    x, masks = store.read(rows)
    suvmax = lesion_suvmax(x[:, 0], masks)
    x = torch.from_numpy(x)
    x_align = torch.from_numpy(store.read(tumor_slices(store, "train", ALIGN_SLICES))[0]) if align else None

    def probe(model: nn.Module) -> dict[str, float]:
        from .cam import eval_mode, flip_displacement, shift_maps

        shift = {}
        with eval_mode(model):
            maps = cam_maps(model, x, batch)
            if x_align is not None:
                dy, dx = flip_displacement(model, x_align, batch)
                maps = shift_maps(torch.from_numpy(maps), (dy, dx), x.shape[-1]).numpy()
                shift = {"cam_shift_y": dy, "cam_shift_x": dx}
        return {**pointing(peak_in_lesion(maps, masks), suvmax), "cell_auc": cell_auc(maps, masks), **shift}

    return probe


def map_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-slice Pearson correlation of two stacks of maps (n, h, w) -> (n,); NaN where either map is constant."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    if a.shape != b.shape:
        raise ValueError(f"map stacks differ in shape: {a.shape} vs {b.shape}")
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    norm = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, (a * b).sum(1) / norm, np.nan)


def compare_maps(models: dict[str, nn.Module], x: torch.Tensor, masks: np.ndarray, methods: Sequence[str],
                 reference: str = "gradcam", batch: int = 64, topk: int = 0,
                 scorecam_weights: str = "softmax") -> pd.DataFrame:
    """Per classifier and method on tumor slices x: pointing, pointing_visible, cell AUC and the mean per-slice
    correlation with the `reference` map of the same classifier; methods a head cannot compute are left out.

    topk > 0: ScoreCAM of the top-k channels by variance, as `scorecam_topk`; scorecam_weights as the config's
    (notebook 03)."""
    from .cam import compute_cams, has_global_pool_fc

    suvmax = lesion_suvmax(np.asarray(x[:, 0]), masks)
    rows = []
    for name, model in models.items():
        methods_here = [m for m in dict.fromkeys([reference, *methods]) if m != "cam" or has_global_pool_fc(model)]
        maps = {m: compute_cams(model, x, m, batch_size=batch, topk=topk, scorecam_weights=scorecam_weights).numpy()
                for m in methods_here}
        for method in methods:
            if method in maps:
                r = map_correlation(maps[method], maps[reference])
                rows.append({"classifier": name, "method": method, **pointing(peak_in_lesion(maps[method], masks), suvmax),
                             "cell_auc": cell_auc(maps[method], masks), f"r_{reference}": float(np.nanmean(r))})
    return pd.DataFrame(rows)


def gate_stats(labels: Sequence[int], probs: Sequence[float], threshold: float) -> dict[str, float]:
    """Slices called tumorous at p >= threshold, and the precision and recall of that call."""
    labels, called = np.asarray(labels) > 0, np.asarray(probs) >= threshold
    hits = int((labels & called).sum())
    return {"gate_threshold": float(threshold), "slices_called": int(called.sum()),
            "gate_precision": hits / called.sum() if called.any() else float("nan"),
            "gate_recall": hits / labels.sum() if labels.any() else float("nan")}


def store_lesion_uptake(store, split: str | None = None) -> pd.DataFrame:
    """`metrics.lesion_uptake` of every study (of `split`) on the store grid, with its study and diagnosis (nb 01)."""
    from .metrics import lesion_uptake

    index = store.index if split is None else store.index[store.index["split"] == split]
    frames = []
    for sid, diagnosis in index.groupby("study_id")["diagnosis"].first().items():
        study = store.study(sid)
        frames.append(lesion_uptake(np.asarray(study.suv), np.asarray(study.mask), study.meta["spacing_mm"])
                      .assign(study_id=sid, diagnosis=diagnosis))
    return pd.concat(frames, ignore_index=True)


def perfect_cams(gt: np.ndarray, cells: int) -> np.ndarray:
    """A perfect CAM region: 1 on the feature-map cells that hold lesion voxels, 0 elsewhere (n, cells, cells)."""
    return lesion_cells(gt, cells).astype(np.float32)


def algorithm1_ceiling(data, cells: int, q_grid: Sequence[float], floor_grid: Sequence[float] = (0.0,)) -> float:
    """Median per-study Dice of Algorithm 1 with a perfect gate and a perfect CAM region, best q, floor (nb 04).

    `data` is a `segment.GatedSlices`; its truly tumorous slices are used. What the cell size alone allows.
    """
    from .segment import tune_algorithm1

    oracle = data.oracle()
    return tune_algorithm1(perfect_cams(oracle.gt, cells), oracle.suv, oracle.gt, oracle.rows["study_id"],
                           oracle.gt_total, [0.5], q_grid, desc="ceiling", floor_grid=floor_grid).dice


def oracle_local_peak(truth: np.ndarray, suv: np.ndarray, margin: int = 2) -> np.ndarray:
    """Each voxel's local SUVmax: the maximum over its region of the truth dilated by `margin` voxels (26-conn.);
    inf outside every region, so that no threshold keeps a voxel there."""
    from scipy import ndimage

    cube = np.ones((3, 3, 3), bool)
    near = ndimage.binary_dilation(truth > 0, cube, iterations=margin) if margin else truth > 0
    regions, n = ndimage.label(near, cube)
    peaks = ndimage.maximum(suv, regions, np.arange(1, n + 1)) if n else []
    return np.concatenate([[np.inf], peaks])[regions]


def oracle_threshold_mask(suv: np.ndarray, truth: np.ndarray, fraction: float, margin: int = 2) -> np.ndarray:
    """SUV >= `fraction` x the local SUVmax inside each region of the truth dilated by `margin` voxels (26-conn.).

    Localization is given (the oracle), delineation is the PET's own: what the image allows a segmenter.
    """
    return _at_fraction(suv, oracle_local_peak(truth, suv, margin), fraction)


def _at_fraction(suv: np.ndarray, peak: np.ndarray, fraction: float) -> np.ndarray:
    """The voxels whose SUV reaches `fraction` (in (0, 1]) of their `oracle_local_peak`."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    return suv >= fraction * peak


def _lesion_studies(store, split: str) -> Iterator[tuple[str, str, np.ndarray, np.ndarray, Any]]:
    """(study_id, diagnosis, SUV float32, truth bool, the stored study) of each study of `split` with lesion voxels."""
    index = store.index[store.index["split"] == split]
    for sid, diagnosis in index.groupby("study_id", sort=False)["diagnosis"].first().items():
        study = store.study(sid)
        truth = np.asarray(study.mask) > 0
        if truth.any():
            yield sid, diagnosis, np.asarray(study.suv, np.float32), truth, study


def oracle_threshold_dice(store, split: str, fractions: Sequence[float], margin: int = 2) -> pd.DataFrame:
    """Per lesion study of `split`: 3D Dice of `oracle_threshold_mask` at each fraction (columns), truth volume in ml.

    The data stage's ceiling for a PET-intensity segmenter; the supervised U-Net's Dice is read against it.
    """
    from .metrics import dice, mtv_ml

    rows = []
    for sid, _, suv, truth, study in _lesion_studies(store, split):
        peak = oracle_local_peak(truth, suv, margin)  # regions and peaks once, every fraction reads them
        rows.append({"study_id": sid, "truth_ml": mtv_ml(truth, study.meta["spacing_mm"]),
                     **{f: dice(_at_fraction(suv, peak, f), truth) for f in fractions}})
    return pd.DataFrame(rows)


def oracle_floor_dice(store, split: str, floors: Sequence[float]) -> pd.DataFrame:
    """Per lesion study of `split` and floor: 3D Dice of SUV >= floor on the truly tumorous slices (`oracle_gate`,
    a perfect classifier) and on every slice (`no_gate`), no map involved (notebook 01).

    The phantom's realism check: where physiology near the lesions (bowel, ureters, tonsils, brown fat) reaches
    the lesions' SUV, a fixed threshold cannot score well even behind a perfect gate, and the maps have a task.
    """
    from .metrics import dice

    rows = []
    for sid, diagnosis, suv, truth, _ in _lesion_studies(store, split):
        tumor_slice = truth.any(axis=(1, 2))[:, None, None]
        for floor in floors:
            hot = suv >= floor
            rows.append({"study_id": sid, "diagnosis": diagnosis, "floor": float(floor),
                         "oracle_gate": dice(hot & tumor_slice, truth), "no_gate": dice(hot, truth)})
    return pd.DataFrame(rows, columns=["study_id", "diagnosis", "floor", "oracle_gate", "no_gate"])


def write(run_dir: str | os.PathLike[str], **values: float) -> dict[str, float]:
    """Merge `values` into RUN_DIR/classifier/diagnostics.json (written atomically) and return the whole record."""
    from .runs import write_json_atomic

    path = Path(run_dir) / "classifier" / "diagnostics.json"
    record = json.loads(path.read_text()) if path.is_file() else {}
    record.update({k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v)
                   for k, v in values.items()})
    write_json_atomic(path, record)
    return record
