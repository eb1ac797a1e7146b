"""Training figures: learning curves, ROC, confusion matrix, augmented examples, slices with predictions."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .images import DPI, LESION_COLOR, fusion

PRED_COLOR = "#ff3df5"
"""Contour colour of a predicted mask (the ground truth uses images.LESION_COLOR)."""


def learning_curves(history: pd.DataFrame, metrics: Sequence[str] = ("auc",), title: str = "") -> Figure:
    """Training and validation loss per epoch, and the validation metrics (history.csv columns val_<m>) (notebook 02).

    Epochs without validation (`unet_val_every` > 1) are left out of the validation curves."""
    fig, axes = plt.subplots(1, 1 + len(metrics), figsize=(4.2 * (1 + len(metrics)), 3.2), dpi=DPI)
    axes = np.atleast_1d(axes)
    validated = history.dropna(subset=["val_loss"])
    axes[0].plot(history["epoch"], history["train_loss"], "o-", label="train (augmented)")
    axes[0].plot(validated["epoch"], validated["val_loss"], "s-", label="validation")
    axes[0].set(xlabel="epoch", ylabel="weighted CE", title=title or "loss")
    axes[0].legend()
    for ax, m in zip(axes[1:], metrics):
        ax.plot(validated["epoch"], validated[f"val_{m}"], "s-", color="C1")
        ax.set(xlabel="epoch", ylabel=f"validation {m}", ylim=(0, 1))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def roc_and_confusion(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> Figure:
    """ROC curve with its AUC and the confusion matrix at p >= threshold (notebook 02)."""
    from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

    labels = np.asarray(labels).astype(int)
    fpr, tpr, _ = roc_curve(labels, probs)
    cm = confusion_matrix(labels, np.asarray(probs) >= threshold, labels=[0, 1])
    fig, (ax_roc, ax_cm) = plt.subplots(1, 2, figsize=(8.4, 3.6), dpi=DPI)
    ax_roc.plot(fpr, tpr, label=f"AUC {roc_auc_score(labels, probs):.3f}")
    ax_roc.plot([0, 1], [0, 1], ":", color="grey")
    ax_roc.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC")
    ax_roc.legend(loc="lower right")
    ax_cm.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax_cm.text(j, i, str(v), ha="center", va="center", color="black" if v < cm.max() / 2 else "white")
    ax_cm.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["no tumor", "tumor"], yticklabels=["no tumor", "tumor"],
              xlabel=f"predicted (p >= {threshold})", ylabel="true", title="confusion matrix")
    fig.tight_layout()
    return fig


def augmentation_examples(x: np.ndarray, mask: np.ndarray, x_aug: np.ndarray, mask_aug: np.ndarray) -> Figure:
    """Original (top) and augmented (bottom) PET/CT fusions with their lesion contours (notebook 02)."""
    n = len(x)
    fig, axes = plt.subplots(2, n, figsize=(2.4 * n, 5.0), dpi=DPI, squeeze=False)
    for i in range(n):
        for row, (img, m) in enumerate(((x[i], mask[i]), (x_aug[i], mask_aug[i]))):
            fusion(axes[row, i], img[1], img[0], m)
        axes[0, i].set_title("original" if i == 0 else "")
        axes[1, i].set_title("augmented" if i == 0 else "")
    fig.tight_layout()
    return fig


def slices_with_probability(x: np.ndarray, mask: np.ndarray, probs: Sequence[float], labels: Sequence[int]) -> Figure:
    """Fusions titled with the classifier's tumor probability and the true label (notebook 02)."""
    n = len(x)
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n, 2.8), dpi=DPI, squeeze=False)
    for ax, img, m, p, y in zip(axes[0], x, mask, probs, labels):
        fusion(ax, img[1], img[0], m)
        ax.set_title(f"p = {p:.2f} ({'tumor' if y else 'no tumor'})", fontsize=9)
    fig.tight_layout()
    return fig


def prediction_vs_truth(x: np.ndarray, truth: np.ndarray, pred: np.ndarray, titles: Sequence[str] = ()) -> Figure:
    """Fusions with the ground-truth contour (cyan) and the predicted mask contour (magenta) (notebook 05)."""
    n = len(x)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.9), dpi=DPI, squeeze=False)
    for i, ax in enumerate(axes[0]):
        fusion(ax, x[i][1], x[i][0], truth[i])
        if np.any(pred[i]):
            ax.contour(np.asarray(pred[i], dtype=float), levels=[0.5], colors=PRED_COLOR, linewidths=1.0)
        if i < len(titles):
            ax.set_title(titles[i], fontsize=9)
    fig.legend(handles=[Line2D([], [], color=LESION_COLOR, label="ground truth"),
                        Line2D([], [], color=PRED_COLOR, label="prediction")],
               loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig
