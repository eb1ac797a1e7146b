"""CAM -> U-Net: pseudo-labels are Algorithm 1 on the training tumor slices, scored by hand, trained on, never stale."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import SIZE, SPACING
from wsseg_nb import cam, pseudo, runs, segment, slices, train
from wsseg_nb.config import get_config
from wsseg_nb.models import VGG16CAM

T, Q = 0.4, 60.0


@pytest.fixture(scope="module")
def run(tiny_store) -> runs.Run:
    """The tiny store (two train studies, one val), a demo config at its size (no unsure voxels), notebook 04's t, q."""
    config = get_config("demo", device="cpu", slice_size=SIZE, spacing_mm=SPACING, cam_unet_method="cam",
                        cam_unet_epochs=1, unet_width=1 / 16, unet_batch=4, cam_batch=8, workers=1,
                        unet_sampling="all", cam_align="none", cam_unet_unsure_suv=0.0)
    out = runs.Run(config, tiny_store.parent, torch.device("cpu"))
    (out.dir / "segment").mkdir()
    (out.dir / "segment" / "thresholds.json").write_text(json.dumps({"gate": 0.5, "cam": {"t": T, "q": Q}}))
    return out


@pytest.fixture(scope="module")
def classifier() -> VGG16CAM:
    torch.manual_seed(1)
    return VGG16CAM(1 / 16).eval()


@pytest.fixture(scope="module")
def written(run: runs.Run, classifier: VGG16CAM) -> pd.DataFrame:
    return pseudo.write_pseudo_labels(run, classifier)


def test_pseudo_labels_are_algorithm1_on_the_training_tumor_slices(run, classifier, written) -> None:
    store = slices.SliceStore(run.store)
    rows = store.index[store.index["split"] == "train"]
    labels = np.load(pseudo.labels_path(run.dir))
    assert labels.shape == (len(rows), SIZE, SIZE) and labels.dtype == np.uint8
    tumor = rows["label"].to_numpy() > 0
    assert tumor.any() and (~tumor).any()
    assert not labels[~tumor].any()  # a slice labelled tumor-free gets an empty target
    positions = rows.index.to_numpy()[tumor]
    maps = cam.cams_for_slices(classifier, store, positions, ["cam"], 8, "cpu")["cam"]
    x, _ = store.read(positions)
    expected = segment.algorithm1(maps.astype(np.float32), x[:, 0], T, Q)
    np.testing.assert_array_equal(labels[tumor].astype(bool), expected)
    assert labels.any()


def test_pseudo_label_dice_by_hand(run, written) -> None:
    store = slices.SliceStore(run.store)
    rows = store.index[store.index["split"] == "train"]
    labels = np.load(pseudo.labels_path(run.dir)).astype(bool)
    assert written["study_id"].tolist() == ["S0", "S1"]
    for record in written.itertuples():
        sel = (rows["study_id"] == record.study_id).to_numpy()
        truth = store.read(rows.index.to_numpy()[sel])[1].astype(bool)
        p = labels[sel]
        assert record.pseudo_voxels == p.sum() and record.true_voxels == truth.sum() > 0
        assert record.dice == pytest.approx(2 * (p & truth).sum() / (p.sum() + truth.sum()))
    assert pd.read_csv(run.dir / pseudo.FOLDER / "pseudo_dice.csv")["dice"].tolist() == pytest.approx(written["dice"].tolist())


def test_dataset_serves_pseudo_labels_and_pickles_without_them(run, written) -> None:
    dataset = pseudo.PseudoLabelDataset(run.store, pseudo.labels_path(run.dir))
    labels = np.load(pseudo.labels_path(run.dir))
    x, label, mask = dataset.batch([0, 5, 7])
    assert x.shape == (3, 2, SIZE, SIZE)
    np.testing.assert_array_equal(mask.numpy(), labels[[0, 5, 7]])
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._labels is None and torch.equal(clone.batch([5])[2], mask[1:2])


def test_wrong_length_label_file_is_refused(run, written, tmp_path) -> None:
    np.save(tmp_path / "short.npy", np.zeros((3, SIZE, SIZE), np.uint8))
    np.save(tmp_path / "short.positions.npy", np.load(pseudo.positions_path(pseudo.labels_path(run.dir))))
    with pytest.raises(ValueError, match="pseudo-labels for .* training slices"):
        pseudo.PseudoLabelDataset(run.store, tmp_path / "short.npy")


