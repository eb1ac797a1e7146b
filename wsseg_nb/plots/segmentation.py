"""Algorithm 1 step by step on one slice, the validation Dice surfaces, and the overlays the explorer reuses."""
from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from scipy import ndimage

from .. import segment
from ..report import DISPLAY
from .images import SUV_MAX

TP, FP, FN = (0.1, 0.8, 0.2, 0.85), (0.95, 0.2, 0.1, 0.85), (0.2, 0.5, 1.0, 0.85)
"""Overlay colours: true positive green, false positive red, missed ground truth blue."""
OUTLINE = (1.0, 0.9, 0.0, 1.0)
"""Ground-truth outline colour."""


def outline_rgba(mask: np.ndarray, color: tuple[float, ...] = OUTLINE) -> np.ndarray:
    """An RGBA image (S, S, 4) with the one-voxel outline of a 2D mask (notebook 04)."""
    mask = np.asarray(mask, dtype=bool)
    edge = mask & ~ndimage.binary_erosion(mask)
    out = np.zeros(mask.shape + (4,), dtype=np.float32)
    out[edge] = color
    return out


def overlap_rgba(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """RGBA (S, S, 4): prediction vs ground truth as TP green, FP red, FN blue, else transparent (notebook 04)."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    out = np.zeros(pred.shape + (4,), dtype=np.float32)
    out[pred & gt], out[pred & ~gt], out[~pred & gt] = TP, FP, FN
    return out


def slice_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """2D Dice of one slice; NaN when both are empty."""
    total = np.count_nonzero(pred) + np.count_nonzero(gt)
    return 2 * np.count_nonzero(np.logical_and(pred, gt)) / total if total else float("nan")


def pet(ax: Axes, suv: np.ndarray, vmax: float = SUV_MAX) -> AxesImage:
    """PET as inverted grey scale (SUV 0..vmax), no axes."""
    ax.set_axis_off()
    return ax.imshow(suv, cmap="gray_r", vmin=0, vmax=vmax, interpolation="nearest")


def cam_image(ax: Axes, cam: np.ndarray, size: int, **kwargs) -> AxesImage:
    """A low-resolution map drawn over the slice's pixel extent (what nearest upscaling produces)."""
    return ax.imshow(cam, extent=(-0.5, size - 0.5, size - 0.5, -0.5), interpolation="nearest", **kwargs)


def algorithm1_steps(cam: np.ndarray, suv: np.ndarray, gt: np.ndarray, t: float, q: float) -> Figure:
    """Algorithm 1 on one slice: CAM, CAM >= t, upscaled region, SUV in the region with t_q, mask vs truth (nb 04)."""
    size = suv.shape[-1]
    region = segment.cam_region(cam[None], t, size)[0]
    t_q = float(segment.region_percentile(suv[None], region[None], q)[0])
    mask = segment.algorithm1(cam[None], suv[None], t, q)[0]
    fig, axes = plt.subplots(1, 6, figsize=(15, 2.9))
    pet(axes[0], suv)
    axes[0].imshow(outline_rgba(gt))
    axes[0].set_title("1: PET slice X,\nground truth outlined")
    cam_image(axes[1], cam, size, cmap="jet", vmin=0, vmax=1)
    axes[1].set_title(f"1: H = CAM(X)\n{cam.shape[0]}×{cam.shape[1]}")
    cam_image(axes[2], cam >= t, size, cmap="gray", vmin=0, vmax=1)
    axes[2].set_title(f"2: H' = H ≥ t = {t:g}")
    pet(axes[3], np.where(region, suv, 0))
    axes[3].set_title(f"3-4: H'' = X ⊙ up(H')\n{size}×{size}, {region.sum()} px")
    for ax in axes[1:3]:
        ax.set_axis_off()
    ax = axes[4]
    values = suv[region]
    ax.hist(values, bins=40, color="0.5")
    if np.isfinite(t_q):
        ax.axvline(t_q, color="r", label=f"t_q = {t_q:.2f}")
        ax.legend(fontsize=8, frameon=False)
    ax.set_xlabel("SUV in region")
    ax.set_title(f"5: t_q = percentile {q:g} of the SUV\nin the region (numpy 'linear')")
    pet(axes[5], suv)
    axes[5].imshow(overlap_rgba(mask, gt))
    axes[5].set_title(f"6: region ∧ SUV ≥ t_q\nDice {slice_dice(mask, gt):.2f} (TP/FP/FN)")
    fig.tight_layout()
    return fig


def surface_image(ax: Axes, surface: np.ndarray, t_grid, q_grid, vmax: float = 1.0) -> AxesImage:
    """A Dice surface (len(t), len(q)) in data coordinates: q on x, t on y, cells centred on the grid values."""
    t_grid, q_grid = np.asarray(t_grid, float), np.asarray(q_grid, float)
    dt = (t_grid[-1] - t_grid[0]) / max(len(t_grid) - 1, 1) / 2 or 0.5
    dq = (q_grid[-1] - q_grid[0]) / max(len(q_grid) - 1, 1) / 2 or 0.5
    image = ax.imshow(surface, origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=vmax,
                      extent=(q_grid[0] - dq, q_grid[-1] + dq, t_grid[0] - dt, t_grid[-1] + dt))
    ax.set_xlabel("SUV percentile q")
    ax.set_ylabel("CAM threshold t")
    return image


def colour_top(surfaces: list[np.ndarray]) -> float:
    """A shared colour-scale top for Dice surfaces: their maximum rounded up to 0.1 (at least 0.1)."""
    return max(0.1, float(np.ceil(10 * max(float(np.nanmax(s)) for s in surfaces)) / 10))


def dice_surfaces(tuned: Mapping[str, segment.Tuned],
                  paper: Mapping[str, Mapping[str, float]] = segment.PAPER_PARAMS) -> Figure:
    """Validation median-Dice surfaces of the CAM methods, chosen (t, q) as ×, the paper's as ○ (notebook 04)."""
    fig, axes = plt.subplots(1, len(tuned), figsize=(3.1 * len(tuned) + 0.9, 3.0), squeeze=False, sharey=True,
                             layout="constrained")
    vmax = colour_top([r.surface for r in tuned.values()])
    for ax, (method, result) in zip(axes[0], tuned.items()):
        image = surface_image(ax, result.surface, result.grid["t"], result.grid["q"], vmax)
        ax.plot(result.params["q"], result.params["t"], "wx", ms=9, mew=2, label="chosen")
        if method in paper:
            ax.plot(paper[method]["q"], paper[method]["t"], "o", mfc="none", mec="r", ms=9, mew=1.5, label="paper")
        ax.set_title(f"{DISPLAY.get(method, method)}: best {result.dice:.2f}", fontsize=10)
        if ax is not axes[0, 0]:
            ax.set_ylabel("")
    # a grey legend frame, so that the white × of "chosen" shows in it
    axes[0, 0].legend(fontsize=7, loc="upper left", facecolor="0.3", labelcolor="w", framealpha=0.8)
    fig.colorbar(image, ax=axes[0].tolist(), label="median 3D Dice (val)", shrink=0.9)
    return fig
