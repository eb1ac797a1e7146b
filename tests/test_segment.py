"""Algorithm 1, the global threshold, the grid searches, per-study Dice and study masks (wsseg_nb.segment)."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from wsseg_nb import metrics, segment as sg

T_GRID = np.linspace(0.1, 0.9, 10).round(6)
Q_GRID = np.linspace(20, 50, 20).round(6)


def _random_case(n=24, size=32, h=4, seed=0):
    """SUV with many ties (rounded, zero background), CAMs in [0, 1] and a ground truth."""
    rng = np.random.default_rng(seed)
    suv = np.round(rng.gamma(1.5, 1.0, (n, size, size)), 1).astype(np.float32)
    suv[:, : size // 4] = 0
    cam = rng.random((n, h, h)).astype(np.float16).astype(np.float32)
    gt = suv + rng.normal(0, 0.5, suv.shape) > 2.5
    return cam, suv, gt


def test_algorithm1_hand_made_slice():
    cam = np.array([[[0.9, 0.1], [0.2, 0.5]]], dtype=np.float32)  # 0.5 is kept: step 2 is CAM >= t
    suv = np.zeros((1, 4, 4), dtype=np.float32)
    suv[0, :2, :2] = [[1, 2], [3, 4]]
    suv[0, 2:, 2:] = [[5, 6], [7, 8]]
    suv[0, :2, 2:] = 100  # hot but outside the region
    region = np.zeros((1, 4, 4), bool)
    region[0, :2, :2] = region[0, 2:, 2:] = True
    np.testing.assert_array_equal(sg.cam_region(cam, 0.5, 4), region)
    assert sg.region_percentile(suv, region, 50.0)[0] == 4.5  # 8 values 1..8, index 3.5 -> 4.5
    np.testing.assert_array_equal(sg.algorithm1(cam, suv, 0.5, 50.0), region & (suv >= 4.5))
    assert sg.algorithm1(cam, suv, 0.5, 50.0).sum() == 4
    # an absolute floor above the percentile (4.5) raises the cut to 6.5: SUV 7 and 8; below it changes nothing
    np.testing.assert_array_equal(sg.algorithm1(cam, suv, 0.5, 50.0, floor=6.5), region & (suv >= 6.5))
    np.testing.assert_array_equal(sg.algorithm1(cam, suv, 0.5, 50.0, floor=4.0), region & (suv >= 4.5))
    np.testing.assert_array_equal(sg.algorithm1(cam, suv, 0.5, 0.0), region)  # q = 0: the region's minimum
    assert sg.region_percentile(suv, sg.cam_region(cam, 0.51, 4), 31.0)[0] == pytest.approx(1.93)  # 1 + 0.93
    expected = np.zeros((1, 4, 4), bool)
    expected[0, :2, :2] = [[False, True], [True, True]]  # t above 0.5: only the top-left cell; SUV 2, 3, 4 >= 1.93
    np.testing.assert_array_equal(sg.algorithm1(cam, suv, 0.51, 31.0), expected)


def test_gate_and_empty_region_give_empty_masks():
    cam, suv, _ = _random_case(n=4)
    full = sg.algorithm1(cam, suv, 0.1, 30.0)
    assert full.any(axis=(1, 2)).all()
    gated = sg.algorithm1(cam, suv, 0.1, 30.0, tumorous=np.array([1, 0, 1, 0]))
    np.testing.assert_array_equal(gated[[0, 2]], full[[0, 2]])
    assert not gated[[1, 3]].any()
    assert not sg.algorithm1(cam, suv, 1.01, 30.0).any()
    assert np.isnan(sg.region_percentile(suv, np.zeros(suv.shape, bool), [20.0, 40.0])).all()
    with pytest.raises(ValueError, match="tumorous"):
        sg.algorithm1(cam, suv, 0.5, 30.0, tumorous=np.ones(3))


def test_nearest_upscaling_is_exact():
    cam = np.random.default_rng(1).random((3, 16, 16)).astype(np.float32)
    up = sg.upscale_nearest(cam, 128)
    i = np.arange(128)
    np.testing.assert_array_equal(up, cam[:, i[:, None] // 8, i[None, :] // 8])
    ref = torch.nn.functional.interpolate(torch.from_numpy(cam)[:, None], size=(128, 128), mode="nearest")[:, 0]
    np.testing.assert_array_equal(up, ref.numpy())
    with pytest.raises(ValueError, match="integer multiple"):
        sg.upscale_nearest(cam, 100)


def test_region_percentile_is_numpy_linear_bit_for_bit():
    cam, suv, _ = _random_case(n=30)
    q = np.concatenate([Q_GRID, [0.0, 99.9, 100.0]])
    for t in (0.2, 0.7, 0.97):
        region = sg.cam_region(cam, t, suv.shape[-1])
        got = sg.region_percentile(suv, region, q)
        ref = np.array([np.percentile(s[r], q) if r.any() else np.full(len(q), np.nan) for s, r in zip(suv, region)])
        np.testing.assert_array_equal(got, ref)
    with pytest.raises(ValueError, match="percentiles"):
        sg.region_percentile(suv, region, 120.0)


def test_histogram_centre_threshold_closed_form():
    rng = np.random.default_rng(2)
    suv = rng.lognormal(0, 1, (5, 16, 16))
    suv[4] = 3.0  # constant slice: numpy's histogram range is (v - 0.5, v + 0.5)
    p = np.array([0.0, 20.0, 31.5, 50.0, 100.0])

    def centres(x):
        edges = np.histogram(x, 20)[1]
        return (edges[:-1] + edges[1:]) / 2

    ref = np.array([np.percentile(centres(s), p) for s in suv])
    np.testing.assert_allclose(sg.histogram_centre_threshold(suv, p), ref, rtol=1e-12, atol=0)
    ref32 = np.array([np.percentile(centres(s), p) for s in suv.astype(np.float32)])
    np.testing.assert_allclose(sg.histogram_centre_threshold(suv.astype(np.float32), p), ref32, rtol=1e-6)
    lo, hi = suv[0].min(), suv[0].max()
    assert sg.histogram_centre_threshold(suv[:1], 20.0)[0] == pytest.approx(lo + (hi - lo) * 0.215, rel=1e-12)
    assert sg.histogram_centre_threshold(suv[:1], 50.0)[0] == pytest.approx((lo + hi) / 2, rel=1e-12)


def test_literal_voxel_reading_differs_on_a_skewed_slice():
    suv = np.zeros((1, 10, 10), np.float32)
    suv[0, :2, :2] = 10.0  # a hot 4-voxel spot, everything else 0
    assert sg.voxel_percentile_threshold(suv, 40.0)[0] == 0.0
    assert sg.global_threshold(suv, 40.0, "voxel").sum() == 100  # the literal reading keeps the whole slice
    assert sg.histogram_centre_threshold(suv, 40.0)[0] == pytest.approx(10 * (1 / 40 + 0.95 * 0.4))
    assert sg.global_threshold(suv, 40.0, "histogram").sum() == 4
    assert not sg.global_threshold(suv, 40.0, tumorous=np.array([False])).any()
    with pytest.raises(ValueError, match="semantics"):
        sg.global_threshold_value(suv, 40.0, "otsu")


def test_grid_counts_equal_masks_at_every_grid_point():
    cam, suv, gt = _random_case(n=20)
    inter, pred = sg.algorithm1_counts(cam, suv, gt, T_GRID, Q_GRID)
    assert inter.shape == pred.shape == (20, 10, 20)
    for j, t in enumerate(T_GRID):
        for k, q in enumerate(Q_GRID):
            m = sg.algorithm1(cam, suv, t, q)
            np.testing.assert_array_equal(pred[:, j, k], m.sum(axis=(1, 2)))
            np.testing.assert_array_equal(inter[:, j, k], (m & gt).sum(axis=(1, 2)))
    inter, pred = sg.algorithm1_counts(cam, suv, gt, T_GRID[::3], Q_GRID[::5], floor=2.0)
    for j, t in enumerate(T_GRID[::3]):
        for k, q in enumerate(Q_GRID[::5]):
            m = sg.algorithm1(cam, suv, t, q, floor=2.0)
            assert m.sum() < sg.algorithm1(cam, suv, t, q).sum()  # the floor (2.0) lies above some percentiles
            np.testing.assert_array_equal(pred[:, j, k], m.sum(axis=(1, 2)))
            np.testing.assert_array_equal(inter[:, j, k], (m & gt).sum(axis=(1, 2)))
    for semantics in sg.SEMANTICS:
        inter, pred = sg.global_threshold_counts(suv, gt, Q_GRID, semantics)
        for k, p in enumerate(Q_GRID):
            m = sg.global_threshold(suv, p, semantics)
            np.testing.assert_array_equal(pred[:, k], m.sum(axis=(1, 2)))
            np.testing.assert_array_equal(inter[:, k], (m & gt).sum(axis=(1, 2)))


def test_study_dice_equals_direct_3d_dice():
    cam, suv, gt = _random_case(n=18, seed=3)
    study = np.repeat(["A", "B", "C"], 6)
    extra = pd.Series({"A": 50, "B": 0, "C": 7, "D": 0, "E": 11})  # lesion voxels in slices not gated
    gt_total = pd.Series({s: int(gt[study == s].sum()) for s in "ABC"} | {"D": 0, "E": 0}) + extra
    inter, pred = sg.algorithm1_counts(cam, suv, gt, [0.4], [30.0])
    dice = sg.study_dice(inter, pred, study, gt_total)[:, 0, 0]
    masks = sg.algorithm1(cam, suv, 0.4, 30.0)
    for i, s in enumerate(gt_total.index):
        sel = study == s
        pred_vol = np.concatenate([masks[sel], np.zeros((1, 32, 32), bool)])
        truth_vol = np.concatenate([gt[sel], np.zeros((1, 32, 32), bool)])
        truth_vol[-1].flat[: extra[s]] = True
        assert dice[i] == pytest.approx(metrics.dice(pred_vol, truth_vol), abs=1e-15) or np.isnan(dice[i])
    assert np.isnan(dice[3]) and dice[4] == 0.0  # D: no lesion, undefined; E: lesions only in ungated slices
    with pytest.raises(ValueError, match="ground-truth total"):
        sg.study_dice(inter, pred, study, gt_total.drop("B"))


def _constructed_study(cam_a, suv_b):
    """One 8x8 slice, 2x2 CAM: lesion block A (CAM cam_a, SUV 5), B (CAM 0.6, SUV suv_b), C (CAM 0.3, SUV 1)."""
    cam = np.array([[cam_a, 0.6], [0.3, 0.0]], np.float32)
    suv = np.zeros((8, 8), np.float32)
    suv[:4, :4], suv[:4, 4:], suv[4:, :4] = 5, suv_b, 1
    gt = np.zeros((8, 8), bool)
    gt[:4, :4] = True
    return cam, suv, gt


def test_grid_search_finds_the_constructed_optimum_and_excludes_lesion_free_studies():
    parts = [_constructed_study(0.9, 4.0), _constructed_study(0.8, 4.5)]
    cam = np.stack([c for c, _, _ in parts] + [parts[0][0]])
    suv = np.stack([s for _, s, _ in parts] + [parts[0][1]])
    gt = np.stack([g for _, _, g in parts] + [np.zeros((8, 8), bool)])  # third study: no lesion, false positives
    study = ["P1", "P2", "N1"]
    gt_total = pd.Series({"N1": 0, "P1": 16, "P2": 16})
    tuned = sg.tune_algorithm1(cam, suv, gt, study, gt_total, [0.25, 0.5, 0.75], [20.0, 40.0])
    # t = 0.75 isolates A (Dice 1 for both q: ties go to the first grid point); t = 0.5 keeps A+B at q <= 40
    assert tuned.params == {"t": 0.75, "q": 20.0, "floor": 0.0} and tuned.dice == 1.0
    np.testing.assert_allclose(tuned.surface, [[0.5, 2 * 16 / 48], [2 * 16 / 48, 2 * 16 / 48], [1, 1]])
    assert tuned.studies == ("N1", "P1", "P2") and np.isnan(tuned.study_dice[0]).all()
    for j, t in enumerate([0.25, 0.5, 0.75]):  # brute force: 3D masks and metrics.dice
        for k, q in enumerate([20.0, 40.0]):
            m = sg.algorithm1(cam, suv, t, q)
            assert tuned.surface[j, k] == np.median([metrics.dice(m[i:i + 1], gt[i:i + 1]) for i in (0, 1)])
    with pytest.raises(ValueError, match="no study with lesions"):
        sg.tune(*sg.algorithm1_counts(cam[2:], suv[2:], gt[2:], [0.5], [30.0]), ["N1"], gt_total[["N1"]],
                {"t": [0.5], "q": [30.0]})


def test_floor_search_cuts_the_warm_block_and_keeps_the_first_floor_on_ties():
    parts = [_constructed_study(0.9, 4.0), _constructed_study(0.8, 4.5)]
    cam, suv, gt = (np.stack([p[i] for p in parts]) for i in range(3))
    study, gt_total = ["P1", "P2"], pd.Series({"P1": 16, "P2": 16})
    # t = 0.5: region A (SUV 5, lesion) + B (SUV 4 / 4.5); q = 20 keeps both, a floor of 4.8 keeps A alone
    tuned = sg.tune_algorithm1(cam, suv, gt, study, gt_total, [0.5], [20.0], floor_grid=[0.0, 4.8, 4.9, 6.0])
    assert tuned.params == {"t": 0.5, "q": 20.0, "floor": 4.8} and tuned.dice == 1.0
    assert tuned.by_floor == {0.0: pytest.approx(2 * 16 / 48), 4.8: 1.0, 4.9: 1.0, 6.0: 0.0}  # 6: nothing kept
    np.testing.assert_array_equal(sg.algorithm1(cam, suv, 0.5, 20.0, floor=4.8), gt)


def test_global_threshold_grid_search():
    suv = np.zeros((2, 8, 8), np.float32)
    suv[:, :2, :2], suv[:, 4:, 4:] = 10.0, 3.0  # lesion 10, a warm organ 3 (30 % of max)
    gt = suv == 10.0
    tuned = sg.tune_global_threshold(suv, gt, ["A", "B"], pd.Series({"A": 4, "B": 8}), [20.0, 40.0])
    assert tuned.params == {"p": 40.0}  # 40 -> 40.5 % of max: the organ drops out
    np.testing.assert_allclose(tuned.surface, [np.median([2 * 4 / 24, 2 * 4 / 28]), np.median([1.0, 2 * 4 / 12])])


def _write_store(root, studies):
    """A hand-made slice store: {study_id: (split, suv (z,S,S), mask (z,S,S))} -> index.csv and arrays."""
    rows = []
    for sid, (split, suv, mask) in studies.items():
        folder = root / sid
        folder.mkdir(parents=True)
        np.save(folder / "suv.npy", suv.astype(np.float32))
        np.save(folder / "ct.npy", np.zeros(suv.shape, np.int16))
        np.save(folder / "mask.npy", mask.astype(np.uint8))
        (folder / "meta.json").write_text(json.dumps({"shape": list(suv.shape), "spacing_mm": [6, 4, 4],
                                                      "affine": np.eye(4).tolist()}))
        vox = mask.reshape(len(mask), -1).sum(1)
        rows.append(pd.DataFrame({"study_id": sid, "slice": np.arange(len(suv)), "label": (vox > 0).astype(int),
                                  "lesion_voxels": vox, "lesion_area_mm2": vox * 16.0, "split": split,
                                  "diagnosis": "melanoma"}))
    pd.concat(rows).to_csv(root / "index.csv", index=False)


def test_load_gated_segment_save_and_load_round_trip(tmp_path):
    cam, suv, gt = _random_case(n=9, size=16, h=4, seed=4)
    _write_store(tmp_path / "store", {"V1": ("val", suv[:4], gt[:4]), "V2": ("val", suv[4:6], gt[4:6]),
                                      "T1": ("test", suv[6:], gt[6:]), "R1": ("train", suv[:2], gt[:2])})
    (tmp_path / "cams").mkdir()
    index = pd.DataFrame({"study_id": ["V1", "V1", "T1", "V1"], "slice": [3, 0, 2, 1],
                          "split": ["val", "val", "test", "val"], "label": 1, "prob": 0.9})
    index.to_csv(tmp_path / "cams" / "index.csv", index=False)
    np.save(tmp_path / "cams" / "cam.npy", cam[[3, 0, 8, 1]].astype(np.float16))
    data = sg.load_gated(tmp_path)
    assert list(data.studies.index) == ["T1", "V1", "V2"]
    np.testing.assert_array_equal(data.gt_total, [gt[6:].sum(), gt[:4].sum(), gt[4:6].sum()])
    np.testing.assert_array_equal(data.suv, suv[[3, 0, 8, 1]])
    val = data.select("val")
    assert list(val.studies.index) == ["V1", "V2"] and len(val.rows) == 3
    cams = sg.load_cams(tmp_path, "cam", data.rows)
    masks = sg.segment_studies(data, cams, 0.3, 31.0)
    assert set(masks) == {"T1", "V1", "V2"} and masks["V2"].shape == (2, 16, 16) and not masks["V2"].any()
    ref = sg.algorithm1(cam[[0, 1, 3]], suv[[0, 1, 3]], 0.3, 31.0)
    np.testing.assert_array_equal(masks["V1"][[0, 1, 3]], ref)
    assert not masks["V1"][2].any() and not masks["T1"][[0, 1]].any()
    sg.save_study_masks(tmp_path, "cam", masks)
    back = sg.load_study_masks(tmp_path, "cam")
    assert set(back) == set(masks) and all(np.array_equal(back[k], masks[k]) and back[k].dtype == bool for k in back)
    assert not list((tmp_path / "masks" / "cam").glob("*.tmp"))
    np.savez(tmp_path / "masks" / "cam" / "X1.npz", wrong=np.zeros(2))
    with pytest.raises(ValueError, match="X1.npz: missing field 'mask'"):
        sg.load_study_masks(tmp_path, "cam")
    with pytest.raises(FileNotFoundError, match="scorecam"):
        sg.load_study_masks(tmp_path, "scorecam")


def test_load_gated_rejects_a_slice_missing_from_the_store(tmp_path):
    _, suv, gt = _random_case(n=2, size=8, h=2)
    _write_store(tmp_path / "store", {"V1": ("val", suv, gt)})
    (tmp_path / "cams").mkdir()
    pd.DataFrame({"study_id": ["V1"], "slice": [5], "split": ["val"]}).to_csv(tmp_path / "cams" / "index.csv")
    with pytest.raises(ValueError, match="study V1 slice 5 is not in store/index.csv"):
        sg.load_gated(tmp_path)


def test_load_gated_rejects_an_index_that_disagrees_with_the_masks(tmp_path):
    _, suv, gt = _random_case(n=2, size=8, h=2)
    _write_store(tmp_path / "store", {"V1": ("val", suv, gt)})
    index = pd.read_csv(tmp_path / "store" / "index.csv")
    index.loc[1, "lesion_voxels"] += 1
    index.to_csv(tmp_path / "store" / "index.csv", index=False)
    (tmp_path / "cams").mkdir()
    pd.DataFrame({"study_id": ["V1"], "slice": [1], "split": ["val"]}).to_csv(tmp_path / "cams" / "index.csv")
    with pytest.raises(ValueError, match="lesion_voxels of study V1 slice 1"):
        sg.load_gated(tmp_path)
