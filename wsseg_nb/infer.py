"""One study in, a mask out: a trained run's preprocessing, gate, maps and Algorithm 1 on a new PET/CT (CLI `segment`).

Every step calls the function the notebook chain calls (train.predict_logits for the gate and the U-Net,
cam.cams_for_slices for the maps, segment.algorithm1), on the same grid (the run's spacing_mm and slice_size), so
the mask of a study equals the chain's mask of it; it is then written on the CT's own grid and affine.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import metrics, volume
from .config import Config, get_config
from .errors import InputError
from .manifest import PLAUSIBLE
from .suv import check_body_suv, to_suv

if TYPE_CHECKING:
    from .runs import Run

CAM_METHODS = ("scorecam", "cam", "gradcampp", "gradcam")
UNET_DIRS = {"unet": "unet", "cam-unet": "cam_unet"}
"""U-Net methods and the run folder of their best.pt (cam-unet: a U-Net trained on CAM pseudo-labels, issue 14)."""
METHODS = CAM_METHODS + tuple(UNET_DIRS)
WRITTEN_BY = {"run.json": "any notebook's setup (runs.start; notebook 01 first)",
              "classifier/best.pt": "notebook 02", "segment/thresholds.json": "notebook 04",
              "unet/best.pt": "notebook 05"}
"""Run artifacts this command reads and the notebook that writes each."""
LESION_COLUMNS = ["lesion", "voxels", "volume_ml", "suvmax", "suvmean"]


@dataclass(frozen=True)
class StudyFiles:
    """One study to segment: CT and PET files, the PET's units and, for Bq/ml, what SUV needs."""

    ct: Path
    pet: Path
    pet_units: str
    weight_kg: float | None = None
    activity_mbq: float | None = None
    delay_s: float | None = None

    @property
    def study_id(self) -> str:
        """The name used in messages and the report: the folder holding the CT."""
        return self.ct.parent.name or str(self.ct)


def study_files(ct: str | os.PathLike[str], pet: str | os.PathLike[str], suv: bool = False,
                weight_kg: float | None = None, activity_mbq: float | None = None,
                delay_s: float | None = None) -> StudyFiles:
    """The inputs checked: a PET in SUV (`suv`) or in Bq/ml with weight, activity and delay in plausible ranges."""
    given = {"weight": weight_kg, "activity": activity_mbq, "delay": delay_s}
    if suv:
        extra = [k for k, v in given.items() if v is not None]
        if extra:
            raise InputError(f"PET {pet}: is taken as SUV (--suv, or an autoPET SUV.nii.gz); do not also give "
                             f"{', '.join('--' + k for k in extra)}")
        return StudyFiles(Path(ct), Path(pet), "SUV")
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise InputError(f"PET {pet}: SUV from Bq/ml needs --weight KG, --activity MBQ and --delay S (missing "
                         f"{', '.join('--' + k for k in missing)}), or --suv if the PET is already in SUV")
    for (flag, value), (field, (low, high, unit)) in zip(given.items(), PLAUSIBLE.items()):
        if not (np.isfinite(value) and low <= value <= high):
            raise InputError(f"PET {pet}: --{flag} {value!r} ({field}) is implausible: expected {low:g}..{high:g} "
                             f"({unit})")
    return StudyFiles(Path(ct), Path(pet), "BQML", weight_kg, activity_mbq, delay_s)


def autopet_files(folder: str | os.PathLike[str]) -> tuple[Path, Path, bool]:
    """CT and PET of an autoPET study folder, chosen as the manifest scanner does: CTres over CT, SUV over PET.

    Returns (ct, pet, pet_is_suv); CTres.nii.gz is the CT on the PET's grid (the grid of autoPET's SEG).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--study {folder}: not a folder (expected an autoPET study folder with CT.nii.gz or "
                         "CTres.nii.gz and SUV.nii.gz or PET.nii.gz)")
    ct = next((folder / n for n in ("CTres.nii.gz", "CT.nii.gz") if (folder / n).is_file()), None)
    pet = next((folder / n for n in ("SUV.nii.gz", "PET.nii.gz") if (folder / n).is_file()), None)
    for name, path in (("CTres.nii.gz or CT.nii.gz", ct), ("SUV.nii.gz or PET.nii.gz", pet)):
        if path is None:
            raise InputError(f"--study {folder}: no {name} in the folder")
    return ct, pet, pet.name == "SUV.nii.gz"


@contextlib.contextmanager
def as_input_error(prefix: str = "") -> Iterator[None]:
    """Re-raise a ValueError or FileNotFoundError of the package's readers as an InputError (the CLI's exit 2)."""
    try:
        yield
    except InputError:
        raise
    except (ValueError, FileNotFoundError) as err:
        raise InputError(f"{prefix}{err}") from err


def require_artifact(run_dir: Path, name: str) -> Path:
    """A run artifact's path; missing: an InputError naming the file and the notebook that writes it."""
    path = run_dir / name
    if not path.is_file():
        raise InputError(f"run directory {run_dir}: file {name} not found; it is written by {WRITTEN_BY[name]}")
    return path


