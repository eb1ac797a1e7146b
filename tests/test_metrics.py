"""Dice, MTV, TLG, autoPET FP/FN volumes, lesion detection and ICC against hand-computed values."""
import numpy as np
import pytest
from scipy import stats

from wsseg_nb import metrics

SPACING = (3.0, 2.0, 2.0)  # (z, y, x) mm: 12 mm^3 = 0.012 ml per voxel, as the paper's grid
ML = 0.012


def _vol(*points, shape=(4, 5, 6)):
    """A bool volume with the given (z, y, x) voxels set."""
    v = np.zeros(shape, bool)
    for p in points:
        v[p] = True
    return v


def test_voxel_volume_anisotropic_and_bad_spacing():
    assert metrics.voxel_volume_ml(SPACING) == pytest.approx(ML)
    assert metrics.voxel_volume_ml((6, 4, 4)) == pytest.approx(0.096)
    for bad in [(3, 2), (3, 0, 2), (3, -2, 2)]:
        with pytest.raises(ValueError, match="spacing_mm"):
            metrics.voxel_volume_ml(bad)


def test_dice_hand_computed():
    truth = np.zeros((3, 4, 4), bool)
    truth[1, :2, :3] = True  # 6 voxels
    pred = np.zeros_like(truth)
    pred[1, 1, :3] = True  # 3 inside the truth
    pred[2, 3, 3] = True  # 1 outside
    assert metrics.dice(pred, truth) == pytest.approx(2 * 3 / (4 + 6))
    assert metrics.dice(truth, truth) == 1.0
    assert metrics.dice(np.zeros_like(truth), truth) == 0.0
    assert np.isnan(metrics.dice(pred, np.zeros_like(truth)))  # no lesion: undefined
    with pytest.raises(ValueError, match="shape"):
        metrics.dice(pred[:2], truth)


def test_mtv_and_tlg_anisotropic():
    suv = np.zeros((4, 5, 6), np.float32)
    mask = _vol((0, 0, 0), (1, 2, 3), (3, 4, 5))
    suv[mask] = [2.0, 4.0, 6.0]
    suv[2, 2, 2] = 100.0  # outside the mask: must not count
    assert metrics.mtv_ml(mask, SPACING) == pytest.approx(3 * ML)
    assert metrics.tlg_g(suv, mask, SPACING) == pytest.approx(4.0 * 3 * ML)  # SUVmean 4 x MTV
    assert metrics.mtv_ml(mask, (6, 4, 4)) == pytest.approx(3 * 0.096)
    assert metrics.tlg_g(suv, np.zeros_like(mask), SPACING) == 0.0
    with pytest.raises(ValueError, match="shape"):
        metrics.tlg_g(suv[:3], mask, SPACING)


def test_edge_contact_is_one_component_corner_contact_is_two():
    edge = _vol((1, 1, 1), (1, 2, 2))  # differ in two coordinates: share an edge
    corner = _vol((1, 1, 1), (2, 2, 2))  # differ in all three: share only a corner
    face = _vol((1, 1, 1), (1, 1, 2))
    assert metrics.components(edge)[1] == 1
    assert metrics.components(face)[1] == 1
    assert metrics.components(corner)[1] == 2
    truth = _vol((1, 1, 1))
    assert metrics.lesion_metrics(edge, truth, SPACING)["fp_volume_ml"] == 0.0
    m = metrics.lesion_metrics(corner, truth, SPACING)
    assert m["fp_volume_ml"] == pytest.approx(ML)
    assert (m["n_pred_components"], m["n_fp_lesions"]) == (2, 1)


def test_fp_fn_volumes_and_detection():
    truth = np.zeros((6, 8, 8), bool)
    truth[0:2, 0:2, 0:2] = True  # lesion A: 8 voxels, hit by one voxel
    truth[4:6, 5:8, 5:8] = True  # lesion B: 18 voxels, missed
    pred = np.zeros_like(truth)
    pred[1, 1, 1:4] = True  # 3 voxels touching A (2 overlap, 1 beyond): a true positive component
    pred[3, 0:2, 6] = True  # 2 voxels, no overlap: false positive
    pred[5, 0, 0] = True  # 1 voxel, no overlap: false positive
    m = metrics.lesion_metrics(pred, truth, SPACING)
    assert m["fp_volume_ml"] == pytest.approx(3 * ML)
    assert m["fn_volume_ml"] == pytest.approx(18 * ML)
    assert (m["n_lesions"], m["n_detected"], m["n_fp_lesions"], m["n_pred_components"]) == (2, 1, 2, 3)
    assert m["sensitivity"] == 0.5


