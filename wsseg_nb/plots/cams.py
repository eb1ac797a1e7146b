"""Class activation map panels (Fig. 4 style) and ScoreCAM channel weights (notebook 03)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ..report import DISPLAY
from .segmentation import SUV_MAX, cam_image, outline_rgba, pet



def cam_panel(suv: np.ndarray, ct: np.ndarray, gt: np.ndarray, maps: Mapping[str, np.ndarray],
              labels: Sequence[str] | None = None, size: float = 1.6) -> Figure:
    """Rows = slices: PET with the ground-truth outline, each method's map over the PET, CT (Fig. 4 style)."""
    n, s = suv.shape[0], suv.shape[-1]
    cols = 2 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(size * cols, size * n), squeeze=False, dpi=80)
    for i in range(n):
        pet(axes[i, 0], suv[i], SUV_MAX)
        axes[i, 0].imshow(outline_rgba(gt[i]), interpolation="nearest")
        if labels is not None:
            axes[i, 0].set_ylabel(labels[i], fontsize=8)
            axes[i, 0].set_axis_on()
            axes[i, 0].set_xticks([])
            axes[i, 0].set_yticks([])
        for j, (method, m) in enumerate(maps.items(), start=1):
            ax = axes[i, j]
            pet(ax, suv[i], SUV_MAX)
            cam_image(ax, np.asarray(m[i], dtype=np.float32), s, cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax.imshow(outline_rgba(gt[i], (1.0, 1.0, 1.0, 1.0)), interpolation="nearest")
            if i == 0:
                ax.set_title(DISPLAY.get(method, method), fontsize=9)
        axes[i, -1].imshow(ct[i], cmap="gray", vmin=-1000, vmax=1000, interpolation="nearest")
        axes[i, -1].set_axis_off()
    axes[0, 0].set_title("PET + truth", fontsize=9)
    axes[0, -1].set_title("CT", fontsize=9)
    fig.tight_layout(pad=0.3)
    return fig


def channel_weights_plot(weights: Mapping[str, np.ndarray]) -> Figure:
    """ScoreCAM channel weights per variant (e.g. softmax over channels vs over the single logit), sorted."""
    fig, ax = plt.subplots(figsize=(5.5, 2.6), dpi=80)
    for name, w in weights.items():
        ax.plot(np.sort(np.asarray(w))[::-1], marker=".", lw=1, label=name)
    ax.set_xlabel("channel (sorted by weight)")
    ax.set_ylabel("weight")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
