"""`python -m wsseg_nb segment`: one study through a tiny trained run equals the chain's mask, on the CT's own grid."""
from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from wsseg_nb import cam, infer, manifest, metrics, phantom, runs, segment, slices, train, volume
from wsseg_nb.__main__ import main
from wsseg_nb.config import get_config
from wsseg_nb.errors import InputError
from wsseg_nb.models import UNet
from wsseg_nb.suv import to_suv

T_GRID, Q_GRID = (0.1, 0.4), (50.0, 90.0)
COARSE = {"spacing_mm": (12.0, 8.0, 8.0), "slice_size": 64}
"""A coarser store grid than the demo's (6x4x4 mm, 128^2) keeps the test fast; the code path is the same."""


def _midpoint_gates(prob: np.ndarray, quantiles: tuple[float, ...]) -> list[float]:
    """Gates halfway between two distinct slice probabilities (no slice sits on a gate, in float32 or from CSV)."""
    values = np.unique(prob)
    picks = np.clip((np.asarray(quantiles) * len(values)).astype(int), 1, len(values) - 1)
    return [float((values[i - 1] + values[i]) / 2) for i in picks]


def _suv_classifier(config, store: slices.SliceStore) -> torch.nn.Module:
    """A VGG16-CAM that passes the SUV channel through (Dirac convs + a little noise): maps follow the uptake.

    Its bias puts the median slice at p = 0.5, so the gate calls the hotter half of the slices: a classifier that
    means something without training, so that the masks compared below are not degenerate.
    """
    torch.manual_seed(0)
    model = train.classifier_model(config).eval()
    with torch.no_grad():
        for conv in (m for m in model.features if isinstance(m, torch.nn.Conv2d)):
            conv.weight.mul_(0.02).add_(torch.nn.init.dirac_(torch.empty_like(conv.weight)))
        model.fc.weight.mul_(0.02)[0, 0] = 1.0
        model.fc.bias.zero_()
        logits = train.predict_logits(model, store, np.arange(len(store.index)), 64, torch.device("cpu"))
        model.fc.bias.fill_(-float(logits.median()))
    return model


UNET_P = 0.6
"""The U-Net checkpoint's operating threshold (notebook 05 tunes it on validation)."""


def _unet(config, store: slices.SliceStore) -> UNet:
    """An untrained U-Net (seed 1) whose output bias makes its top 2 % of pixels p >= UNET_P."""
    torch.manual_seed(1)
    model = train.unet_model(config).eval()
    with torch.no_grad():
        logits = train.predict_logits(model, store, np.arange(len(store.index)), 64, torch.device("cpu"))
        model.out.bias.sub_(float(torch.quantile(logits[::4].flatten().float(), 0.98)) - math.log(UNET_P / (1 - UNET_P)))
    return model


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A run of one synthetic lung-cancer study (the val split) through the chain's own functions (notebooks 01-05).

    No training: a hand-set classifier (`_suv_classifier`) and an untrained U-Net with a fixed seed.
    """
    root = tmp_path_factory.mktemp("infer")
    row = next(r for r in manifest.synthetic_cohort().to_dict("records") if r["diagnosis"] == "lung_cancer")
    paths = phantom.generate_study(row, root / "data" / row["study_id"])
    row.update({k: str(v) for k, v in paths.items()}, split="val")
    run_dir = root / "run"
    config = get_config("demo", device="cpu", **COARSE)
    slices.preprocess_cohort(pd.DataFrame([row]), run_dir / "store", config.spacing_mm, config.slice_size, workers=1)
    runs.record_provenance(run_dir, config)
    run = runs.Run(config, run_dir, torch.device("cpu"))
    store = slices.SliceStore(run.store)
    model = _suv_classifier(config, store)
    (run_dir / "classifier").mkdir()
    torch.save({"model": model.state_dict(), "metrics": {"val_cam_shift_y": 1.5, "val_cam_shift_x": -2.0}},
               run_dir / "classifier" / "best.pt")  # a displacement notebook 02 measured: the maps move back by it
    for folder in ("unet", "cam_unet"):  # the same net stands in for the CAM -> U-Net (gated: cam_unet_gated)
        torch.save({"model": _unet(config, store).state_dict(), "metrics": {"val_threshold": UNET_P}},
                   run.path(folder, "best.pt"))  # the operating threshold notebook 05 tuned on validation
    # notebook 02: predictions; 03: maps of the gated slices; 04: gate and (t, q) tuned, masks
    train.write_classifier_predictions(run, train.load_classifier(run))
    predictions = pd.read_csv(run_dir / "classifier" / "predictions.csv", dtype={"study_id": str})
    gates = _midpoint_gates(predictions["prob"].to_numpy(), (0.3, 0.6))
    methods = ("cam", "gradcampp")
    rows = cam.gated_rows(predictions, store.index, min(gates), tumor_slices=True)
    assert train.cam_shift(run) == (1.5, -2.0)
    maps = cam.cams_for_slices(model, store, rows["position"].to_numpy(), methods, config.cam_batch, "cpu",
                               config.scorecam_topk, train.cam_shift(run))
    cam.save_cams(run.path("cams"), rows[["study_id", "slice", "split", "label", "prob"]], maps)
    data = segment.load_gated(run_dir, ("val", "test"))
    cams = {m: segment.load_cams(run_dir, m, data.rows) for m in methods}
    gate, tuned, _ = segment.tune_with_gate(cams, data.select("val"), T_GRID, Q_GRID, gates, (0.0, 1.0, 2.0))
    segment.write_thresholds(run_dir, gate, tuned)
    keep = (data.rows["prob"] >= gate).to_numpy()
    masks = {m: segment.segment_studies(data.at_gate(gate), cams[m][keep], **tuned[m].params)[row["study_id"]]
             for m in methods}
    train.predict_unet_masks(train.load_unet(run), store, run_dir, ("val",), config.cam_batch, "cpu",
                             train.unet_threshold(run_dir / "unet" / "best.pt"))
    masks["unet"] = segment.load_study_masks(run_dir, "unet")[row["study_id"]]
    train.predict_unet_masks(train.load_unet(run, folder="cam_unet"), store, run_dir, ("val",), config.cam_batch,
                             "cpu", UNET_P, method="cam_unet", called=data.at_gate(gate).rows)
    masks["cam-unet"] = segment.load_study_masks(run_dir, "cam_unet")[row["study_id"]]
    files = infer.study_files(row["ct_path"], row["pet_path"], weight_kg=row["weight_kg"],
                              activity_mbq=row["injected_activity_mbq"], delay_s=row["injection_to_scan_s"])
    return {"run_dir": run_dir, "row": row, "files": files, "store": store, "masks": masks, "gate": gate,
            "called": data.at_gate(gate).rows["slice"].to_numpy(),
            "tuned": tuned, "root": root}


@pytest.fixture(scope="module")
def segmented(chain: dict, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple]:
    """segment_study of the chain's study by method, each run once: (mask, affine, record, mask path)."""
    done: dict[str, tuple] = {}

    def run(method: str) -> tuple:
        if method not in done:
            out = tmp_path_factory.mktemp(method) / "mask.nii.gz"
            done[method] = (*infer.segment_study(chain["run_dir"], chain["files"], method, out,
                                                 out.with_name("r.json")), out)
        return done[method]
    return run


@pytest.mark.parametrize("method", ["cam", "gradcampp", "unet", "cam-unet"])
def test_mask_on_ct_grid_equals_the_chain(chain: dict, segmented: Callable[[str], tuple], method: str) -> None:
    mask, affine, record, out = segmented(method)
    ct = nib.load(chain["row"]["ct_path"])
    written = nib.load(str(out))
    assert written.shape == ct.shape and np.array_equal(written.affine, ct.affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj).transpose(2, 1, 0), mask)
    study = chain["store"].study(chain["row"]["study_id"])
    grid = chain["store"].volume_grid(chain["row"]["study_id"])
    back = volume.resample(mask, affine, grid["shape"], grid["affine"], order=0).astype(bool)
    # the store pads the CT in-plane; a mask voxel in that padding has no place on the CT's own grid
    fov = volume.resample(np.ones(ct.shape[::-1], bool), affine, grid["shape"], grid["affine"], order=0).astype(bool)
    chain_mask, truth = chain["masks"][method] & fov, np.asarray(study.mask, dtype=bool)
    assert chain_mask.sum() > 100  # the comparison is about a real mask, not two empty ones
    np.testing.assert_array_equal(back, chain_mask)
    assert metrics.dice(back, truth) == pytest.approx(metrics.dice(chain_mask, truth), abs=1e-6)
    if method in ("cam", "gradcampp"):
        assert metrics.dice(chain_mask, truth) > 0.01
        assert ((record["gate"], record["t"], record["q"], record["floor"])
                == (chain["gate"], *chain["tuned"][method].params.values()))
    if method != "unet":  # behind the classifier's gate: only the slices it calls can hold mask
        assert record["gate"] == chain["gate"] and 0 < record["slices_called"] < record["slices"] == grid["shape"][0]
    if method == "cam-unet":  # the same net as the U-Net: its mask on the called slices, nothing elsewhere
        called = np.zeros(grid["shape"][0], bool)
        called[chain["called"]] = True
        gated, full = chain["masks"]["cam-unet"], chain["masks"]["unet"]
        assert not gated[~called].any() and 0 < gated.sum() < full.sum()
        assert (gated[called] != full[called]).mean() < 1e-3  # batches of other sizes may round a pixel otherwise


def test_report_numbers_are_those_of_the_written_mask(chain: dict, segmented: Callable[[str], tuple]) -> None:
    mask, affine, _, out = segmented("cam")
    report = out.with_name("r.json")
    record = json.loads(report.read_text())
    voxel_ml = np.prod(phantom.CT_SPACING_MM) / 1000.0  # 3 x 2 x 2 mm = 0.012 ml
    assert record["mtv_ml"] == pytest.approx(np.count_nonzero(mask) * voxel_ml, rel=1e-12)
    pet, pet_affine = volume.load_nifti(chain["row"]["pet_path"])
    factor = to_suv(np.ones((1, 1, 1), np.float32), "BQML", chain["row"]["weight_kg"],
                          chain["row"]["injected_activity_mbq"], chain["row"]["injection_to_scan_s"])[0, 0, 0]
    suv_ct = volume.resample(pet * factor, pet_affine, mask.shape, affine, order=1)[mask > 0]
    assert record["tlg_g"] == pytest.approx(suv_ct.sum(dtype=np.float64) * voxel_ml, rel=1e-5)
    assert record["suv_max"] == pytest.approx(suv_ct.max(), rel=1e-5)
    assert record["suv_mean"] == pytest.approx(suv_ct.mean(dtype=np.float64), rel=1e-5)
    labels, n = metrics.components(mask)
    assert record["n_lesions"] == n == len(record["lesions"]) > 0
    lesions = pd.read_csv(report.with_suffix(".csv"))
    assert list(lesions.columns) == infer.LESION_COLUMNS and len(lesions) == n
    np.testing.assert_array_equal(lesions["voxels"], np.bincount(labels.ravel())[1:])
    assert lesions["volume_ml"].sum() == pytest.approx(record["mtv_ml"], rel=1e-9)
    assert lesions["suvmax"].max() == pytest.approx(record["suv_max"], rel=1e-6)
    assert sorted(p.name for p in out.parent.iterdir()) == ["mask.nii.gz", "r.csv", "r.json"]  # no temp files


def test_lesions_are_18_connected() -> None:
    mask = np.zeros((4, 4, 4), bool)
    mask[1, 1, 1] = mask[2, 2, 1] = True  # they share an edge: one lesion
    mask[3, 3, 3] = True                  # two voxels from (2, 2, 1) along x: a lesion of its own
    suv = np.arange(64, dtype=np.float32).reshape(4, 4, 4)
    table = infer.lesion_table(mask, suv, (3.0, 2.0, 2.0))
    assert table["voxels"].tolist() == [2, 1]
    assert table["suvmax"].tolist() == [suv[2, 2, 1], suv[3, 3, 3]]
    assert table["suvmean"].tolist() == [(suv[1, 1, 1] + suv[2, 2, 1]) / 2, suv[3, 3, 3]]
    corner = np.zeros((2, 2, 2), bool)
    corner[0, 0, 0] = corner[1, 1, 1] = True  # a corner alone does not connect
    assert len(infer.lesion_table(corner, np.ones((2, 2, 2), np.float32), (1.0, 1.0, 1.0))) == 2


def test_prepare_equals_the_slice_store(chain: dict) -> None:
    ct, ct_affine, suv, pet_affine = infer.load_study(chain["files"])
    config = infer.run_config(chain["run_dir"])
    prepared = infer.prepare(ct, ct_affine, suv, pet_affine, config.spacing_mm, config.slice_size)
    study = chain["store"].study(chain["row"]["study_id"])
    np.testing.assert_array_equal(prepared.x[:, 0], study.suv)
    np.testing.assert_array_equal(prepared.x[:, 1], study.ct)
    np.testing.assert_array_equal(prepared.affine, np.asarray(study.meta["affine"]))


def test_run_recorded_before_the_z_context_scores_slices_alone(chain: dict, tmp_path: Path) -> None:
    record = json.loads((chain["run_dir"] / "run.json").read_text())
    assert record["config"]["cls_z_sigma_mm"] == 9.0  # the demo's, as the chain recorded it
    del record["config"]["cls_z_sigma_mm"]
    (tmp_path / "run.json").write_text(json.dumps(record))
    assert infer.run_config(tmp_path).cls_z_sigma_mm == 0.0  # its gate was tuned on single-slice scores


def test_cli_writes_mask_report_and_csv(chain: dict, segmented: Callable[[str], tuple], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    row, out = chain["row"], tmp_path / "out" / "mask.nii.gz"
    argv = ["segment", "--run-dir", str(chain["run_dir"]), "--ct", row["ct_path"], "--pet", row["pet_path"],
            "--weight", str(row["weight_kg"]), "--activity", str(row["injected_activity_mbq"]),
            "--delay", str(row["injection_to_scan_s"]), "--method", "cam", "--out", str(out),
            "--report", str(tmp_path / "out" / "r.json")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "segment:" in captured.err and f"wrote {out}" in captured.out
    assert sorted(p.name for p in out.parent.iterdir()) == ["mask.nii.gz", "r.csv", "r.json"]
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj).transpose(2, 1, 0), segmented("cam")[0])
    assert json.loads((out.parent / "r.json").read_text())["mtv_ml"] == segmented("cam")[2]["mtv_ml"]


def test_autopet_folder_prefers_ctres_and_suv(chain: dict, tmp_path: Path) -> None:
    folder = tmp_path / "PETCT_x" / "study"
    folder.mkdir(parents=True)
    shutil.copy(chain["row"]["ct_path"], folder / "CT.nii.gz")
    shutil.copy(chain["row"]["pet_path"], folder / "PET.nii.gz")
    assert infer.autopet_files(folder) == (folder / "CT.nii.gz", folder / "PET.nii.gz", False)
    shutil.copy(chain["row"]["ct_path"], folder / "CTres.nii.gz")
    shutil.copy(chain["row"]["pet_path"], folder / "SUV.nii.gz")
    assert infer.autopet_files(folder) == (folder / "CTres.nii.gz", folder / "SUV.nii.gz", True)
    (folder / "CTres.nii.gz").unlink()
    (folder / "CT.nii.gz").unlink()
    with pytest.raises(InputError, match="no CTres.nii.gz or CT.nii.gz"):
        infer.autopet_files(folder)


def _partial_run(chain: dict, tmp_path: Path, *keep: str) -> Path:
    """A copy of the run directory with only some artifacts."""
    run_dir = tmp_path / "partial"
    for name in keep:
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(chain["run_dir"] / name, run_dir / name)
    return run_dir