def run_config(run_dir: Path) -> Config:
    """The run's resolved configuration, read back from run.json (what training and tuning used)."""
    path = require_artifact(run_dir, "run.json")
    try:
        record = json.loads(path.read_text())["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise InputError(f"{path}: no readable field 'config' ({type(err).__name__}: {err})") from None
    record.setdefault("cls_z_sigma_mm", 0.0)  # recorded before the option existed: each slice was scored alone
    with as_input_error(f"{path}: "):
        return get_config(record.pop("profile", "demo"), **record)


def open_run(run_dir: Path, device: str | None = None, config: Config | None = None) -> Run:
    """A trained run directory as a Run: its run.json configuration and a device (given, or the config's)."""
    from .runs import Run, pick_device

    config = config or run_config(run_dir)
    try:
        return Run(config=config, dir=run_dir, device=pick_device(device or config.device))
    except RuntimeError as err:
        raise InputError(f"--device {device or config.device}: {err}") from None


def method_params(run_dir: Path, method: str) -> dict[str, float]:
    """Gate, t, q and SUV floor of a CAM method from segment/thresholds.json (notebook 04), as InputErrors."""
    from .segment import read_gate, read_method_params

    require_artifact(run_dir, "segment/thresholds.json")
    with as_input_error():
        return {"gate": read_gate(run_dir), **read_method_params(run_dir, method)}


def unet_checkpoint(run_dir: Path, method: str) -> Path:
    """best.pt of a U-Net method; cam-unet without its checkpoint is refused with what it needs."""
    path = run_dir / UNET_DIRS[method] / "best.pt"
    if method == "cam-unet" and not path.is_file():
        raise InputError(f"method cam-unet needs a U-Net trained on CAM pseudo-labels ({path}), which run "
                         f"{run_dir} does not have (notebook 05 section 4, opt-in in the demo: -p cam_unet_epochs=48); use "
                         "--method unet or a CAM method")
    return require_artifact(run_dir, f"{UNET_DIRS[method]}/best.pt")


@dataclass(frozen=True)
class Prepared:
    """A study on the run's store grid: x (z, 2, S, S) raw [SUV, HU] as the slice store holds them, and its affine."""

    x: np.ndarray
    affine: np.ndarray

    def read(self, positions: np.ndarray) -> tuple[np.ndarray, None]:
        """Slices at positions (the SliceStore.read interface that predict_logits and cams_for_slices use)."""
        return self.x[np.asarray(positions, dtype=np.int64)], None


def prepare(ct: np.ndarray, ct_affine: np.ndarray, suv: np.ndarray, pet_affine: np.ndarray,
            spacing_mm: tuple[float, float, float], slice_size: int) -> Prepared:
    """The slices of the store grid as slices.preprocess_study makes them (`slices.store_grid`), stacked [SUV, HU]."""
    from .slices import store_grid

    ct_store, affine, put = store_grid(ct, ct_affine, spacing_mm, slice_size)
    x = np.empty((len(ct_store), 2, slice_size, slice_size), dtype=np.float32)
    x[:, 0] = put(suv, pet_affine, 1)
    x[:, 1] = ct_store
    return Prepared(x, affine)


def load_study(files: StudyFiles) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CT (HU, checked for air) and PET as SUV with their affines; unreadable files are InputErrors naming them."""
    sid = files.study_id
    with as_input_error():
        ct, ct_affine = volume.load_nifti(files.ct, sid, "--ct")
        volume.require_hu(ct, volume.where(files.ct, sid, "--ct"))
        pet, pet_affine = volume.load_nifti(files.pet, sid, "--pet")
        suv = to_suv(pet, files.pet_units, files.weight_kg, files.activity_mbq, files.delay_s, sid)
    return ct, ct_affine, suv, pet_affine


def check_prepared(prepared: Prepared, pet_shape: tuple[int, ...], pet_affine: np.ndarray, files: StudyFiles) -> None:
    """The store grid's checks of preprocessing: some body, the PET covering it, a plausible SUV in it (notebook 01)."""
    body = prepared.x[:, 1] > volume.BODY_HU
    with as_input_error():
        volume.require_body(body, volume.where(files.ct, files.study_id, "--ct"))
        at_pet = volume.where(files.pet, files.study_id, "--pet")
        volume.require_coverage(body, prepared.affine, pet_shape, pet_affine, at_pet)
        check_body_suv(prepared.x[:, 0][body], files.pet_units, at_pet)


def _log(message: str) -> None:
    """One progress line on stderr."""
    print(f"segment: {message}", file=sys.stderr, flush=True)


def store_mask(run: Any, prepared: Prepared, method: str, params: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """The method's bool (z, S, S) mask on the store grid, as the chain computes it (notebooks 02-05), and its settings.

    params: the gate, t, q and floor of a CAM method (`method_params`) or the checkpoint of a U-Net (`unet_checkpoint`).
    """
    import torch
    from scipy.special import expit

    from . import cam, train
    from .segment import algorithm1

    c, positions = run.config, np.arange(len(prepared.x))
    mask = np.zeros((len(prepared.x), *prepared.x.shape[-2:]), dtype=bool)
    called = positions
    if "gate" in params:  # a CAM method, or the CAM -> U-Net behind the gate: Algorithm 1, line 1
        with as_input_error():
            classifier = train.load_classifier(run)
        logits = train.predict_logits(classifier, prepared, positions, c.cam_batch, run.device, desc="classifier")
        scores = train.z_context(logits.numpy(), np.zeros(len(positions)), positions, train.z_sigma(c))
        prob = expit(scores)
        called = np.flatnonzero(prob >= params["gate"])
    if method in UNET_DIRS:
        with as_input_error():
            model = train._load(train.unet_model(c), params["checkpoint"], run.device)
            threshold = train.unet_threshold(params["checkpoint"])
        record = {**params, "threshold_p": threshold, "checkpoint": str(params["checkpoint"])}
        if len(called):
            logits = train.predict_logits(model, prepared, called, c.cam_batch, run.device, desc="U-Net")
            cut = float(torch.logit(torch.tensor(threshold, dtype=torch.float64)))
            mask[called] = (logits[:, 0] >= cut).numpy()
        return mask, {**record, "slices_called": int(len(called)), "slices": int(len(prepared.x))}
    if len(called):
        maps = cam.cams_for_slices(classifier, prepared, called, [method], batch_size=c.cam_batch, device=run.device,
                                   topk=c.scorecam_topk, shift=train.cam_shift(run),
                                   scorecam_weights=c.scorecam_weights)[method]  # float16, as nb 03
        mask[called] = algorithm1(maps.astype(np.float32), prepared.x[called, 0], params["t"], params["q"],
                                  floor=params["floor"])
    return mask, {**params, "slices_called": int(len(called)), "slices": int(len(prepared.x))}


def method_inputs(run_dir: Path, method: str) -> dict[str, Any]:
    """What a method needs from the run, checked before the study is read: gate, t, q or a U-Net checkpoint."""
    if method not in METHODS:
        raise InputError(f"--method {method!r}: expected one of {list(METHODS)}")
    if method in UNET_DIRS:
        params = {"checkpoint": unet_checkpoint(run_dir, method)}
        if method == "cam-unet" and run_config(run_dir).cam_unet_gated:
            from .segment import read_gate

            require_artifact(run_dir, "segment/thresholds.json")
            require_artifact(run_dir, "classifier/best.pt")
            with as_input_error():
                params["gate"] = read_gate(run_dir)
        return params
    params = method_params(run_dir, method)
    require_artifact(run_dir, "classifier/best.pt")
    return params


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing (z, y, x) in mm of a 4x4 affine."""
    return tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0)[::-1])


def bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The smallest (z, y, x) box holding every True voxel (an empty box for an empty mask)."""
    spans = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    return tuple(slice(int(s[0]), int(s[-1]) + 1) if s.size else slice(0, 0) for s in spans)


def lesion_table(mask: np.ndarray, suv: np.ndarray, spacing_mm: tuple[float, float, float]) -> pd.DataFrame:
    """One row per 18-connected lesion: voxels, volume (ml), SUVmax and SUVmean (metrics.components)."""
    labels, n = metrics.components(mask)
    lab, val = labels[mask], suv[mask].astype(np.float64)
    voxels = np.bincount(lab, minlength=n + 1)[1:]
    order = np.argsort(lab, kind="stable")
    suvmax = np.maximum.reduceat(val[order], np.cumsum(voxels) - voxels) if n else np.zeros(0)
    return pd.DataFrame({"lesion": np.arange(1, n + 1), "voxels": voxels,
                         "volume_ml": voxels * metrics.voxel_volume_ml(spacing_mm), "suvmax": suvmax,
                         "suvmean": np.bincount(lab, weights=val, minlength=n + 1)[1:] / np.maximum(voxels, 1)},
                        columns=LESION_COLUMNS)


def study_report(mask: np.ndarray, suv: np.ndarray, spacing_mm: tuple[float, float, float]) -> dict[str, Any]:
    """MTV (ml), TLG (g), SUVmax and SUVmean in the mask, and the lesions, of a mask with its SUV on one grid."""
    lesions = lesion_table(mask, suv, spacing_mm)
    inside = suv[mask]
    return {"mtv_ml": metrics.mtv_ml(mask, spacing_mm), "tlg_g": metrics.tlg_g(suv, mask, spacing_mm),
            "suv_max": float(inside.max()) if inside.size else 0.0,
            "suv_mean": float(inside.mean(dtype=np.float64)) if inside.size else 0.0,
            "n_lesions": len(lesions), "lesions": lesions.to_dict("records")}


def ct_report(mask: np.ndarray, ct_affine: np.ndarray, suv: np.ndarray, pet_affine: np.ndarray) -> dict[str, Any]:
    """`study_report` of a mask on the CT's grid, with the PET's SUV resampled (linear) onto the mask's bounding box."""
    box = bounding_box(mask)
    shift = np.eye(4)
    shift[:3, 3] = [b.start for b in box[::-1]]
    box_mask = mask[box].astype(bool)
    box_suv = volume.resample(suv, pet_affine, box_mask.shape, ct_affine @ shift, order=1)
    return study_report(box_mask, box_suv, spacing_of(ct_affine))


def check_outputs(out: Path, report: Path | None) -> None:
    """Before any work: the mask is a .nii/.nii.gz path and every output folder exists or can be created."""
    from .runs import check_writable

    if not out.name.endswith((".nii", ".nii.gz")):
        raise InputError(f"--out {out}: expected a NIfTI file name ending in .nii.gz or .nii")
    if report is not None and report.suffix != ".json":
        raise InputError(f"--report {report}: expected a .json file name (the lesion CSV goes beside it)")
    for path in (out, report):
        if path is not None:
            if path.is_dir():
                raise InputError(f"{path}: is a folder, expected a file name")
            check_writable(path.parent, "output folder")


def segment_study(run_dir: str | os.PathLike[str], files: StudyFiles, method: str = "scorecam",
                  out: str | os.PathLike[str] | None = None, report: str | os.PathLike[str] | None = None,
                  device: str | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Segment one study with a trained run: (mask uint8 (z, y, x) on the CT's grid, the CT's affine, report).

    With `out` the mask is written as NIfTI there, with `report` the report as JSON and its lesions as CSV beside
    it (same name, .csv); each file atomically, and only after everything is computed.
    """
    from .runs import write_csv_atomic, write_json_atomic

    start = time.perf_counter()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"run directory {run_dir}: not found (a folder written by the notebook chain)")
    out, report = (Path(p) if p is not None else None for p in (out, report))
    if out is not None:
        check_outputs(out, report)
    config = run_config(run_dir)
    params = method_inputs(run_dir, method)
    run = open_run(run_dir, device, config)
    ct, ct_affine, suv, pet_affine = load_study(files)
    prepared = prepare(ct, ct_affine, suv, pet_affine, config.spacing_mm, config.slice_size)
    check_prepared(prepared, suv.shape, pet_affine, files)
    _log(f"{files.study_id}: {len(prepared.x)} slices of {config.slice_size}x{config.slice_size} at "
         f"{list(config.spacing_mm)} mm ({time.perf_counter() - start:.1f} s)")
    mask_store, settings = store_mask(run, prepared, method, params)
    mask = volume.resample(mask_store.astype(np.uint8), prepared.affine, ct.shape, ct_affine, order=0)
    spacing = spacing_of(ct_affine)
    record = {"study": files.study_id, "ct": str(files.ct), "pet": str(files.pet), "pet_units": files.pet_units,
              "run_dir": str(run_dir), "method": method, **settings, "mask": None if out is None else str(out),
              "grid": {"shape_zyx": list(ct.shape), "spacing_mm_zyx": list(spacing)},
              **ct_report(mask, ct_affine, suv, pet_affine), "seconds": time.perf_counter() - start}
    if out is not None:
        volume.save_nifti(mask, ct_affine, out)
    if report is not None:
        write_csv_atomic(report.with_suffix(".csv"), pd.DataFrame(record["lesions"], columns=LESION_COLUMNS))
        write_json_atomic(report, record)
    _log(f"{method}: {record['n_lesions']} lesions, MTV {record['mtv_ml']:.1f} ml, TLG {record['tlg_g']:.1f} g "
         f"({record['seconds']:.1f} s)")
    return mask, ct_affine, record
