"""Algorithm 1 (CAM threshold + SUV percentile), the global SUV threshold, their grid searches and study masks."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .progress import progress
from .slices import SliceStore, assemble, index_positions

PAPER_PARAMS: dict[str, dict[str, float]] = {
    "cam": {"t": 0.3, "q": 31.0}, "gradcam": {"t": 0.2, "q": 35.0},
    "gradcampp": {"t": 0.3, "q": 32.0}, "scorecam": {"t": 0.4, "q": 31.0},
}
"""Sec. 3.1: tuned t_m and q_m (the text prints q as 0.31 etc.; the grid is 20-50 percentiles)."""

HIST_BINS = 20
"""The authors' global threshold: percentile of the centres of a 20-bin histogram of the slice's SUV."""

SEMANTICS = ("histogram", "voxel")
"""Global-threshold readings: 'histogram' (the authors' code) and 'voxel' (the text: a percentile of the voxels)."""

CHUNK = 128
"""Slices per chunk in the grid searches (bounds memory at paper scale)."""


# ---------------------------------------------------------------- percentiles (numpy 'linear', exactly)

def _virtual_index(m: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower/upper order-statistic index and weight of np.percentile(method='linear') for m values, q in %."""
    q = np.asarray(q, dtype=np.float64)
    if np.any((q < 0) | (q > 100)):
        raise ValueError(f"percentiles must lie in [0, 100], got {q.tolist()}")
    qf = np.true_divide(q, 100)
    mf = np.asarray(m, dtype=np.float64)[..., None]
    virtual = (mf - 1) * qf  # numpy's virtual index for method='linear'
    lo = np.floor(virtual)
    top = virtual >= mf - 1
    lo = np.where(top, mf - 1, lo)
    gamma = np.where(top, 0.0, virtual - lo)
    lo = np.maximum(lo, 0).astype(np.intp)
    return lo, np.where(top, lo, lo + 1), gamma


def _lerp(a: np.ndarray, b: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """numpy's _lerp: a + (b-a)·γ, written from b when γ >= 0.5 (bit-identical to np.percentile)."""
    with np.errstate(invalid="ignore"):  # empty regions: inf - inf, masked to NaN by the callers
        diff = np.subtract(b, a)
        out = np.add(a, diff * gamma)
        np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5)
    return out


def region_percentile(suv: np.ndarray, region: np.ndarray, q: float | Sequence[float]) -> np.ndarray:
    """Per slice, the q-th percentile (numpy 'linear') of the SUV inside the region; NaN for an empty region.

    Shape (n,) for a scalar q, (n, len(q)) for a sequence; equals np.percentile(suv[i][region[i]], q) bit for bit
    (Algorithm 1 step 5, notebook 04).
    """
    suv, region = _check_pair(suv, region, "region")
    n = len(suv)
    flat = np.where(region, suv, np.inf).reshape(n, -1)
    flat.sort(axis=1)  # region values first, ascending
    m = region.reshape(n, -1).sum(axis=1)
    lo, hi, gamma = _virtual_index(m, np.atleast_1d(q))
    rows = np.arange(n)[:, None]
    tq = _lerp(flat[rows, lo], flat[rows, hi], gamma)  # lo <= hi <= max(m - 1, 0)
    tq = np.where(m[:, None] > 0, tq, np.nan)
    return tq[:, 0] if np.ndim(q) == 0 else tq


# ---------------------------------------------------------------- Algorithm 1

def upscale_nearest(maps: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (n, h, w) maps to (n, size, size) by an integer factor (repeat; exact)."""
    maps = np.asarray(maps)
    if maps.ndim != 3 or maps.shape[1] != maps.shape[2]:
        raise ValueError(f"maps must be (n, h, h), got shape {maps.shape}")
    h = maps.shape[1]
    if size % h:
        raise ValueError(f"slice size {size} is not an integer multiple of the CAM size {h}")
    f = size // h
    return maps.repeat(f, axis=1).repeat(f, axis=2)


def cam_region(cam: np.ndarray, t: float, size: int) -> np.ndarray:
    """Algorithm 1 steps 2-3: H' = CAM >= t, upscaled to size x size by nearest neighbour (notebook 04)."""
    return upscale_nearest(np.asarray(cam) >= t, size)


def algorithm1(cam: np.ndarray, suv: np.ndarray, t: float, q: float,
               tumorous: np.ndarray | None = None, floor: float = 0.0) -> np.ndarray:
    """Algorithm 1 on a batch: region = up(CAM >= t); mask = region & SUV >= q-th percentile of SUV in region.

    cam (n, h, w) in [0, 1], suv (n, S, S); tumorous (n,) gates slices (None: all slices are tumorous, e.g. the
    rows of cams/index.csv). Non-tumorous slices and empty regions give empty masks (notebook 04). `floor` is not
    the paper's: the voxel threshold becomes max(percentile, floor), an absolute SUV (0 = Algorithm 1 as printed).
    """
    suv = np.asarray(suv)
    region = cam_region(cam, t, suv.shape[-1])
    if tumorous is not None:
        region &= _check_gate(tumorous, len(suv))[:, None, None]
    tq = np.maximum(region_percentile(suv, region, q), floor)  # NaN (empty region) stays NaN
    return region & (suv >= np.nan_to_num(tq, nan=np.inf)[:, None, None])


# ---------------------------------------------------------------- global threshold (Sec. 2.3.1)

def histogram_centre_threshold(suv: np.ndarray, p: float | Sequence[float]) -> np.ndarray:
    """The authors' threshold np.percentile(centres of np.histogram(slice, 20), p) in closed form (notebook 05).

    The 20 centres are evenly spaced, so the linear percentile is min + (max - min)·(1/40 + (19/20)·p/100): a fixed
    fraction of the slice's SUV range (21.5 % at p = 20, 50 % at p = 50). A constant slice gets numpy's
    histogram range (v - 0.5, v + 0.5). Shape (n,) for a scalar p, (n, len(p)) otherwise.
    """
    suv = np.asarray(suv)
    flat = suv.reshape(len(suv), -1)
    lo, hi = flat.min(axis=1).astype(np.float64), flat.max(axis=1).astype(np.float64)
    const = lo == hi
    lo, hi = np.where(const, lo - 0.5, lo), np.where(const, hi + 0.5, hi)
    p_arr = np.atleast_1d(np.asarray(p, dtype=np.float64))
    if np.any((p_arr < 0) | (p_arr > 100)):
        raise ValueError(f"percentiles must lie in [0, 100], got {p_arr.tolist()}")
    frac = 1 / (2 * HIST_BINS) + (HIST_BINS - 1) / HIST_BINS * p_arr / 100
    thr = lo[:, None] + (hi - lo)[:, None] * frac
    return thr[:, 0] if np.ndim(p) == 0 else thr


def voxel_percentile_threshold(suv: np.ndarray, p: float | Sequence[float]) -> np.ndarray:
    """The text's literal reading: the p-th percentile (numpy 'linear') of the slice's voxel SUVs (notebook 05)."""
    suv = np.asarray(suv)
    return region_percentile(suv, np.ones(suv.shape, dtype=bool), p)


def global_threshold_value(suv: np.ndarray, p: float | Sequence[float], semantics: str = "histogram") -> np.ndarray:
    """Per-slice global SUV threshold under either reading ('histogram' or 'voxel') (notebook 05)."""
    if semantics == "histogram":
        return histogram_centre_threshold(suv, p)
    if semantics == "voxel":
        return voxel_percentile_threshold(suv, p)
    raise ValueError(f"semantics must be one of {SEMANTICS}, got {semantics!r}")


def global_threshold(suv: np.ndarray, p: float, semantics: str = "histogram",
                     tumorous: np.ndarray | None = None) -> np.ndarray:
    """Sec. 2.3.1 baseline: mask = SUV >= per-slice threshold on slices the classifier calls tumorous (notebook 05)."""
    suv = np.asarray(suv)
    mask = suv >= global_threshold_value(suv, p, semantics)[:, None, None]
    if tumorous is not None:
        mask &= _check_gate(tumorous, len(suv))[:, None, None]
    return mask


# ---------------------------------------------------------------- per-slice counts for the grid searches

def _lexkey(row: np.ndarray, value: np.ndarray) -> np.ndarray:
    """row + i·value as complex128 (numpy sorts complex lexicographically: row, then value; value may be inf)."""
    key = np.empty(np.shape(value), dtype=np.complex128)
    key.real, key.imag = row, value
    return key


def _counts_above(vals: np.ndarray, gts: np.ndarray, m: np.ndarray, thr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|{v >= thr}| and |{v >= thr} ∩ gt| per row for row-grouped, row-wise ascending values (exact, ties included).

    vals/gts are the concatenation of each row's candidate voxels (m[i] of them, ascending); thr (n, k), NaN = none.
    Rows become the real part of a complex key so one searchsorted answers every (row, threshold) lexicographically.
    """
    n = len(m)
    ends = np.cumsum(m)
    keys = _lexkey(np.repeat(np.arange(n), m), vals)
    query = _lexkey(np.broadcast_to(np.arange(n)[:, None], thr.shape), np.nan_to_num(thr, nan=np.inf))
    first = np.searchsorted(keys, query, side="left")
    gcum = np.concatenate([[0], np.cumsum(gts, dtype=np.int64)])
    return gcum[ends][:, None] - gcum[first], ends[:, None] - first


def _sorted_chunk(suv: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Each slice's SUV ascending, and same-shape arrays (ground truth, upscaled CAM) in the same order."""
    flat = suv.reshape(len(suv), -1)
    order = np.argsort(flat, axis=1)
    return [np.take_along_axis(a.reshape(len(a), -1), order, axis=1) for a in (flat, *others)]


def algorithm1_counts(cam: np.ndarray, suv: np.ndarray, gt: np.ndarray, t_grid: Sequence[float],
                      q_grid: Sequence[float], desc: str = "algorithm 1",
                      floor: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Per slice and (t, q): |mask ∩ gt| and |mask| of Algorithm 1, each (n, len(t), len(q)) int64 (notebook 04).

    Each slice's voxels are sorted by SUV once (carrying ground truth and upscaled CAM along); per t the region's
    SUVs come out ascending by one boolean selection, every q's percentile by index arithmetic and every count by
    one searchsorted: no mask is ever built. `floor`: as in `algorithm1`.
    """
    suv, gt = _check_pair(suv, np.asarray(gt, dtype=bool), "ground truth")
    cam = np.asarray(cam)
    if len(cam) != len(suv):
        raise ValueError(f"{len(cam)} CAMs for {len(suv)} slices")
    n, size = len(suv), suv.shape[-1]
    inter = np.zeros((n, len(t_grid), len(q_grid)), dtype=np.int64)
    pred = np.zeros_like(inter)
    with progress(total=len(range(0, n, CHUNK)) * len(t_grid), desc=desc, leave=False, disable=n < CHUNK) as bar:
        for s in range(0, n, CHUNK):
            sl = slice(s, s + CHUNK)
            vals_sorted, gt_sorted, cam_sorted = _sorted_chunk(suv[sl], gt[sl], upscale_nearest(cam[sl], size))
            for j, t in enumerate(t_grid):
                region = cam_sorted >= t  # Algorithm 1 steps 2-3 (threshold and nearest upscaling commute)
                m = region.sum(axis=1)
                vals, gts = vals_sorted[region], gt_sorted[region]
                lo, hi, gamma = _virtual_index(m, q_grid)
                start = (np.cumsum(m) - m)[:, None]
                pick = np.append(vals, vals.dtype.type(0))  # a valid index for empty regions (NaN below)
                tq = _lerp(pick[start + lo], pick[start + hi], gamma)
                tq = np.where(m[:, None] > 0, np.maximum(tq, floor), np.nan)
                inter[sl, j], pred[sl, j] = _counts_above(vals, gts, m, tq)
                bar.update()
    return inter, pred


def global_threshold_counts(suv: np.ndarray, gt: np.ndarray, p_grid: Sequence[float],
                            semantics: str = "histogram") -> tuple[np.ndarray, np.ndarray]:
    """Per slice and p: |mask ∩ gt| and |mask| of the global threshold, each (n, len(p)) int64 (notebook 05)."""
    suv, gt = _check_pair(suv, np.asarray(gt, dtype=bool), "ground truth")
    n = len(suv)
    inter = np.zeros((n, len(p_grid)), dtype=np.int64)
    pred = np.zeros_like(inter)
    for s in range(0, n, CHUNK):
        sl = slice(s, s + CHUNK)
        vals_sorted, gt_sorted = _sorted_chunk(suv[sl], gt[sl])
        thr = global_threshold_value(suv[sl], p_grid, semantics)
        m = np.full(len(vals_sorted), vals_sorted.shape[1])
        inter[sl], pred[sl] = _counts_above(vals_sorted.ravel(), gt_sorted.ravel(), m, thr)
    return inter, pred


# ---------------------------------------------------------------- per-study Dice and the grid search

def study_dice(inter: np.ndarray, pred: np.ndarray, slice_study: Sequence[str], gt_total: pd.Series) -> np.ndarray:
    """Per-study 3D Dice 2ΣI / (ΣP + G) from per-slice counts; G = lesion voxels of the whole study (gt_total).

    Returns (len(gt_total), *inter.shape[1:]) in gt_total's order; slices outside the counts (not gated) add 0 to
    ΣI and ΣP but their lesions are in G. Studies without lesions get NaN: Dice is undefined there (notebook 04).
    """
    inter, pred = np.asarray(inter), np.asarray(pred)
    if inter.shape != pred.shape or len(inter) != len(slice_study):
        raise ValueError(f"counts {inter.shape}/{pred.shape} do not match {len(slice_study)} slices")
    pos = pd.Index(gt_total.index).get_indexer(pd.Index(slice_study))
    if np.any(pos < 0):
        missing = sorted(set(np.asarray(slice_study)[pos < 0]))
        raise ValueError(f"slices of studies {missing[:5]} have no ground-truth total (gt_total)")
    shape = (len(gt_total),) + inter.shape[1:]
    s_inter, s_pred = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    np.add.at(s_inter, pos, inter)
    np.add.at(s_pred, pos, pred)
    g = np.asarray(gt_total, dtype=np.int64).reshape((-1,) + (1,) * (inter.ndim - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(g > 0, 2.0 * s_inter / (s_pred + g), np.nan)


@dataclass(frozen=True)
class Tuned:
    """A grid search: median per-study Dice surface, per-study Dice, and the best grid point (notebook 04).

    by_floor: the best median Dice at each SUV floor searched (`best_floor`; empty for a search without floors).
    """

    surface: np.ndarray
    study_dice: np.ndarray
    studies: tuple[str, ...]
    grid: dict[str, tuple[float, ...]]
    params: dict[str, float]
    dice: float
    by_floor: dict[float, float] = field(default_factory=dict)


def tune(inter: np.ndarray, pred: np.ndarray, slice_study: Sequence[str], gt_total: pd.Series,
         grid: Mapping[str, Sequence[float]]) -> Tuned:
    """Objective = median 3D Dice over the studies WITH lesions; argmax (first in grid order on ties) (notebook 04)."""
    per_study = study_dice(inter, pred, slice_study, gt_total)
    lesion = np.asarray(gt_total) > 0
    if not lesion.any():
        raise ValueError("no study with lesions in the tuning split: the Dice objective is undefined")
    surface = np.median(per_study[lesion], axis=0)
    best = np.unravel_index(int(np.argmax(surface)), surface.shape)
    axes = {k: tuple(float(v) for v in vals) for k, vals in grid.items()}
    params = {k: axes[k][i] for k, i in zip(axes, best)}
    return Tuned(surface, per_study, tuple(gt_total.index), axes, params, float(surface[best]))


def best_floor(searches: Mapping[float, Tuned]) -> Tuned:
    """Of one (t, q) search per SUV floor, the best (first floor on ties), with its floor in `params` (notebook 04)."""
    floor, best = max(searches.items(), key=lambda item: item[1].dice)
    return replace(best, params={**best.params, "floor": float(floor)},
                   by_floor={float(f): s.dice for f, s in searches.items()})


def tune_algorithm1(cam: np.ndarray, suv: np.ndarray, gt: np.ndarray, slice_study: Sequence[str],
                    gt_total: pd.Series, t_grid: Sequence[float], q_grid: Sequence[float],
                    desc: str = "algorithm 1", floor_grid: Sequence[float] = (0.0,)) -> Tuned:
    """The paper's grid search for one CAM method: t x q (x SUV floor), objective median per-patient Dice (nb 04).

    The surface is the (t, q) one at the floor kept; floor_grid (0,) is the paper's search.
    """
    grid = {"t": t_grid, "q": q_grid}
    return best_floor({f: tune(*algorithm1_counts(cam, suv, gt, t_grid, q_grid, desc=desc, floor=f),
                               slice_study, gt_total, grid) for f in floor_grid})


def tune_global_threshold(suv: np.ndarray, gt: np.ndarray, slice_study: Sequence[str], gt_total: pd.Series,
                          p_grid: Sequence[float], semantics: str = "histogram") -> Tuned:
    """Sec. 2.3.1 grid search over p for the global threshold on the gated slices (notebook 05)."""
    inter, pred = global_threshold_counts(suv, gt, p_grid, semantics)
    return tune(inter, pred, slice_study, gt_total, {"p": p_grid})


def tune_with_gate(cams: Mapping[str, np.ndarray], data: GatedSlices, t_grid: Sequence[float],
                   q_grid: Sequence[float], gates: Sequence[float],
                   floor_grid: Sequence[float] = (0.0,),
                   calls: Callable[[float], np.ndarray] | None = None) -> tuple[float, dict[str, Tuned], pd.DataFrame]:
    """One classifier threshold for the run and each method's (t, q, floor), tuned together on `data` (validation).

    The gate kept is the one whose methods reach the highest mean of their best median Dice; returns it, each
    method's grid search at that gate, and the table of best median Dice per gate and method (notebook 04).
    floor_grid (0,) is Algorithm 1 as printed; values > 0 are absolute SUV floors of the voxel cut (`algorithm1`).
    calls(g): the rows called at gate g (bool per row; default p >= g).
    """
    prob = data.rows["prob"].to_numpy()
    calls = calls or (lambda g: prob >= g)
    counts = {(m, f): algorithm1_counts(cam, data.suv, data.gt, t_grid, q_grid, desc=f"{m}, floor {f:g}", floor=f)
              for m, cam in cams.items() for f in floor_grid}
    grid = {"t": t_grid, "q": q_grid}

    def search(m: str, g: float) -> Tuned:
        called = calls(g)[:, None, None]
        return best_floor({f: tune(counts[m, f][0] * called, counts[m, f][1] * called, data.rows["study_id"],
                                   data.gt_total, grid) for f in floor_grid})

    searches = {g: {m: search(m, g) for m in cams} for g in gates}
    table = pd.DataFrame({m: [searches[g][m].dice for g in gates] for m in cams}, index=pd.Index(gates, name="gate"))
    best = float(table.index[int(np.argmax(table.mean(axis=1).to_numpy()))])
    return best, searches[best], table


# ---------------------------------------------------------------- run-directory inputs and study masks

@dataclass(frozen=True)
class GatedSlices:
    """The slices the classifier calls tumorous (cams/index.csv rows) with their SUV and ground truth (notebook 04).

    rows: the CAM index rows (`cam_row` = row in cams/<method>.npy, `position` = row in the store index);
    studies: one row per study of the splits (index study_id; split, lesion_voxels over ALL its slices).
    """

    store: SliceStore
    rows: pd.DataFrame
    suv: np.ndarray
    gt: np.ndarray
    studies: pd.DataFrame

    @property
    def gt_total(self) -> pd.Series:
        """Lesion voxels per study (the ground-truth term of each study's Dice)."""
        return self.studies["lesion_voxels"]

    def subset(self, keep: np.ndarray, split: str | None = None) -> GatedSlices:
        """The rows where `keep` is true (and, given `split`, only that split's studies)."""
        keep = np.asarray(keep, dtype=bool)
        studies = self.studies if split is None else self.studies[self.studies["split"] == split]
        return GatedSlices(self.store, self.rows[keep].reset_index(drop=True), self.suv[keep], self.gt[keep], studies)

    def select(self, split: str) -> GatedSlices:
        """The subset of one split (val for tuning, test for evaluation)."""
        return self.subset((self.rows["split"] == split).to_numpy(), split)

    def at_gate(self, threshold: float) -> GatedSlices:
        """The slices the classifier calls tumorous at p >= threshold (Algorithm 1, line 1); studies unchanged."""
        return self.subset((self.rows["prob"] >= threshold).to_numpy())

    def oracle(self) -> GatedSlices:
        """The truly tumorous slices (a perfect gate), whatever the classifier called them."""
        return self.subset((self.rows["label"] > 0).to_numpy())


def load_gated(run_dir: str | os.PathLike[str], splits: Sequence[str] = ("val", "test")) -> GatedSlices:
    """Read cams/index.csv and the store: SUV and ground truth of the gated slices of the given splits (notebook 04)."""
    run_dir = Path(run_dir)
    store = SliceStore(run_dir / "store")
    cam_index_path = run_dir / "cams" / "index.csv"
    rows = pd.read_csv(cam_index_path, dtype={"study_id": str, "split": str}, keep_default_na=False)
    for col in ("study_id", "slice", "split"):
        if col not in rows:
            raise ValueError(f"{cam_index_path}: missing column {col!r}")
    rows["cam_row"] = np.arange(len(rows))
    return gather_slices(store, rows[rows["split"].isin(splits)], splits, str(cam_index_path))


def gather_slices(store: SliceStore, rows: pd.DataFrame, splits: Sequence[str], source: str) -> GatedSlices:
    """GatedSlices of the given (study_id, slice) rows, with every study of `splits` (source names the rows' file)."""
    index = store.index
    rows = rows.reset_index(drop=True)
    rows["position"] = index_positions(index, rows, source)
    suv, gt = _read_suv_and_mask(store, rows)
    stored = index["lesion_voxels"].to_numpy()[rows["position"].to_numpy()]
    wrong = np.flatnonzero(gt.reshape(len(gt), -1).sum(axis=1) != stored)
    if len(wrong):
        bad = rows.iloc[wrong[0]]
        raise ValueError(f"store index.csv field lesion_voxels of study {bad.study_id} slice {bad.slice} "
                         f"disagrees with its mask.npy")
    grouped = index[index["split"].isin(splits)].groupby("study_id", sort=True)
    studies = pd.DataFrame({"split": grouped["split"].first(),
                            "lesion_voxels": grouped["lesion_voxels"].sum().astype(np.int64)})
    return GatedSlices(store, rows, suv, gt, studies)


def _read_suv_and_mask(store: SliceStore, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """SUV float32 and ground truth bool (n, S, S) of the rows' slices, read study by study from the memmaps."""
    size = store.study(store.studies[0]).suv.shape[1:]
    suv, gt = np.empty((len(rows), *size), np.float32), np.empty((len(rows), *size), bool)
    for sid, sel in rows.groupby("study_id").indices.items():
        study, z = store.study(sid), rows["slice"].to_numpy()[sel]
        suv[sel], gt[sel] = study.suv[z], study.mask[z]
    return suv, gt


def load_cams(run_dir: str | os.PathLike[str], method: str, rows: pd.DataFrame) -> np.ndarray:
    """cams/<method>.npy rows for the given CAM-index rows, as float32 (n, h, w) (notebook 04)."""
    path = Path(run_dir) / "cams" / f"{method}.npy"
    cams = np.load(path, mmap_mode="r")
    if cams.ndim != 3 or cams.shape[1] != cams.shape[2]:
        raise ValueError(f"{path}: CAMs must be (n, h, h), got shape {cams.shape}")
    if len(rows) and rows["cam_row"].max() >= len(cams):
        raise ValueError(f"{path}: {len(cams)} CAMs but cams/index.csv has {rows['cam_row'].max() + 1} rows")
    return np.asarray(cams[rows["cam_row"].to_numpy()], dtype=np.float32)


def study_masks(data: GatedSlices, masks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-slice masks of data's rows as bool (z, S, S) volumes on the store grid, one per study (notebook 04)."""
    masks = np.asarray(masks, dtype=bool)
    if len(masks) != len(data.rows):
        raise ValueError(f"{len(masks)} masks for {len(data.rows)} gated slices")
    by_study = data.rows.groupby("study_id").indices
    empty = np.zeros(0, dtype=np.intp)
    return {sid: assemble(data.store, sid, data.rows["slice"].to_numpy()[by_study.get(sid, empty)],
                          masks[by_study.get(sid, empty)]) for sid in data.studies.index}


def segment_studies(data: GatedSlices, cam: np.ndarray, t: float, q: float,
                    floor: float = 0.0) -> dict[str, np.ndarray]:
    """Algorithm 1 at (t, q, floor) on every gated slice, as one 3D mask per study of data (notebook 04)."""
    return study_masks(data, algorithm1(cam, data.suv, t, q, floor=floor))


def write_thresholds(run_dir: str | os.PathLike[str], gate: float, tuned: Mapping[str, Tuned]) -> Path:
    """segment/thresholds.json (the gate, each method's t, q, floor, val Dice) and segment/<method>_dice.npy (nb 04)."""
    from .runs import write_json_atomic

    folder = Path(run_dir) / "segment"
    folder.mkdir(parents=True, exist_ok=True)
    for method, result in tuned.items():
        tmp = folder / f".{method}_dice.npy.tmp"
        with open(tmp, "wb") as handle:
            np.save(handle, result.surface)
        os.replace(tmp, folder / f"{method}_dice.npy")
    record = {"gate": float(gate), **{m: {"t": r.params["t"], "q": r.params["q"],
                                          "floor": r.params.get("floor", 0.0), "val_dice": r.dice}
                                      for m, r in tuned.items()}}
    write_json_atomic(folder / "thresholds.json", record)
    return folder / "thresholds.json"


def read_gate(run_dir: str | os.PathLike[str]) -> float:
    """The run's classifier threshold (Algorithm 1, line 1) from segment/thresholds.json (notebooks 05, 06)."""
    path = Path(run_dir) / "segment" / "thresholds.json"
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: run notebook 04 first")
    record = json.loads(path.read_text())
    if "gate" not in record:
        raise ValueError(f"{path}: field 'gate' missing (written by an older version); rerun notebook 04")
    return float(record["gate"])


def read_method_params(run_dir: str | os.PathLike[str], method: str) -> dict[str, float]:
    """t, q and SUV floor (0 when absent: thresholds written before the floor) of a method (notebooks 05, `segment`)."""
    path = Path(run_dir) / "segment" / "thresholds.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: notebook 04 tunes t and q")
    record = json.loads(path.read_text())
    entry = record.get(method)
    if not isinstance(entry, dict) or not {"t", "q"} <= entry.keys():
        tuned = [k for k, v in record.items() if isinstance(v, dict)]
        raise ValueError(f"{path}: no field {method!r} with t and q (tuned methods: {tuned}); notebook 04 tunes "
                         "the run's cam_methods")
    return {"t": float(entry["t"]), "q": float(entry["q"]), "floor": float(entry.get("floor", 0.0))}


def save_study_masks(run_dir: str | os.PathLike[str], method: str, masks: Mapping[str, np.ndarray]) -> Path:
    """Write masks/<method>/<study_id>.npz (key 'mask', bool), each atomically (temp name, then rename)."""
    folder = Path(run_dir) / "masks" / method
    folder.mkdir(parents=True, exist_ok=True)
    for sid, mask in masks.items():
        mask = np.asarray(mask)
        if mask.ndim != 3:
            raise ValueError(f"study {sid}: mask for {method} must be (z, S, S), got shape {mask.shape}")
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{sid}.", suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez_compressed(fh, mask=mask.astype(bool))
            os.replace(tmp, folder / f"{sid}.npz")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return folder


def load_study_masks(run_dir: str | os.PathLike[str], method: str) -> dict[str, np.ndarray]:
    """Read masks/<method>/*.npz back into {study_id: bool (z, S, S)}."""
    folder = Path(run_dir) / "masks" / method
    if not folder.is_dir():
        raise FileNotFoundError(f"no masks for method {method!r}: {folder} does not exist")
    out = {}
    for path in sorted(folder.glob("*.npz")):
        with np.load(path) as f:
            if "mask" not in f:
                raise ValueError(f"{path}: missing field 'mask' (study {path.stem})")
            out[path.stem] = f["mask"].astype(bool)
    return out


# ---------------------------------------------------------------- checks

def _check_pair(suv: np.ndarray, other: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """SUV (n, S, S) and a same-shape array."""
    suv, other = np.asarray(suv), np.asarray(other)
    if suv.ndim != 3 or suv.shape != other.shape:
        raise ValueError(f"SUV must be (n, S, S) with a {name} of the same shape, got {suv.shape} and {other.shape}")
    return suv, other


def _check_gate(tumorous: np.ndarray, n: int) -> np.ndarray:
    """The classifier gate as a bool (n,) vector."""
    gate = np.asarray(tumorous, dtype=bool)
    if gate.shape != (n,):
        raise ValueError(f"tumorous must have shape ({n},), got {gate.shape}")
    return gate
