"""CAM -> U-Net (beyond the paper): Algorithm 1's masks on the training studies become a U-Net's targets (notebook 05).

No voxel label is used for training: the training slices are gated by their slice labels (the weak labels the
classifier learned from), the CAM of `cam_unet_method` with its tuned t and q (notebook 04) cuts the mask, and the
U-Net learns from those masks with the supervised baseline's loop, loss and augmentation. Validation, as for every
other method's t, q and epoch, scores against the validation studies' lesion masks.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .progress import progress
from .runs import Run, write_csv_atomic
from .slices import SliceDataset, SliceStore

FOLDER = "cam_unet"
"""Run sub-folder of the CAM -> U-Net: pseudo-labels, their Dice, checkpoints and history."""
CHUNK = 256
"""Training slices per Algorithm 1 step while the pseudo-labels are written (bounds the memory)."""


def labels_path(run_dir: str | os.PathLike[str]) -> Path:
    """RUN_DIR/cam_unet/pseudo_labels.npy: uint8 (n, S, S), aligned with the store rows in `positions_path`."""
    return Path(run_dir) / FOLDER / "pseudo_labels.npy"


def positions_path(labels: str | os.PathLike[str]) -> Path:
    """The store rows (int64) that a pseudo-label file's masks belong to, beside it: <name>.positions.npy."""
    labels = Path(labels)
    return labels.with_name(labels.stem + ".positions.npy")


def write_pseudo_labels(run: Run, model: Any) -> pd.DataFrame:
    """Algorithm 1 masks of the training slices to `labels_path` (+ their store rows), atomically.

    Slices labelled tumor-free get an empty mask. With cam_unet_gate 'classifier' a slice labelled tumorous is kept
    only where the classifier also calls it (p >= the tuned gate, the slices t and q were tuned on); the others are
    left out of the U-Net's training. With cam_unet_unsure_suv > 0 the voxels of a kept tumor slice outside its mask
    with SUV >= that value get train.UNSURE (left out of the loss). Returns one row per training study: its
    pseudo-label Dice against the lesion masks (a diagnostic only: nothing is trained on it), labelled, unsure,
    unsure lesion and true voxels; also cam_unet/pseudo_dice.csv.
    """
    import torch

    from .cam import _save_npy_atomic, cams_for_slices
    from .segment import algorithm1, read_gate, read_method_params, study_dice
    from .train import UNSURE, cam_shift, predict_logits

    c = run.config
    params = read_method_params(run.dir, c.cam_unet_method)
    store = SliceStore(run.store)
    rows = store.index[store.index["split"] == "train"]
    tumor_rows = rows.index.to_numpy()[rows["label"].to_numpy() > 0]
    if c.cam_unet_gate == "classifier":
        logits = predict_logits(model, store, tumor_rows, c.cam_batch, run.device, desc="classifier")
        tumor_rows = tumor_rows[torch.sigmoid(logits).numpy() >= read_gate(run.dir)]
    positions = np.sort(np.concatenate([rows.index.to_numpy()[rows["label"].to_numpy() == 0], tumor_rows]))
    called = np.flatnonzero(np.isin(positions, tumor_rows))
    path = labels_path(run.dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(positions), c.slice_size, c.slice_size))
    inter, pred, unsure, unsure_lesion = (np.zeros(len(positions), np.int64) for _ in range(4))
    unsure_cut = c.cam_unet_unsure_suv or np.inf  # 0: no voxel is unsure
    maps = cams_for_slices(model, store, positions[called], [c.cam_unet_method], c.cam_batch, run.device,
                           c.scorecam_topk, cam_shift(run), c.scorecam_weights)[c.cam_unet_method]
    for start in progress(range(0, len(called), CHUNK), desc="pseudo-labels", unit="chunk"):
        items = called[start:start + CHUNK]
        x, truth = store.read(positions[items])
        mask = algorithm1(maps[start:start + CHUNK].astype(np.float32), x[:, 0], params["t"], params["q"],
                          floor=params["floor"])
        doubt = ~mask & (x[:, 0] >= unsure_cut)
        out[items] = np.where(doubt, UNSURE, mask)
        inter[items], pred[items] = (mask & (truth > 0)).sum((1, 2)), mask.sum((1, 2))
        unsure[items], unsure_lesion[items] = doubt.sum((1, 2)), (doubt & (truth > 0)).sum((1, 2))
    out.flush()
    del out
    _save_npy_atomic(positions_path(path), positions)
    os.replace(tmp, path)
    slice_study = store.index.loc[positions, "study_id"].to_numpy()
    gt_total = rows.groupby("study_id", sort=True)["lesion_voxels"].sum()
    per_study = pd.DataFrame({"pseudo_voxels": pred, "unsure_voxels": unsure, "unsure_lesion_voxels": unsure_lesion})
    per_study = per_study.groupby(slice_study).sum().reindex(gt_total.index, fill_value=0)
    frame = pd.DataFrame({"study_id": gt_total.index,
                          "diagnosis": rows.groupby("study_id", sort=True)["diagnosis"].first().to_numpy(),
                          "dice": study_dice(inter, pred, slice_study, gt_total),
                          **{name: per_study[name].to_numpy() for name in per_study},
                          "true_voxels": gt_total.to_numpy()})
    write_csv_atomic(run.dir / FOLDER / "pseudo_dice.csv", frame)
    return frame


def labels_digest(path: str | os.PathLike[str]) -> str:
    """SHA-1 of a pseudo-label file and its store rows: a checkpoint trained on other labels is never resumed."""
    digest = hashlib.sha1()
    for part in (Path(path), positions_path(path)):
        with open(part, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()


class PseudoLabelDataset(SliceDataset):
    """The pseudo-labelled training slices, their masks (0, 1, train.UNSURE) in place of the store's lesion masks."""

    def __init__(self, store: SliceStore | str | os.PathLike[str], path: str | os.PathLike[str]):
        self.path = Path(path)
        rows = np.load(positions_path(self.path))
        super().__init__(store, "train", indices=rows)
        self._labels: np.ndarray | None = None
        shape = np.load(self.path, mmap_mode="r").shape
        if shape[0] != len(self.positions):
            raise ValueError(f"{self.path}: {shape[0]} pseudo-labels for {len(self.positions)} training slices "
                             f"({positions_path(self.path).name}); rerun notebook 05")

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_labels": None}  # worker processes map the file themselves

    def batch(self, items):
        """(x, label, pseudo-label) of dataset items: the store's slices and labels, the mask from the file."""
        import torch

        x, label, _ = super().batch(items)
        if self._labels is None:
            self._labels = np.load(self.path, mmap_mode="r")
        return x, label, torch.from_numpy(np.ascontiguousarray(self._labels[np.asarray(items, dtype=np.int64)]))


def train_cam_unet(run: Run, resume: bool = True) -> pd.DataFrame:
    """The supervised U-Net's loop and settings (whole slices) trained on pseudo-labels; writes run_dir/cam_unet/."""
    import torch

    from .train import _datasets, fit, unet_model, unet_optimizer

    c = run.config
    path = labels_path(run.dir)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: write the pseudo-labels first (pseudo.write_pseudo_labels)")
    torch.manual_seed(c.seed)
    model = unet_model(c)
    optimizer = unet_optimizer(model, c)
    _, val_set = _datasets(run)
    hparams = {"width": c.unet_width, "norm": c.unet_norm, "lr": c.unet_lr, "slice_size": c.slice_size,
               "targets": f"{c.cam_unet_method} pseudo-labels ({c.cam_unet_gate} gate) {labels_digest(path)}"}
    return fit(model, optimizer, PseudoLabelDataset(run.store, path), val_set, kind="unet", out_dir=run.dir / FOLDER,
               epochs=c.cam_unet_epochs, batch=c.unet_batch, pos_weight=c.unet_pos_weight, seed=c.seed,
               device=run.device, workers=c.workers, engine=c.augment_engine, sampling=c.unet_sampling,
               schedule=c.unet_schedule, select=c.unet_select, thresholds=c.unet_threshold_grid,
               ema_decay=c.unet_ema, val_every=c.unet_val_every, hparams=hparams, resume=resume,
               unsure=c.cam_unet_unsure_suv > 0)