def test_cam_unet_trains_and_never_resumes_on_other_labels(run, written) -> None:
    history = pseudo.train_cam_unet(run)
    assert len(history) == 1 and (run.dir / pseudo.FOLDER / "best.pt").is_file()
    assert train.unet_threshold(run.dir / pseudo.FOLDER / "best.pt") in run.config.unet_threshold_grid
    path = pseudo.labels_path(run.dir)
    labels = np.load(path)
    labels[0] ^= 1
    np.save(path, labels)
    with pytest.raises(ValueError, match="checkpoint settings differ in \\['targets'\\]"):
        pseudo.train_cam_unet(run)


def test_missing_thresholds_and_labels_are_named(tmp_path, run) -> None:
    other = runs.Run(run.config, tmp_path, run.device)
    with pytest.raises(FileNotFoundError, match="thresholds.json not found"):
        pseudo.write_pseudo_labels(other, None)
    with pytest.raises(FileNotFoundError, match="write the pseudo-labels first"):
        pseudo.train_cam_unet(other)


def test_classifier_gate_keeps_the_called_tumor_slices_only(run, classifier, tmp_path) -> None:
    import copy
    import dataclasses

    classifier = copy.deepcopy(classifier)
    with torch.no_grad():
        classifier.fc.weight.mul_(1e3)  # an untrained net's p barely varies; spread it so a gate can split the slices
    gated = runs.Run(dataclasses.replace(run.config, cam_unet_gate="classifier"), tmp_path, run.device)
    (tmp_path / "store").symlink_to(run.store)
    (tmp_path / "segment").mkdir()
    store = slices.SliceStore(run.store)
    rows = store.index[store.index["split"] == "train"]
    tumor = rows.index.to_numpy()[rows["label"].to_numpy() > 0]
    prob = torch.sigmoid(train.predict_logits(classifier, store, tumor, 8, torch.device("cpu"), desc=None)).numpy()
    levels = np.unique(prob)  # slices of similar content tie, so split at a level, not at the median
    assert len(levels) >= 2
    gate = float((levels[-2] + levels[-1]) / 2)  # only the slices at the top level are called
    (tmp_path / "segment" / "thresholds.json").write_text(json.dumps({"gate": gate, "cam": {"t": T, "q": Q}}))
    pseudo.write_pseudo_labels(gated, classifier)
    kept = np.load(pseudo.positions_path(pseudo.labels_path(tmp_path)))
    expected = np.sort(np.concatenate([rows.index.to_numpy()[rows["label"].to_numpy() == 0], tumor[prob >= gate]]))
    np.testing.assert_array_equal(kept, expected)
    assert 0 < (prob >= gate).sum() < len(tumor)
    dataset = pseudo.PseudoLabelDataset(gated.store, pseudo.labels_path(tmp_path))
    assert len(dataset) == len(kept) and np.array_equal(dataset.positions, kept)


def test_unsure_voxels_are_the_bright_ones_outside_the_mask_of_tumor_slices(run, classifier, tmp_path) -> None:
    import dataclasses

    store = slices.SliceStore(run.store)
    rows = store.index[store.index["split"] == "train"]
    x, truth = store.read(rows.index.to_numpy())
    tumor = rows["label"].to_numpy() > 0
    suv = float(np.quantile(x[tumor, 0], 0.9))  # the brightest tenth of the tumor slices' voxels
    written = {}
    for name, value in (("plain", 0.0), ("unsure", suv)):  # fresh folders: another test edits run.dir's labels
        folder = tmp_path / name
        folder.mkdir()
        (folder / "store").symlink_to(run.store)
        (folder / "segment").symlink_to(run.dir / "segment")
        other = runs.Run(dataclasses.replace(run.config, cam_unet_unsure_suv=value), folder, run.device)
        written[name] = (pseudo.write_pseudo_labels(other, classifier), np.load(pseudo.labels_path(folder)))
    (frame, labels), (plain_frame, plain) = written["unsure"], written["plain"]
    doubt = tumor[:, None, None] & (plain == 0) & (x[:, 0] >= suv)
    assert 0 < doubt.sum() < (x[tumor, 0] >= suv).sum()  # some bright voxels are in the masks, some outside
    np.testing.assert_array_equal(labels, np.where(doubt, train.UNSURE, plain))  # the masks themselves unchanged
    assert frame["dice"].tolist() == pytest.approx(plain_frame["dice"].tolist())  # scored on the masks only
    for record in frame.itertuples():
        sel = (rows["study_id"] == record.study_id).to_numpy()
        assert record.unsure_voxels == doubt[sel].sum()
        assert record.unsure_lesion_voxels == (doubt[sel] & (truth[sel] > 0)).sum()
    assert (plain_frame["unsure_voxels"] == 0).all()  # at 0 every voxel outside a mask is background
