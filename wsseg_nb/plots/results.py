"""Result figures: Fig. 5 (per-study Dice), Figs. 6-7 (true vs estimated MTV/TLG), Bland-Altman, by diagnosis."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .. import metrics
from ..report import DISPLAY, PAPER, WEAKLY_SUPERVISED, methods_in, with_lesions
from .images import DPI

WEAK_COLOR, BASELINE_COLOR = "tab:blue", "tab:red"
QUANTITIES = {"mtv": ("mtv_true_ml", "mtv_pred_ml", "MTV", "ml"), "tlg": ("tlg_true_g", "tlg_pred_g", "TLG", "g")}


def _color(method: str) -> str:
    """Blue for weakly supervised methods, red for the baselines (as Fig. 5)."""
    return WEAK_COLOR if method in WEAKLY_SUPERVISED else BASELINE_COLOR


def _grid(n: int, size: float = 2.6) -> tuple[Figure, np.ndarray]:
    """A figure with n panels, at most three per row."""
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False, dpi=DPI)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat[:n]


def dice_boxplot(per_study: pd.DataFrame, show_paper: bool = True) -> Figure:
    """Fig. 5: per-study Dice, weakly supervised blue, baselines red; the paper's medians as diamonds (notebook 06)."""
    methods = methods_in(per_study)
    data = with_lesions(per_study)
    values = [data.loc[data["method"] == m, "dice"].dropna().to_numpy() for m in methods]
    fig, ax = plt.subplots(figsize=(1.1 * len(methods) + 1.5, 3.4), dpi=DPI)
    box = ax.boxplot(values, widths=0.55, patch_artist=True, showfliers=False)
    rng = np.random.default_rng(0)
    for i, (m, v) in enumerate(zip(methods, values), 1):
        box["boxes"][i - 1].set(facecolor=_color(m), alpha=0.35, edgecolor=_color(m))
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(v)), v, s=10, color=_color(m), zorder=3)
    if show_paper:
        xs = [i for i, m in enumerate(methods, 1) if m in PAPER.index]
        ax.scatter(xs, PAPER.loc[[methods[i - 1] for i in xs], "dice_median"], marker="D", s=28, color="k", zorder=4,
                   label="paper median")
        ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.set_xticks(range(1, len(methods) + 1), [DISPLAY.get(m, m) for m in methods])
    ax.set_ylim(0, 1)
    ax.set_ylabel("3D Dice per study")
    ax.set_title(f"Per-study Dice ({data['study_id'].nunique()} studies with lesions)")
    fig.tight_layout()
    return fig


def agreement_scatter(per_study: pd.DataFrame, quantity: str = "mtv", icc: pd.DataFrame | None = None) -> Figure:
    """Figs. 6/7: estimated vs true MTV or TLG per method with the identity line (and ICC when given) (notebook 06)."""
    true_col, pred_col, name, unit = QUANTITIES[quantity]
    data = with_lesions(per_study)
    methods = methods_in(per_study)
    values = data[[true_col, pred_col]].to_numpy(dtype=float)
    positive = values[np.isfinite(values) & (values > 0)]
    lo, hi = (positive.min() / 1.5, positive.max() * 1.5) if positive.size else (0.1, 10.0)
    fig, axes = _grid(len(methods))
    for ax, m in zip(axes, methods):
        d = data[data["method"] == m]
        ax.plot([lo, hi], [lo, hi], color="0.5", lw=1, ls="--")
        # log axes: true volumes span two decades, and a method's false positives can add thousands of ml;
        # an empty estimate (0) is drawn on the lower edge
        ax.scatter(d[true_col], d[pred_col].clip(lower=lo), s=12, color=_color(m))
        title = DISPLAY.get(m, m)
        if icc is not None and m in set(icc["method"]):
            title += f"  ICC {icc.set_index('method').loc[m, f'{quantity}_icc']:.2f}"
        ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), title=title, aspect="equal")
        ax.set_xlabel(f"true {name} ({unit})", fontsize=8)
        ax.set_ylabel(f"estimated {name} ({unit})", fontsize=8)
    fig.tight_layout()
    return fig


def bland_altman_plot(per_study: pd.DataFrame, quantity: str = "mtv") -> Figure:
    """Bland-Altman: estimate - truth against their mean, with bias and 95% limits of agreement (notebook 06)."""
    true_col, pred_col, name, unit = QUANTITIES[quantity]
    data = with_lesions(per_study)
    methods = methods_in(per_study)
    fig, axes = _grid(len(methods))
    for ax, m in zip(axes, methods):
        d = data[data["method"] == m]
        ba = metrics.bland_altman(d[true_col], d[pred_col])
        ax.scatter((d[true_col] + d[pred_col]) / 2, d[pred_col] - d[true_col], s=12, color=_color(m))
        for y, ls in ((ba["bias"], "-"), (ba["loa_low"], "--"), (ba["loa_high"], "--")):
            ax.axhline(y, color="k", lw=1, ls=ls)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_title(f"{DISPLAY.get(m, m)}  bias {ba['bias']:.0f} {unit}", fontsize=9)
        ax.set_xlabel(f"mean {name} ({unit})", fontsize=8)
        ax.set_ylabel(f"estimate - truth ({unit})", fontsize=8)
    fig.tight_layout()
    return fig


def diagnosis_plot(per_study: pd.DataFrame) -> Figure:
    """Dice by diagnosis and method (lesion studies) and false-positive volume of lesion-free studies (notebook 06)."""
    methods = methods_in(per_study)
    lesion = with_lesions(per_study)
    diagnoses = sorted(lesion["diagnosis"].unique())
    negatives = per_study[per_study["n_lesions"] == 0]
    fig, (ax, ax_neg) = plt.subplots(1, 2, figsize=(11, 3.4), gridspec_kw={"width_ratios": [3, 1.3]},
                                     dpi=DPI)
    width = 0.8 / max(len(diagnoses), 1)
    colors = plt.get_cmap("tab10")(np.arange(len(diagnoses)) + 2)
    for j, (diag, color) in enumerate(zip(diagnoses, colors)):
        d = lesion[lesion["diagnosis"] == diag]
        vals = [d.loc[d["method"] == m, "dice"].dropna().to_numpy() for m in methods]
        pos = np.arange(len(methods)) + (j - (len(diagnoses) - 1) / 2) * width
        box = ax.boxplot(vals, positions=pos, widths=width * 0.9, patch_artist=True, showfliers=False,
                         manage_ticks=False)
        for patch in box["boxes"]:
            patch.set(facecolor=color, alpha=0.6)
        ax.plot([], [], color=color, lw=6, alpha=0.6, label=f"{diag} (n={d['study_id'].nunique()})")
    ax.set_xticks(range(len(methods)), [DISPLAY.get(m, m) for m in methods])
    ax.set(ylim=(0, 1), ylabel="3D Dice per study", title="Dice by diagnosis")
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    fpv = [negatives.loc[negatives["method"] == m, "fp_volume_ml"].to_numpy() for m in methods]
    ax_neg.bar(range(len(methods)), [np.median(v) if len(v) else 0 for v in fpv], color=[_color(m) for m in methods],
               alpha=0.6)
    ax_neg.set_xticks(range(len(methods)), [DISPLAY.get(m, m) for m in methods], rotation=45, ha="right")
    ax_neg.set(ylabel="median FP volume (ml)", title=f"lesion-free studies (n={negatives['study_id'].nunique()})")
    fig.tight_layout()
    return fig

