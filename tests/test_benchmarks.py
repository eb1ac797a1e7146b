"""The seed probe's table (benchmarks/classifier_seeds.py) on a hand-made training history."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks.classifier_seeds import seed_row


def test_seed_row_keeps_the_epoch_fit_keeps_and_finds_where_training_left_ln2() -> None:
    history = pd.DataFrame({"epoch": [1, 2, 3, 4], "train_loss": [0.693, 0.69, 0.60, 0.40],
                            "val_auc": [0.70, np.nan, 0.90, 0.96], "val_pointing": [0.5, 0.5, 0.8, 0.3],
                            "val_pointing_visible": [0.6, 0.9, 0.8, 0.5], "val_cell_auc": [0.8, 0.8, 0.9, 0.7]})
    row = seed_row(history, seed=3, select="val_auc*val_pointing_visible")
    # scores 0.42, NaN (skipped, as fit scores it -inf), 0.72, 0.48: epoch 3 is kept
    assert row["kept_epoch"] == 3 and row["auc"] == 0.9 and row["pointing_visible"] == 0.8
    assert row["max_val_auc"] == 0.96 and row["left_plateau_epoch"] == 3 and row["epochs"] == 4 and row["seed"] == 3


def test_seed_row_reports_a_run_that_never_left_the_plateau() -> None:
    history = pd.DataFrame({"epoch": [1, 2], "train_loss": [0.693, 0.692], "val_auc": [0.5, 0.6],
                            "val_pointing": [0.1, 0.2], "val_pointing_visible": [0.1, 0.2], "val_cell_auc": [0.5, 0.5]})
    row = seed_row(history, seed=0, select="val_auc")
    assert row["kept_epoch"] == 2 and row["left_plateau_epoch"] is None


def test_unet_budget_row_keeps_the_best_epoch_within_the_budget_only() -> None:
    from benchmarks.unet_seeds import budget_row

    history = pd.DataFrame({"epoch": [1, 2, 3, 4], "val_study_dice": [0.2, 0.5, 0.4, 0.6],
                            "val_threshold": [0.5, 0.9, 0.8, 0.95], "val_dice": [0.1, 0.4, 0.3, 0.5],
                            "train_s": [10.0, 20.0, 30.0, 40.0]})
    short, long = (budget_row(history, seed=1, budget=b, select="val_study_dice") for b in (3, 4))
    assert (short["kept_epoch"], short["study_dice"], short["threshold"]) == (2, 0.5, 0.9)
    assert short["train_s_per_epoch"] == 20.0 and long["kept_epoch"] == 4 and long["pooled_dice"] == 0.5
    with pytest.raises(ValueError, match="budget 5"):
        budget_row(history, seed=1, budget=5, select="val_study_dice")


def test_max_pool_probe_logit_is_the_cam_maximum_plus_bias() -> None:
    import torch

    from benchmarks.max_pool_probe import max_cam_logit
    from wsseg_nb.cam import classic_cam
    from wsseg_nb.models import VGG16CAM

    torch.manual_seed(0)
    model = VGG16CAM(width=1 / 16).eval()
    with torch.no_grad():
        model.fc.bias.fill_(0.25)
    x = torch.randn(3, 2, 32, 32) * torch.tensor([2.0, 300.0])[:, None, None]
    with torch.no_grad():
        cam = classic_cam(model, x)
        logit = max_cam_logit(model, x)
        gap = model(x)  # the class is untouched: GAP's logit is the CAM's mean plus the bias
    torch.testing.assert_close(logit, cam.flatten(1).amax(1) + 0.25)
    torch.testing.assert_close(gap, cam.flatten(1).mean(1) + 0.25)
    assert (logit > gap).all()


def test_body_gap_probe_averages_the_cam_over_body_cells_only() -> None:
    import torch

    from benchmarks.body_gap_probe import body_cam, body_cells, body_gap_logit
    from wsseg_nb.cam import classic_cam
    from wsseg_nb.models import VGG16CAM

    torch.manual_seed(0)
    model = VGG16CAM(width=1 / 16).eval()
    x = torch.zeros(2, 2, 32, 32)
    x[:, 1] = -1000.0
    x[0, 0, :, :16] = 1.0  # slice 0: the left half is body (cells 0-1 of 4 per row at stride 8)
    x[0, 1, :, :16] = 40.0
    inside = body_cells(x, 4)
    assert inside[0, :, :2].all() and not inside[0, :, 2:].any() and not inside[1].any()
    with torch.no_grad():
        full = classic_cam(model, x)
        logit = body_gap_logit(model, x)
        restricted = body_cam(model, x)
    b = model.fc.bias[0]
    torch.testing.assert_close(logit[0], full[0, :, :2].mean() + b)
    torch.testing.assert_close(logit[1], full[1].mean() + b)  # no body cell: the plain GAP
    assert torch.equal(restricted[0, :, :2], full[0, :, :2])
    assert (restricted[0, :, 2:] == full[0].min()).all()


def test_restride_keeps_the_weights_and_doubles_the_cells() -> None:
    import dataclasses

    import torch

    from benchmarks.cam_stride_probe import restride
    from wsseg_nb import config, train
    from wsseg_nb.cam import classic_cam

    cfg = dataclasses.replace(config.get_config("demo"), vgg_width=1 / 16)
    torch.manual_seed(0)
    model = train.classifier_model(cfg, "none").eval()
    x = torch.randn(2, 2, 32, 32)
    same, finer = restride(model, cfg, 8), restride(model, cfg, 4)
    with torch.no_grad():
        torch.testing.assert_close(same(x), model(x))  # the same layers and weights: the same logit
        assert classic_cam(model, x).shape[-1] == 4 and classic_cam(finer, x).shape[-1] == 8
        assert not torch.allclose(finer(x), model(x))  # one pool fewer: another (finer) pooled feature


def test_component_kinds_sorts_false_volume_by_where_it_sits() -> None:
    from benchmarks.suv_floor_probe import component_kinds

    truth = np.zeros((4, 6, 6), bool)
    truth[1, 1:3, 1:3] = True  # a 4-voxel lesion on slice 1
    pred = np.zeros_like(truth)
    pred[1, 1:3, 1:4] = True  # hits it: 6 voxels, 2 of them false
    pred[1, 5, 5] = True  # apart from it on the same (tumor) slice
    pred[3, 0:2, 0] = True  # on a tumor-free slice: 2 voxels
    kinds = component_kinds(pred, truth).set_index("kind")
    assert kinds.loc["hits lesion"].tolist() == [6, 2]
    assert kinds.loc["tumor slice, apart"].tolist() == [1, 1]
    assert kinds.loc["tumor-free slices"].tolist() == [2, 2]
    assert component_kinds(np.zeros_like(truth), truth).empty


def test_shift_and_stitch_offsets_centre_each_finer_cell() -> None:
    from benchmarks.dense_cam_probe import stitch_offsets

    assert stitch_offsets(8, 1) == [0] and stitch_offsets(8, 2) == [-2, 2] and stitch_offsets(8, 4) == [-3, -1, 1, 3]
    with pytest.raises(ValueError, match="divide"):
        stitch_offsets(8, 3)


def test_stitched_cam_interleaves_the_maps_of_shifted_inputs() -> None:
    import torch

    from benchmarks.dense_cam_probe import stitched_cam
    from tests.test_cam import TinyCAMNet
    from wsseg_nb import cam

    torch.manual_seed(0)
    net = TinyCAMNet().eval()
    x = torch.rand(3, 2, 32, 32) * torch.tensor([8.0, 1000.0])[:, None, None]
    plain = cam.classic_cam(net, x)
    assert torch.equal(stitched_cam(net, x, 4, 1), plain)
    fine = stitched_cam(net, x, 4, 2, batch=2)  # offsets -1, +1: sub-grid (a, b) is the map of x moved by (-o_a, -o_b)
    assert fine.shape == (3, 16, 16)
    moved = torch.roll(x, shifts=(1, -1), dims=(-2, -1))  # o = (-1, +1)
    torch.testing.assert_close(fine[:, 0::2, 1::2], cam.classic_cam(net, moved), atol=1e-6, rtol=0)


def test_hysteresis_gate_grows_along_z_within_a_study_only() -> None:
    from benchmarks.gate_hysteresis_probe import hysteresis

    rows = pd.DataFrame({"study_id": ["A"] * 6 + ["B", "B", "A"], "slice": [3, 0, 2, 1, 4, 5, 6, 7, 7]})
    prob = np.array([0.6, 0.2, 0.9, 0.6, 0.4, 0.6, 0.6, 0.95, 0.6])
    # study A by slice: 0.2 0.6 0.9 0.6 0.4 0.6 _ 0.6 -> slices 1-3 (2 strong, 1 and 3 weak neighbours); slice 5 is
    # cut off by slice 4 (below low), slice 7 by the missing slice 6; B's slice 6 joins B's strong slice 7
    keep = hysteresis(rows, prob, high=0.8, low=0.5)
    assert keep.tolist() == [True, False, True, True, False, False, True, True, False]
    assert hysteresis(rows, prob, high=0.8, low=0.8).tolist() == (prob >= 0.8).tolist()


def test_seed_dice_probe_names_the_missing_classifier(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from benchmarks import seed_dice_probe

    (tmp_path / "seed0").mkdir()
    monkeypatch.setattr(sys, "argv", ["seed_dice_probe", "--out", str(tmp_path), "--seeds", "0"])
    with pytest.raises(SystemExit, match="seed0/classifier/best.pt: no trained classifier"):
        seed_dice_probe.main()


def test_more_train_studies_adds_training_rows_in_proportion_and_keeps_val_and_test() -> None:
    from benchmarks.more_train_studies import MANIFEST, more_train_studies
    from wsseg_nb.manifest import PATH_FIELDS

    before = pd.read_csv(MANIFEST, dtype=str, keep_default_na=False)
    after = more_train_studies(MANIFEST, 60)
    added = after[(after["demo"] == "1") & (before["demo"] == "0")]
    assert len(added) == 60 and (added["split"] == "train").all()
    demo_train = before[(before["demo"] == "1") & (before["split"] == "train")]
    assert (added["diagnosis"].value_counts() == demo_train["diagnosis"].value_counts()).all()  # 60 = 60: same mix
    for split in ("val", "test"):
        assert (after.loc[after["split"] == split, "demo"] == before.loc[before["split"] == split, "demo"]).all()
    assert after["ct_path"].str.startswith("/").all()
    kept = [c for c in before.columns if c not in ("demo", *PATH_FIELDS)]
    assert after[kept].equals(before[kept])


def test_holdout_rows_are_test_studies_the_demo_never_reads() -> None:
    from benchmarks.holdout_probe import MANIFEST, holdout_rows
    from wsseg_nb.manifest import load_manifest

    every = load_manifest(MANIFEST, check_files=False)
    demo = set(every.loc[every["demo"] == 1, "study_id"])
    rows = holdout_rows(MANIFEST, None)
    assert (rows["split"] == "test").all() and not demo & set(rows["study_id"])
    assert len(rows) == int(((every["split"] == "test") & (every["demo"] == 0)).sum())
    some = holdout_rows(MANIFEST, 20)
    share = rows["diagnosis"].value_counts() / len(rows)
    assert len(some) == 20 and set(some["study_id"]) <= set(rows["study_id"])
    assert ((some["diagnosis"].value_counts() - 20 * share).abs() < 1).all()  # in proportion, to the study


def test_holdout_score_gates_cuts_at_the_floor_and_counts_ungated_lesions(tmp_path) -> None:
    from benchmarks.holdout_probe import score
    from wsseg_nb.segment import GatedSlices

    # study A: two called slices (p 0.9, 0.6), study B: one slice called only at p >= 0.3; CAM 1 everywhere
    suv = np.zeros((3, 4, 4), np.float32)
    suv[0, :2, :2], suv[1, 0, :], suv[2, 3, 3] = 5.0, 2.5, 4.0
    gt = np.zeros((3, 4, 4), bool)
    gt[0, :2, :3], gt[2, 3, 3] = True, True
    rows = pd.DataFrame({"study_id": ["A", "A", "B"], "prob": [0.9, 0.6, 0.4], "cam_row": [0, 1, 2]})
    studies = pd.DataFrame({"split": "test", "lesion_voxels": [6 + 2, 1]}, index=pd.Index(["A", "B"]))
    (tmp_path / "cams").mkdir()
    np.save(tmp_path / "cams" / "cam.npy", np.ones((3, 2, 2), np.float16))
    data = GatedSlices(None, rows, suv, gt, studies)  # A has 2 more lesion voxels on a slice nobody gates
    sets = {"strict": (0.8, None, {"cam": {"t": 0.5, "q": 0.0, "floor": 3.0}}),
            "loose": (0.3, None, {"cam": {"t": 0.5, "q": 0.0, "floor": 2.0}})}
    table = score(data, tmp_path, sets, ["cam"], voxel_ml=0.5).set_index(["set", "study_id"])
    # strict: slice 0 only, SUV >= 3 keeps its 4 hot voxels, 4 of them lesion: A 2*4/(4+8); B not called: 0
    assert table.loc[("strict", "A"), "dice"] == 2 * 4 / (4 + 8) and table.loc[("strict", "B"), "dice"] == 0.0
    # loose: + slice 1 (4 voxels at 2.5, none lesion) and slice 2 (1 voxel, lesion)
    assert table.loc[("loose", "A"), "dice"] == 2 * 4 / (8 + 8) and table.loc[("loose", "B"), "dice"] == 1.0
    assert table.loc[("loose", "A"), "mtv_ml"] == 4.0 and table.loc[("loose", "A"), "true_mtv_ml"] == 4.0