def test_empty_truth_and_empty_prediction():
    shape = (3, 4, 4)
    blob = _vol((1, 1, 1), (1, 1, 2), shape=shape)
    empty = np.zeros(shape, bool)
    no_lesion = metrics.lesion_metrics(blob, empty, SPACING)
    assert no_lesion["fp_volume_ml"] == pytest.approx(2 * ML) and no_lesion["fn_volume_ml"] == 0.0
    assert np.isnan(no_lesion["sensitivity"]) and no_lesion["n_lesions"] == 0
    missed = metrics.lesion_metrics(empty, blob, SPACING)
    assert missed["fn_volume_ml"] == pytest.approx(2 * ML) and missed["fp_volume_ml"] == 0.0
    assert missed["sensitivity"] == 0.0
    both = metrics.lesion_metrics(empty, empty, SPACING)
    assert both["fp_volume_ml"] == both["fn_volume_ml"] == 0.0


def test_per_study_metrics_rows():
    suv = np.full((3, 4, 4), 2.0, np.float32)
    truth = _vol((1, 1, 1), (1, 1, 2), shape=suv.shape)
    double = truth | _vol((1, 2, 1), (1, 2, 2), shape=suv.shape)
    preds = {"perfect": truth, "empty": np.zeros_like(truth), "double": double}
    df = metrics.per_study_metrics("S1", suv, truth.astype(np.uint8), preds, SPACING).set_index("method")
    assert list(df.index) == ["perfect", "empty", "double"] and set(df["study_id"]) == {"S1"}
    assert df.loc["perfect", "dice"] == 1.0 and df.loc["empty", "dice"] == 0.0
    assert df.loc["double", "dice"] == pytest.approx(2 * 2 / 6)
    assert df.loc["double", "mtv_dev_ml"] == pytest.approx(2 * ML)
    assert df.loc["empty", "mtv_dev_ml"] == pytest.approx(-2 * ML)
    assert df.loc["empty", "mtv_absdev_ml"] == pytest.approx(2 * ML)
    assert df.loc["double", "tlg_dev_g"] == pytest.approx(2.0 * 2 * ML)
    assert df.loc["empty", "fn_volume_ml"] == pytest.approx(2 * ML)
    with pytest.raises(ValueError, match="study S1, method bad"):
        metrics.per_study_metrics("S1", suv, truth, {"bad": truth[:2]}, SPACING)


def test_median_iqr_ignores_nan():
    assert metrics.median_iqr([1, 2, 3, 4, 100, np.nan]) == (3.0, 2.0)
    assert metrics.median_iqr([0.0, 1.0]) == (0.5, 0.5)
    assert all(np.isnan(metrics.median_iqr([np.nan])))


def _icc21_anova(table: np.ndarray) -> tuple[float, float]:
    """ICC(2,1) and its F-test p-value from a two-way ANOVA of an n x k table (targets x raters)."""
    n, k = table.shape
    grand = table.mean()
    ss_rows = k * ((table.mean(1) - grand) ** 2).sum()
    ss_cols = n * ((table.mean(0) - grand) ** 2).sum()
    ss_err = ((table - grand) ** 2).sum() - ss_rows - ss_cols
    msr, msc, mse = ss_rows / (n - 1), ss_cols / (k - 1), ss_err / ((n - 1) * (k - 1))
    icc = (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)
    return icc, stats.f.sf(msr / mse, n - 1, (n - 1) * (k - 1))


def test_icc_constant_bias_is_penalised_by_agreement():
    # truth 1..5, pred = truth + 1: MSR = 5, MSC = 2.5, MSE = 0 -> ICC(2,1) = 5 / (5 + 2 * 2.5 / 5) = 5/6
    assert metrics.icc_agreement([1, 2, 3, 4, 5], [2, 3, 4, 5, 6])["icc"] == pytest.approx(5 / 6)


def test_icc_matches_hand_anova():
    truth = np.array([10.0, 25.0, 3.0, 60.0, 41.0, 7.0, 18.0])
    pred = np.array([14.0, 20.0, 9.0, 48.0, 45.0, 5.0, 30.0])
    icc, p = _icc21_anova(np.column_stack([truth, pred]))
    r = metrics.icc_agreement(truth, pred)
    assert r["icc"] == pytest.approx(icc, rel=1e-12)
    assert r["pval"] == pytest.approx(p, rel=1e-9)
    assert r["ci_low"] < r["icc"] < r["ci_high"] and r["n"] == 7
    assert r["ci_low"] != round(r["ci_low"], 2)  # full precision, not pingouin's 2-decimal display
    with_nan = metrics.icc_agreement(np.append(truth, np.nan), np.append(pred, 1.0))
    assert with_nan["icc"] == pytest.approx(icc, rel=1e-12)
    with pytest.raises(ValueError, match="at least 3"):
        metrics.icc_agreement([1.0, 2.0], [1.0, 2.0])


def test_bland_altman():
    r = metrics.bland_altman([1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 5.0, 5.0])  # differences 1, 0, 2, 1
    assert r["bias"] == pytest.approx(1.0)
    assert r["sd"] == pytest.approx(np.sqrt(2 / 3))
    assert r["loa_high"] - r["loa_low"] == pytest.approx(2 * 1.96 * np.sqrt(2 / 3))
