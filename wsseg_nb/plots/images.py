"""Data figures (store-grid slices, index towards L and P, show in radiological view as they are): CT / PET / fusion slices with lesion contours, coronal MIP, cohort bar, Fig. 2 histogram."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

DPI = 80
CT_WINDOW = (-160.0, 240.0)
"""Soft-tissue window (HU): level 40, width 400."""
SUV_MAX = 8.0
LESION_COLOR = "#00e5ff"


def _contour(ax: Axes, mask: np.ndarray | None, color: str = LESION_COLOR) -> None:
    """Outline a binary mask's regions (already oriented for display)."""
    if mask is not None and np.any(mask):
        ax.contour(np.asarray(mask, dtype=float), levels=[0.5], colors=color, linewidths=1.0)


def fusion(ax: Axes, ct: np.ndarray, suv: np.ndarray, mask: np.ndarray | None = None, suv_max: float = SUV_MAX) -> None:
    """PET/CT fusion of one axial slice (CT grey, SUV 'hot' with alpha) with the lesion contour (notebook 01)."""
    ax.imshow(np.asarray(ct), cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1], interpolation="nearest")
    pet = np.asarray(suv)
    ax.imshow(np.ma.masked_less(pet, 0.05 * suv_max), cmap="hot", vmin=0, vmax=suv_max, alpha=0.55,
              interpolation="bilinear")
    _contour(ax, None if mask is None else np.asarray(mask))
    ax.set_axis_off()


def axial_panels(ct: np.ndarray, suv: np.ndarray, mask: np.ndarray | None = None, suv_max: float = SUV_MAX,
                 title: str = "") -> Figure:
    """CT, PET (SUV) and fusion of one axial slice, lesion contour on each (notebook 01)."""
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.8), dpi=DPI)
    axes[0].imshow(np.asarray(ct), cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1])
    axes[0].set_title(f"CT (HU, window {CT_WINDOW[0]:.0f}..{CT_WINDOW[1]:.0f})")
    im = axes[1].imshow(np.asarray(suv), cmap="gray_r", vmin=0, vmax=suv_max)
    axes[1].set_title(f"PET (SUV 0..{suv_max:g})")
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.02)
    for ax in axes[:2]:
        _contour(ax, None if mask is None else np.asarray(mask))
        ax.set_axis_off()
    fusion(axes[2], ct, suv, mask, suv_max)
    axes[2].set_title("PET/CT fusion + lesion contour")
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.93) if title else (0, 0, 1, 1))  # room for the suptitle above the panel titles
    return fig


def coronal_mip(suv: np.ndarray, mask: np.ndarray | None = None, spacing_mm: Sequence[float] = (3.0, 2.0, 2.0),
                suv_max: float = 10.0, title: str = "") -> Figure:
    """Coronal maximum-intensity projection of a (z, y, x) SUV volume, projected lesion outline (notebook 01)."""
    fig, ax = plt.subplots(figsize=(3.6, 6.5), dpi=DPI)
    mip = np.asarray(suv).max(axis=1)[:, ::-1]
    ax.imshow(mip, cmap="gray_r", vmin=0, vmax=suv_max, origin="lower", aspect=spacing_mm[0] / spacing_mm[2])
    if mask is not None and np.any(mask):
        ax.contour(np.asarray(mask).max(axis=1)[:, ::-1].astype(float), levels=[0.5], colors="red", linewidths=0.8)
    ax.set_title(title or f"coronal MIP (SUV 0..{suv_max:g})")
    ax.set_axis_off()
    fig.tight_layout()
    return fig


def cohort_bar(manifest_df: pd.DataFrame) -> Figure:
    """Studies per diagnosis, stacked by train/val/test split (notebook 01)."""
    counts = manifest_df.groupby(["diagnosis", "split"]).size().unstack(fill_value=0)
    counts = counts.reindex(columns=[c for c in ("train", "val", "test") if c in counts.columns])
    counts = counts.loc[counts.sum(axis=1).sort_values(ascending=False).index]
    fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=DPI)
    bottom = np.zeros(len(counts))
    for split in counts.columns:
        ax.bar(counts.index, counts[split], bottom=bottom, label=split)
        bottom += counts[split].to_numpy()
    for i, total in enumerate(bottom):
        ax.text(i, total, f"{int(total)} ({total / bottom.sum():.0%})", ha="center", va="bottom")
    ax.set_ylabel("studies")
    ax.set_ylim(0, bottom.max() * 1.15)
    ax.legend(title="split", frameon=False)
    ax.set_title(f"cohort: {int(bottom.sum())} studies")
    fig.tight_layout()
    return fig


def tumor_area_histogram(areas_mm2: np.ndarray, bins: int = 40) -> Figure:
    """Fig. 2: histogram of the tumour area in each tumour-containing slice (right-skewed) (notebook 01)."""
    areas = np.asarray(areas_mm2, dtype=float)
    areas = areas[areas > 0]
    fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=DPI)
    ax.hist(areas / 100.0, bins=bins, color="tab:red", alpha=0.8)
    ax.axvline(np.median(areas) / 100.0, color="k", ls="--", lw=1, label=f"median {np.median(areas) / 100:.1f} cm²")
    ax.set_xlabel("tumour area per tumour slice (cm²)")
    ax.set_ylabel("slices")
    ax.set_title(f"{areas.size} tumour slices")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def resampling_profile(source: np.ndarray, source_affine: np.ndarray, target: np.ndarray,
                       target_affine: np.ndarray) -> Figure:
    """A left-right line through the source's hottest voxel, before and after resampling, in world mm (notebook 01)."""
    z, y, x = np.unravel_index(int(np.argmax(source)), source.shape)
    hot_world = source_affine @ np.array([x, y, z, 1.0])
    tz, ty, _ = np.rint((np.linalg.inv(target_affine) @ hot_world)[2::-1]).astype(int)
    tz, ty = np.clip(tz, 0, target.shape[0] - 1), np.clip(ty, 0, target.shape[1] - 1)
    fig, ax = plt.subplots(figsize=(6, 2.6), dpi=80)
    for array, affine, line, label in ((source, source_affine, (z, y), "PET grid"),
                                       (target, target_affine, (tz, ty), "target grid")):
        xs = affine[0, 0] * np.arange(array.shape[2]) + affine[0, 3]
        ax.plot(xs, array[line[0], line[1]], ".-", ms=3, lw=0.8, label=label)
    ax.set(xlabel="world x (mm)", ylabel="SUV", xlim=(hot_world[0] - 60, hot_world[0] + 60),
           title="line profile through the hottest voxel")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig
