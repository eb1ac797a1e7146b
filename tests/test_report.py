"""Run evaluation on a fabricated run directory, result tables, paper numbers, NIfTI export round-trip, figures."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import matplotlib
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

matplotlib.use("Agg")

from wsseg_nb import metrics, report  # noqa: E402
from wsseg_nb.plots import results as result_plots  # noqa: E402

SPACING = (6.0, 4.0, 4.0)
SHAPE = (8, 16, 16)
AFFINE = np.array([[-4.0, 0, 0, 120.0], [0, -4.0, 0, 80.0], [0, 0, 6.0, -500.0], [0, 0, 0, 1]])  # LPS-flipped x, y
Predict = Callable[[str, np.ndarray, int], np.ndarray]


def _shifted(method: str, truth: np.ndarray, i: int) -> np.ndarray:
    """unet = truth, threshold = empty, the CAM methods = truth shifted by 1..4 voxels along x."""
    if method == "unet":
        return truth
    if method == "threshold":
        return np.zeros_like(truth)
    return np.roll(truth, report.METHODS.index(method) + 1, axis=2)


def make_fake_run(root: Path, n_test: int = 6, predict: Predict = _shifted, seed: int = 0) -> Path:
    """A run directory with a slice store (test studies, the first lesion-free, plus one train study) and masks."""
    rng = np.random.default_rng(seed)
    store, rows = root / "store", []
    diagnoses = ["lung_cancer", "lymphoma", "melanoma"]
    studies = [(f"T{i:02d}", "test", "negative" if i == 0 else diagnoses[i % 3]) for i in range(n_test)]
    for sid, split, diagnosis in studies + [("R00", "train", "melanoma")]:
        i = int(sid[1:])
        suv = rng.gamma(2.0, 0.5, SHAPE).astype(np.float32)
        mask = np.zeros(SHAPE, np.uint8)
        if diagnosis != "negative":
            mask[2:2 + 1 + i % 3, 3:5 + i, 4:6 + i % 4] = 1
            mask[6, 12, 12 - i % 2] = 1  # a second, one-voxel lesion
            suv[mask > 0] += 3.0 + i
        folder = store / sid
        folder.mkdir(parents=True)
        np.save(folder / "suv.npy", suv)
        np.save(folder / "ct.npy", rng.integers(-1000, 1000, SHAPE).astype(np.int16))
        np.save(folder / "mask.npy", mask)
        (folder / "meta.json").write_text(json.dumps({"study_id": sid, "spacing_mm": list(SPACING),
                                                     "shape": list(SHAPE), "affine": AFFINE.tolist()}))
        voxels = mask.sum(axis=(1, 2))
        rows.append(pd.DataFrame({"study_id": sid, "slice": np.arange(SHAPE[0]), "label": (voxels > 0).astype(int),
                                  "lesion_voxels": voxels, "lesion_area_mm2": voxels * 16.0, "split": split,
                                  "diagnosis": diagnosis}))
        for method in report.METHODS:
            (root / "masks" / method).mkdir(parents=True, exist_ok=True)
            np.savez_compressed(root / "masks" / method / f"{sid}.npz", mask=predict(method, mask > 0, i))
    pd.concat(rows).to_csv(store / "index.csv", index=False)
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def per_study(run_dir: Path) -> pd.DataFrame:
    return report.evaluate_run(run_dir)


def test_evaluate_run_rows_and_values(run_dir: Path, per_study: pd.DataFrame) -> None:
    assert len(per_study) == 6 * len(report.METHODS)
    assert set(per_study["study_id"]) == {f"T{i:02d}" for i in range(6)}  # the train study is left out
    by = per_study.set_index(["study_id", "method"])
    assert by.loc[("T01", "unet"), "dice"] == 1.0 and by.loc[("T01", "threshold"), "dice"] == 0.0
    assert np.isnan(by.loc[("T00", "unet"), "dice"]) and by.loc[("T00", "cam"), "fp_volume_ml"] == 0.0
    assert by.loc[("T01", "unet"), "diagnosis"] == "lymphoma"
    truth = np.load(run_dir / "store" / "T02" / "mask.npy")
    suv = np.load(run_dir / "store" / "T02" / "suv.npy")
    assert by.loc[("T02", "unet"), "mtv_true_ml"] == pytest.approx(truth.sum() * 0.096)
    assert by.loc[("T02", "unet"), "tlg_true_g"] == pytest.approx(suv[truth > 0].sum() * 0.096, rel=1e-6)
    cam = np.load(run_dir / "masks" / "cam" / "T02.npz")["mask"]
    assert by.loc[("T02", "cam"), "dice"] == pytest.approx(metrics.dice(cam, truth))
    assert by.loc[("T02", "threshold"), "n_lesions"] == 2 and by.loc[("T02", "threshold"), "sensitivity"] == 0.0


def test_bad_mask_files_are_named(tmp_path: Path) -> None:
    run = make_fake_run(tmp_path, n_test=3)
    (run / "masks" / "gradcam" / "T01.npz").unlink()
    with pytest.raises(ValueError, match=r"study T01, method gradcam: mask file .*T01\.npz not found"):
        report.evaluate_run(run)
    np.savez(run / "masks" / "gradcam" / "T01.npz", mask=np.zeros((2, 16, 16), bool))
    with pytest.raises(ValueError, match=r"study T01, file .*field 'mask': shape \(2, 16, 16\)"):
        report.evaluate_run(run)
    np.savez(run / "masks" / "gradcam" / "T01.npz", seg=np.zeros(SHAPE, bool))
    with pytest.raises(ValueError, match="field 'mask' missing"):
        report.evaluate_run(run)
    with pytest.raises(ValueError, match="no studies in split 'val'"):
        report.evaluate_run(run, split="val")


def _table(dice: list[float], method: str = "a", n_lesions: int = 1, **cols: list[float]) -> pd.DataFrame:
    n = len(dice)
    base = {"study_id": [f"S{i}" for i in range(n)], "diagnosis": "lymphoma", "method": method, "dice": dice,
            "n_lesions": n_lesions, "n_detected": 1, "n_fp_lesions": 0, "fp_volume_ml": 0.0, "fn_volume_ml": 0.0}
    for col in ("mtv_true_ml", "mtv_pred_ml", "mtv_dev_ml", "mtv_absdev_ml", "tlg_true_g", "tlg_pred_g",
                "tlg_dev_g", "tlg_absdev_g"):
        base[col] = cols.get(col, np.arange(n, dtype=float))
    return pd.DataFrame(base)


def test_summary_medians_iqr_and_negatives() -> None:
    lesion = _table([0.2, 0.4, 0.6, 0.8], mtv_absdev_ml=[1.0, 2.0, 3.0, 100.0])
    negative = _table([np.nan], n_lesions=0).assign(study_id="N0", fp_volume_ml=7.0, n_fp_lesions=2, n_detected=0)
    s = report.summary_table(pd.concat([lesion, negative])).iloc[0]
    assert (s["n_studies"], s["n_lesion_studies"]) == (5, 4)
    assert s["dice_median"] == pytest.approx(0.5) and s["dice_iqr"] == pytest.approx(0.3)
    assert s["mtv_absdev_ml_median"] == pytest.approx(2.5) and s["mtv_absdev_ml_iqr"] == pytest.approx(27.25 - 1.75)
    assert s["negatives_fp_volume_ml_median"] == 7.0 and s["fp_lesions_per_study"] == pytest.approx(0.4)
    assert s["lesion_sensitivity"] == 1.0


def test_icc_table_uses_lesion_studies(per_study: pd.DataFrame) -> None:
    icc = report.icc_table(per_study).set_index("method")
    cam = per_study[(per_study["method"] == "cam") & (per_study["n_lesions"] > 0)]
    ref = metrics.icc_agreement(cam["tlg_true_g"], cam["tlg_pred_g"])
    assert icc.loc["cam", "n"] == 5 and icc.loc["cam", "tlg_icc"] == pytest.approx(ref["icc"])
    assert icc.loc["unet", "mtv_icc"] == pytest.approx(1.0)
    two = report.icc_table(_table([0.5, 0.6])).iloc[0]  # fewer than 3 studies: undefined, not an error
    assert two["n"] == 2 and np.isnan(two["mtv_icc"]) and np.isnan(two["tlg_ci_high"])


def test_wilcoxon_table_matches_scipy(per_study: pd.DataFrame) -> None:
    table = report.wilcoxon_table(per_study)
    assert len(table) == len(report.METHODS) * (len(report.METHODS) - 1) // 2  # every pair once
    row = table[(table["method_a"] == "unet") & (table["method_b"] == "gradcam")]
    assert row.empty  # pairs follow the paper order: (gradcam, unet)
    row = table[(table["method_a"] == "gradcam") & (table["method_b"] == "unet")].iloc[0]
    wide = per_study.pivot(index="study_id", columns="method", values="dice").dropna()
    assert row["n"] == 5 and row["pval"] == pytest.approx(stats.wilcoxon(wide["gradcam"], wide["unet"]).pvalue)
    assert (table["pval_holm"] >= table["pval"] - 1e-12).all() and (table["pval_holm"] <= 1).all()
    same = report.wilcoxon_table(pd.concat([_table([0.1, 0.5, 0.9]), _table([0.1, 0.5, 0.9], method="b")]))
    assert same.loc[0, "pval"] == 1.0 and not same.loc[0, "significant"]


def test_paper_numbers_are_consistent() -> None:
    p = report.PAPER
    assert list(p.index) == list(report.PAPER_METHODS) == list(report.METHODS[:6])
    assert tuple(p.loc["scorecam", ["dice_median", "dice_iqr"]]) == (0.47, 0.35)  # abstract: best weakly supervised
    assert tuple(p.loc["unet", ["dice_median", "dice_iqr"]]) == (0.72, 0.36)
    assert tuple(p.loc["threshold", ["dice_median", "dice_iqr"]]) == (0.29, 0.28)
    assert tuple(p.loc["gradcam", ["dice_median", "dice_iqr"]]) == (0.12, 0.21)
    assert p["dice_median"].idxmax() == "unet" and p["dice_median"].idxmin() == "gradcam"
    for q in ("mtv", "tlg"):
        assert ((p[f"{q}_ci_low"] <= p[f"{q}_icc"]) & (p[f"{q}_icc"] <= p[f"{q}_ci_high"])).all()
        assert p[f"{q}_icc"].idxmax() == "unet"
    assert p["mtv_absdev_median"].idxmin() == "unet" and p["tlg_absdev_median"].idxmax() == "threshold"
    cams = ["cam", "gradcam", "gradcampp", "scorecam"]
    assert tuple(p.loc[cams, "t"]) == (0.3, 0.2, 0.3, 0.4)
    assert tuple(p.loc[cams, "q"]) == (31, 35, 32, 31)


def test_comparison_tables_and_printing(run_dir: Path, per_study: pd.DataFrame, capsys) -> None:
    paths = report.write_tables(run_dir, per_study)
    assert sorted(paths) == ["comparison", "diagnosis", "icc", "per_study", "summary", "wilcoxon"]
    assert not list((run_dir / "results").glob(".*tmp"))
    comparison = pd.read_csv(paths["comparison"]).set_index("method")
    summary = pd.read_csv(paths["summary"]).set_index("method")
    assert comparison.loc["cam", "dice_median"] == pytest.approx(summary.loc["cam", "dice_median"])
    assert comparison.loc["cam", "paper_dice_median"] == 0.46 and np.isnan(comparison.loc["cam", "t"])
    text = report.results_table(comparison.reset_index())
    assert text.loc[3, "Dice paper"] == "0.47 (0.35)" and text.loc[5, "Method"] == "U-Net"
    assert text.loc[5, "Dice ours"] == "1.00 (0.00)" and text.loc[5, "ICC MTV ours"] == "1.00"
    report.print_results(run_dir)
    out = capsys.readouterr().out
    assert "0.72 (0.36)" in out and "over 5 test studies with lesions" in out
    diag = pd.read_csv(paths["diagnosis"])
    assert set(diag["diagnosis"]) == {"negative", "lung_cancer", "lymphoma", "melanoma"}
    assert np.isnan(diag.loc[diag["diagnosis"] == "negative", "dice_median"]).all()


def test_thresholds_join(tmp_path: Path) -> None:
    (tmp_path / "segment").mkdir()
    (tmp_path / "segment" / "thresholds.json").write_text(json.dumps(
        {"cam": {"t": 0.5, "q": 40.0, "floor": 2.5, "val_dice": 0.3}, "threshold": {"p": 30.0, "val_dice": 0.2}}))
    th = report.read_thresholds(tmp_path)
    assert th.loc["cam", "t"] == 0.5 and th.loc["cam", "floor"] == 2.5 and np.isnan(th.loc["threshold", "q"])
    assert report.read_thresholds(tmp_path / "nowhere").empty


def test_nifti_export_round_trips_world_coordinates(run_dir: Path) -> None:
    paths = report.export_nifti_masks(run_dir, methods=["cam"], split="test")
    assert len(paths) == 6 * 4  # truth, ct, suv, cam per study
    img = nib.load(run_dir / "results" / "nifti" / "cam" / "T03.nii.gz")
    ours = np.load(run_dir / "masks" / "cam" / "T03.npz")["mask"]
    world_nifti = nib.affines.apply_affine(img.affine, np.argwhere(np.asarray(img.dataobj) > 0))  # (i, j, k) = x, y, z
    world_store = nib.affines.apply_affine(AFFINE, np.argwhere(ours)[:, ::-1])  # (z, y, x) -> (x, y, z)
    assert len(world_store) == ours.sum() > 0
    np.testing.assert_allclose(np.sort(world_nifti, axis=0), np.sort(world_store, axis=0))
    ct = nib.load(run_dir / "results" / "nifti" / "ct" / "T03.nii.gz")
    stored_ct = np.load(run_dir / "store" / "T03" / "ct.npy")
    np.testing.assert_array_equal(np.asarray(ct.dataobj).transpose(2, 1, 0), stored_ct)
    np.testing.assert_allclose(ct.affine, AFFINE)


def test_figures_draw(per_study: pd.DataFrame) -> None:
    import matplotlib.pyplot as plt

    icc = report.icc_table(per_study)
    figs = [result_plots.dice_boxplot(per_study), result_plots.agreement_scatter(per_study, "mtv", icc),
            result_plots.agreement_scatter(per_study, "tlg"), result_plots.bland_altman_plot(per_study, "tlg"),
            result_plots.diagnosis_plot(per_study)]
    assert [len([a for a in f.axes if a.get_visible()]) for f in figs] == [1, *[len(report.METHODS)] * 3, 2]
    assert figs[1].axes[5].get_title() == "U-Net  ICC 1.00"
    for f in figs:
        plt.close(f)


def test_run_methods_follow_the_config() -> None:
    from wsseg_nb.config import get_config

    assert report.run_methods(get_config("demo")) == list(report.PAPER_METHODS)  # CAM -> U-Net is opt-in there
    assert report.run_methods(get_config("demo", cam_unet_epochs=12)) == list(report.METHODS)
    assert report.run_methods(get_config("paper")) == list(report.METHODS)
    assert report.run_methods(get_config("demo", cam_unet_epochs=0, cam_methods="scorecam,cam")) == [
        "cam", "scorecam", "threshold", "unet"]
