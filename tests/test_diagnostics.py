"""Stage diagnostics: pointing game, lesion cells, shortcut score, gate statistics, near negatives, gate tuning."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from wsseg_nb import diagnostics, phantom, segment, train


def test_lesion_cells_and_pointing_by_hand():
    masks = np.zeros((2, 8, 8), np.uint8)
    masks[0, 5, 6] = 1          # cell (2, 3) of a 4x4 map
    masks[1, 0:2, 0:2] = 1      # cell (0, 0)
    cells = diagnostics.lesion_cells(masks, 4)
    assert cells.sum() == 2 and cells[0, 2, 3] and cells[1, 0, 0]
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0, 2, 3] = 1.0         # peak on the lesion
    maps[1, 3, 3] = 1.0         # peak elsewhere
    assert diagnostics.peak_in_lesion(maps, masks).tolist() == [True, False]
    suv = np.where(masks > 0, np.array([5.0, 2.0])[:, None, None], 0.5)
    assert diagnostics.lesion_suvmax(suv, masks).tolist() == [5.0, 2.0]
    assert diagnostics.pointing([True, False], [5.0, 2.0]) == {"pointing": 0.5, "pointing_visible": 1.0}
    # positives 1.0 and 0; negatives 29 zeros and one 1.0: AUC = ((29 + 0.5) + (29 * 0.5)) / 60
    assert diagnostics.cell_auc(maps, masks) == pytest.approx(44 / 60)
    with pytest.raises(ValueError, match="multiple"):
        diagnostics.lesion_cells(masks, 3)


def test_level_auc_is_one_when_the_level_decides():
    rows = []
    for split in ("train", "val"):
        for s in range(3):
            for z in range(20):
                rows.append({"study_id": f"{split}{s}", "slice": z, "split": split, "label": int(8 <= z < 12)})
    index = pd.DataFrame(rows)
    assert diagnostics.level_auc(index, "val", bins=20) == 1.0
    shuffled = index.assign(label=index["label"].sample(frac=1.0, random_state=0).to_numpy())
    assert diagnostics.level_auc(shuffled, "val", bins=20) < 0.8


def test_gate_stats_by_hand():
    got = diagnostics.gate_stats([1, 1, 0, 0, 0], [0.9, 0.4, 0.8, 0.6, 0.1], 0.7)
    assert got == {"gate_threshold": 0.7, "slices_called": 2, "gate_precision": 0.5, "gate_recall": 0.5}


def test_near_negatives_and_sampler_mix():
    index = pd.DataFrame({"study_id": ["a"] * 10 + ["b"] * 10, "slice": list(range(10)) * 2,
                          "label": [0, 0, 0, 1, 0, 0, 0, 0, 0, 0] + [0] * 10, "split": "train"})

    class Store:
        pass

    class Data:
        store, positions = Store(), np.arange(20)

    Data.store.index = index
    near = train.near_negatives(Data, distance=2)
    assert near.tolist() == [1, 2, 4, 5]  # study b has no tumor slice: none of its slices is near
    import torch
    sampler = train.BalancedSampler(index["label"].to_numpy(), torch.Generator().manual_seed(0), near, 1.0)
    drawn = list(sampler)
    assert len(drawn) == 2 and 3 in drawn and set(drawn) - {3} <= {1, 2, 4, 5}
    with pytest.raises(ValueError, match="pool_fraction"):
        train.BalancedSampler(index["label"].to_numpy(), torch.Generator(), near, 1.5)


def test_level_matched_weights_by_hand():
    # two studies of 10 slices, levels 0, 1/9, ..., 1; two bins: slices 0-4 and 5-9; tumor slices a1, a2, a7
    index = pd.DataFrame({"study_id": ["a"] * 10 + ["b"] * 10, "slice": list(range(10)) * 2,
                          "label": [0, 1, 1, 0, 0, 0, 0, 1, 0, 0] + [0] * 10, "split": "train"})

    class Store:
        pass

    class Data:
        store, positions = Store(), np.arange(20)

    Data.store.index = index
    w = train.level_matched_weights(Data, bins=2, uniform_share=0.25)
    tumor = index["label"].to_numpy() > 0
    low = (index["slice"] < 5).to_numpy()
    assert (w[tumor] == 0).all() and w.sum() == pytest.approx(1.0)
    # tumor share per bin 2/3, 1/3 over 8 and 9 tumor-free slices, mixed 3:1 with 1/17 each
    assert w[~tumor & low] == pytest.approx(0.75 * (2 / 3) / 8 + 0.25 / 17)
    assert w[~tumor & ~low] == pytest.approx(0.75 * (1 / 3) / 9 + 0.25 / 17)
    import torch
    only = np.where(np.arange(20) == 4, 1.0, 0.0)  # all the weight on one tumor-free slice
    drawn = list(train.BalancedSampler(index["label"].to_numpy(), torch.Generator().manual_seed(0), weights=only))
    assert sorted(drawn) == [1, 2, 4, 4, 4, 7]  # drawn with replacement, as many as there are tumor slices
    with pytest.raises(ValueError, match="positive sum"):
        train.BalancedSampler(index["label"].to_numpy(), torch.Generator(), weights=np.where(tumor, 1.0, 0.0))


def test_uptake_scale_by_hand():
    background, excess, noise = np.array([1.0, 2.0]), np.array([1.0, 0.5]), np.zeros(2)
    # measured(k) = max(1 + k, 2 + 0.5 k) = 5 at k = 4
    assert phantom._uptake_scale(background, excess, noise, 2.0, 5.0) == pytest.approx(4.0, abs=1e-6)
    assert phantom._uptake_scale(background, excess, noise, 2.0, 1.5) == 1.0  # surroundings already brighter


def _false_slice_case(false_spot_suv: float) -> tuple[dict[str, np.ndarray], segment.GatedSlices]:
    """One study: a lesion slice (SUV 5, p 0.95), a tumor-free slice (p 0.2) and a false call (p 0.6) whose CAM
    region holds a 2x2 spot of `false_spot_suv` among SUV 1."""
    size = 8
    suv = np.ones((3, size, size), np.float32)
    gt = np.zeros((3, size, size), bool)
    gt[0, 2:4, 2:4] = True
    suv[0, 2:4, 2:4] = 5.0
    suv[2, 5:7, 5:7] = false_spot_suv
    cams = np.zeros((3, 4, 4), np.float32)
    cams[0, 1, 1] = 1.0
    cams[2, 2:4, 2:4] = 1.0
    rows = pd.DataFrame({"study_id": ["s"] * 3, "slice": [0, 1, 2], "split": "val", "label": [1, 0, 0],
                         "prob": [0.95, 0.2, 0.6]})
    data = segment.GatedSlices(None, rows, suv, gt, pd.DataFrame({"split": ["val"], "lesion_voxels": [4]},
                                                                 index=pd.Index(["s"], name="study_id")))
    return {"cam": cams}, data


def test_tune_with_gate_drops_a_false_slice():
    cams, data = _false_slice_case(5.0)          # a hot spot on a tumor-free slice of the same study
    gate, tuned, table = segment.tune_with_gate(cams, data, [0.5], [50.0], [0.5, 0.9])
    assert gate == 0.9 and tuned["cam"].dice == 1.0
    assert table.loc[0.5, "cam"] == pytest.approx(2 * 4 / (4 + 4 + 16))


def test_tune_with_gate_floor_removes_warm_tissue_of_a_false_slice():
    cams, data = _false_slice_case(2.0)          # warm tissue (SUV 2) in the region of a false call
    # q = 50 of the false region (4 x SUV 2, 12 x SUV 1) is 1: all 16 voxels kept without a floor, none at 3
    gate, tuned, table = segment.tune_with_gate(cams, data, [0.5], [50.0], [0.5, 0.9], [0.0, 3.0])
    assert gate == 0.5 and tuned["cam"].params["floor"] == 3.0 and tuned["cam"].dice == 1.0  # ties: first gate
    assert tuned["cam"].by_floor == {0.0: pytest.approx(2 * 4 / (4 + 4 + 16)), 3.0: 1.0}
    assert table.loc[0.5, "cam"] == table.loc[0.9, "cam"] == 1.0


def test_write_merges_records_atomically(tmp_path):
    diagnostics.write(tmp_path, val_auc=np.float32(0.5), slices_called=np.int64(3))
    record = diagnostics.write(tmp_path, val_auc=0.75, gate_threshold=0.9)
    assert record == {"val_auc": 0.75, "slices_called": 3.0, "gate_threshold": 0.9}
    assert sorted(p.name for p in (tmp_path / "classifier").iterdir()) == ["diagnostics.json"]


def test_map_correlation_hand_cases() -> None:
    a = np.array([[[0.0, 1.0], [2.0, 3.0]], [[1.0, 1.0], [1.0, 1.0]]])
    b = np.array([[[3.0, 5.0], [7.0, 9.0]], [[0.0, 1.0], [0.0, 1.0]]])
    r = diagnostics.map_correlation(a, b)
    assert r[0] == pytest.approx(1.0) and np.isnan(r[1])  # an affine copy; a constant map has no correlation
    assert diagnostics.map_correlation(a[:1], -a[:1])[0] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        diagnostics.map_correlation(a, b[:1])


def test_compare_maps_gradcam_is_relu_cam_under_gap_fc_and_skips_cam_elsewhere() -> None:
    from wsseg_nb.models import VGG16CAM

    torch.manual_seed(0)
    x = torch.rand(4, 2, 32, 32) * torch.tensor([6.0, 800.0])[None, :, None, None]
    masks = np.zeros((4, 32, 32), bool)
    masks[:, 8:16, 8:16] = True
    nets = {"gap_fc": VGG16CAM(1 / 16).eval(), "authors": VGG16CAM(1 / 16, head="authors").eval()}
    table = diagnostics.compare_maps(nets, x, masks, ["cam", "gradcam", "gradcampp"])
    assert table[["classifier", "method"]].values.tolist() == [
        ["gap_fc", "cam"], ["gap_fc", "gradcam"], ["gap_fc", "gradcampp"], ["authors", "gradcam"], ["authors", "gradcampp"]]
    assert table["r_gradcam"].iloc[[1, 3]].tolist() == pytest.approx([1.0, 1.0])  # each map with itself
    assert table["pointing"].between(0, 1).all()


def test_peak_cell_means_reads_the_inputs_under_the_maps_maximum():
    x = np.zeros((2, 2, 8, 8), np.float32)
    x[:, 1] = -1000.0                          # air everywhere
    x[0, 0, 4:8, 0:4] = np.arange(16).reshape(4, 4)  # SUV 0..15 in cell (1, 0) of a 2x2 map: mean 7.5
    x[0, 1, 4:8, 0:4] = 40.0                   # soft tissue there
    maps = np.zeros((2, 2, 2), np.float32)
    maps[0, 1, 0] = 1.0
    maps[1, 0, 1] = 1.0                        # peak on an air cell
    assert diagnostics.peak_cell_means(maps, x).tolist() == [[7.5, 40.0], [0.0, -1000.0]]
    with pytest.raises(ValueError, match="multiple"):
        diagnostics.peak_cell_means(np.zeros((1, 3, 3)), np.zeros((1, 2, 8, 8)))


def test_peak_offset_by_hand():
    masks = np.zeros((3, 8, 8), np.uint8)
    masks[0, 0:2, 0:2] = 1  # lesion in cell (0, 0) of a 4x4 map of 2-pixel cells
    masks[1, 6:8, 2:4] = 1  # cell (3, 1)
    maps = np.zeros((3, 4, 4), np.float32)
    maps[0, 1, 2] = 1.0  # peak one row down, two columns right of the lesion cell
    maps[1, 3, 1] = 1.0  # on it
    maps[2, 0, 0] = 1.0  # no lesion in slice 2
    got = diagnostics.peak_offset(maps, masks)
    assert got[:2].tolist() == [[1, 2], [0, 0]] and got[2, 0] >= 10 ** 6
    assert (diagnostics.peak_in_lesion(maps, masks)[:2] == (np.abs(got[:2]).max(1) == 0)).all()


def test_oracle_threshold_mask_by_hand():
    suv = np.array([0, 1, 5, 10, 4, 0, 20, 0, 0.5, 2, 1, 0], np.float32).reshape(1, 1, 12)
    truth = np.zeros(suv.shape, np.uint8)
    truth[..., 2:5] = 1         # lesion A, SUVmax 10
    truth[..., 9] = 1           # lesion B, SUVmax 2; the SUV 20 at voxel 6 lies outside both margins
    def kept(fraction, margin):
        return np.flatnonzero(diagnostics.oracle_threshold_mask(suv, truth, fraction, margin)).tolist()
    assert kept(0.4, 1) == [2, 3, 4, 9, 10]      # A: SUV >= 4 within 1..5; B: SUV >= 0.8 within 8..10
    assert kept(0.5, 1) == [2, 3, 9, 10]         # A: >= 5; B: >= 1
    assert kept(0.4, 0) == [2, 3, 4, 9]          # no margin: the truth itself, all above 40% of its peak
    assert kept(0.4, 2) == [3, 6]                # margin 2 merges A, voxel 6 and B into one region of peak 20
    with pytest.raises(ValueError, match="fraction"):
        diagnostics.oracle_threshold_mask(suv, truth, 0.0)


def test_oracle_threshold_dice_is_one_on_the_truth(tiny_store):
    from wsseg_nb import slices

    store = slices.SliceStore(tiny_store)
    table = diagnostics.oracle_threshold_dice(store, "train", [1e-6, 0.4], margin=0)
    assert table["study_id"].tolist() == ["S0", "S1"] and (table["truth_ml"] > 0).all()
    assert np.allclose(table[1e-6], 1.0)         # every lesion voxel has positive SUV: the whole truth is kept
    assert ((table[0.4] > 0) & (table[0.4] <= 1)).all()


def test_oracle_floor_dice_by_hand():
    from types import SimpleNamespace

    suv = np.zeros((3, 1, 6), np.float32)
    mask = np.zeros(suv.shape, np.uint8)
    suv[0, 0, :3] = [5, 5, 4]    # slice 0: two lesion voxels and, beside them, physiology at SUV 4
    mask[0, 0, :2] = 1
    suv[1, 0, 0] = 6             # slice 1: tumor-free, one hot physiological voxel
    studies = {"A": SimpleNamespace(suv=suv, mask=mask), "B": SimpleNamespace(suv=suv, mask=np.zeros_like(mask))}
    store = SimpleNamespace(index=pd.DataFrame({"study_id": ["A", "B", "C"], "split": ["val", "val", "train"],
                                                "diagnosis": ["lymphoma", "negative", "lymphoma"]}),
                            study=studies.__getitem__)
    table = diagnostics.oracle_floor_dice(store, "val", [3.0, 4.5]).set_index("floor")
    assert table["study_id"].tolist() == ["A", "A"]               # B has no lesion, C is another split
    assert np.allclose(table["oracle_gate"], [2 * 2 / (3 + 2), 1.0])  # floor 3 keeps the SUV 4 beside the lesion
    assert np.allclose(table["no_gate"], [2 * 2 / (4 + 2), 2 * 2 / (3 + 2)])  # and the tumor-free slice's SUV 6


def test_study_bootstrap_auc_resamples_whole_studies() -> None:
    # study A alone: AUC 1; B alone: 0; A + B: positives 0.9, 0.4 against negatives 0.1, 0.5 -> 3 of 4 pairs
    pred = pd.DataFrame({"study_id": ["A", "A", "B", "B", "C"], "split": ["val"] * 4 + ["test"],
                         "label": [0, 1, 0, 1, 1], "prob": [0.1, 0.9, 0.5, 0.4, 0.0]})
    # draws AA, AB, BA, BB: AUC 1, 0.75, 0.75, 0 with probability 1/4, 1/2, 1/4
    assert diagnostics.study_bootstrap_auc(pred, "val", level=0.95, draws=4000) == (0.0, 1.0)
    assert diagnostics.study_bootstrap_auc(pred, "val", level=0.3, draws=4000) == (0.75, 0.75)
    squashed = pred.assign(prob=pred["prob"] ** 3)  # ranks unchanged, so every draw's AUC too
    assert diagnostics.study_bootstrap_auc(squashed, "val", level=0.3) == \
        diagnostics.study_bootstrap_auc(pred, "val", level=0.3)
    with pytest.raises(ValueError, match="split 'test' has 1 studies"):
        diagnostics.study_bootstrap_auc(pred, "test")
    for label in (0, 1):
        with pytest.raises(ValueError, match="only one class"):
            diagnostics.study_bootstrap_auc(pred.assign(label=label), "val")
    with pytest.raises(ValueError, match="level must lie in"):
        diagnostics.study_bootstrap_auc(pred, "val", level=95)
    # one class per study: of the 27 draws of 3, the 9 without N or without P and Q are skipped; of the other 18,
    # 6 hold P but not Q (AUC 1), 6 Q but not P (0) and 6 both (0.5): the middle fifth of them is 0.5
    single = pd.DataFrame({"study_id": ["N", "P", "Q"], "split": "val", "label": [0, 1, 1], "prob": [0.5, 0.9, 0.1]})
    assert diagnostics.study_bootstrap_auc(single, "val", level=0.2, draws=4000) == (0.5, 0.5)


def test_auc_by_lesion_area_scores_each_bin_against_every_negative() -> None:
    pred = pd.DataFrame({"study_id": ["A"] * 6 + ["B"], "slice": [0, 1, 2, 3, 4, 5, 0],
                         "split": ["val"] * 6 + ["test"], "label": [0, 0, 0, 1, 1, 1, 1],
                         "prob": [0.1, 0.2, 0.3, 0.15, 0.25, 0.9, 0.0]})
    index = pd.DataFrame({"study_id": ["A"] * 6 + ["B"], "slice": [0, 1, 2, 3, 4, 5, 0],
                          "lesion_area_mm2": [0.0, 0.0, 0.0, 10.0, 100.0, 1000.0, 5.0]})
    table = diagnostics.auc_by_lesion_area(pred, index, "val")
    assert table["tumor slices"].tolist() == [1, 1, 0, 1]  # the test slice is left out
    # p 0.15 beats 1 of 3 negatives, 0.25 beats 2, 0.9 all 3; from 80 mm² on: (2 + 3) / 6
    assert table["AUC"].iloc[[0, 1, 3]].tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert np.isnan(table["AUC"].iloc[2]) and table["AUC from here"].iloc[1] == pytest.approx(5 / 6)
    assert table["AUC from here"].iloc[0] == pytest.approx(6 / 9)
    with pytest.raises(ValueError, match="study A slice 5"):
        diagnostics.auc_by_lesion_area(pred, index.iloc[[0, 1, 2, 3, 4, 6]], "val")