@pytest.mark.parametrize("keep, method, expected", [
    ((), "cam", "file run.json not found; it is written by any notebook's setup"),
    (("run.json",), "cam", "file segment/thresholds.json not found; it is written by notebook 04"),
    (("run.json", "segment/thresholds.json"), "cam", "file classifier/best.pt not found; it is written by notebook 02"),
    (("run.json",), "unet", "file unet/best.pt not found; it is written by notebook 05"),
    (("run.json", "segment/thresholds.json"), "scorecam", "no field 'scorecam' with t and q (tuned methods: "
                                                          "['cam', 'gradcampp'])"),
    (("run.json",), "cam-unet", "method cam-unet needs a U-Net trained on CAM pseudo-labels"),
    (("run.json",), "camm", "--method 'camm': expected one of"),
])
def test_missing_run_artifacts_are_named(chain: dict, tmp_path: Path, keep: tuple[str, ...], method: str,
                                         expected: str) -> None:
    run_dir = _partial_run(chain, tmp_path, *keep)
    run_dir.mkdir(exist_ok=True)
    out = tmp_path / "mask.nii.gz"
    with pytest.raises(InputError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        infer.segment_study(run_dir, chain["files"], method, out)
    assert not out.exists()


def test_cam_unet_needs_the_gate_unless_ungated(chain: dict, segmented: Callable[[str], tuple],
                                                tmp_path: Path) -> None:
    run_dir = _partial_run(chain, tmp_path, "run.json", "unet/best.pt")
    (run_dir / "cam_unet").mkdir()
    shutil.copy(run_dir / "unet" / "best.pt", run_dir / "cam_unet" / "best.pt")
    with pytest.raises(InputError, match="file segment/thresholds.json not found; it is written by notebook 04"):
        infer.segment_study(run_dir, chain["files"], "cam-unet")  # cam_unet_gated: the gate comes from notebook 04
    record = json.loads((run_dir / "run.json").read_text())
    record["config"]["cam_unet_gated"] = False
    (run_dir / "run.json").write_text(json.dumps(record))
    mask = infer.segment_study(run_dir, chain["files"], "cam-unet")[0]  # ungated: the same net is the U-Net
    np.testing.assert_array_equal(mask, segmented("unet")[0])


@pytest.mark.parametrize("kwargs, expected", [
    ({}, "needs --weight KG, --activity MBQ and --delay S (missing --weight, --activity, --delay)"),
    ({"weight_kg": 70.0, "activity_mbq": 300.0}, "(missing --delay)"),
    ({"weight_kg": 70000.0, "activity_mbq": 300.0, "delay_s": 3600.0}, "--weight 70000.0 (weight_kg) is implausible"),
    ({"weight_kg": 70.0, "activity_mbq": 300.0, "delay_s": 60.0}, "--delay 60.0 (injection_to_scan_s) is implausible"),
    ({"suv": True, "weight_kg": 70.0}, "is taken as SUV (--suv, or an autoPET SUV.nii.gz); do not also give --weight"),
])
def test_bad_pet_units_are_refused_by_field(kwargs: dict, expected: str) -> None:
    with pytest.raises(InputError) as err:
        infer.study_files("CT.nii.gz", "PET.nii.gz", **kwargs)
    assert expected in str(err.value) and "PET.nii.gz" in str(err.value)


def test_cli_bad_inputs_exit_2_and_write_nothing(chain: dict, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    row, out = chain["row"], tmp_path / "mask.nii.gz"
    base = ["segment", "--run-dir", str(chain["run_dir"]), "--suv", "--method", "cam"]
    cases = [
        (["--ct", str(tmp_path / "nope.nii.gz"), "--pet", row["pet_path"], "--out", str(out)],
         "field --ct, file " + str(tmp_path / "nope.nii.gz") + ": file not found"),
        (["--ct", row["ct_path"], "--pet", row["pet_path"], "--out", str(tmp_path / "mask.npy")],
         "expected a NIfTI file name"),
        (["--ct", row["ct_path"], "--out", str(out)], "segment needs --ct CT.nii.gz and --pet PET.nii.gz"),
        (["--study", str(tmp_path), "--ct", row["ct_path"], "--out", str(out)], "either --study DIR or --ct"),
        (["--study", str(tmp_path / "none"), "--out", str(out)], "not a folder"),
    ]
    for extra, expected in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_study_checks_of_preprocessing_apply(chain: dict, tmp_path: Path) -> None:
    row, out = chain["row"], tmp_path / "mask.nii.gz"
    bq_as_suv = infer.study_files(row["ct_path"], row["pet_path"], suv=True)
    with pytest.raises(InputError, match=r"field --pet, .*PET.nii.gz: pet_units SUV: 99th percentile of SUV in the "
                                         r"body is .* \(values in Bq/ml labelled SUV\?"):
        infer.segment_study(chain["run_dir"], bq_as_suv, "cam", out)
    pet, pet_affine = volume.load_nifti(row["pet_path"])
    pet_affine[2, 3] += 0.6 * pet.shape[0] * pet_affine[2, 2]  # the PET slid 60 % of its length along z
    volume.save_nifti(pet, pet_affine, tmp_path / "PET.nii.gz")
    shifted = infer.study_files(row["ct_path"], tmp_path / "PET.nii.gz", weight_kg=row["weight_kg"],
                                activity_mbq=row["injected_activity_mbq"], delay_s=row["injection_to_scan_s"])
    with pytest.raises(InputError, match=r"field --pet, .*: the PET covers \d+\.\d% of the CT's body"):
        infer.segment_study(chain["run_dir"], shifted, "cam", out)
    assert not out.exists()
