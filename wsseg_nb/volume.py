"""Volumes as (z, y, x) arrays plus a 4x4 index->world affine: NIfTI I/O, resampling, in-plane crop/pad."""
from __future__ import annotations

import gzip
import itertools
import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from scipy import ndimage

from .errors import InputError

BODY_HU = -500.0
"""CT voxels above this HU count as body when centring the crop."""
AIR_HU = -1024
"""Fill value of CT outside its field of view and in padding."""
MIN_SPACING_MM = 0.01
"""A voxel axis shorter than this (a zero pixdim or a zero affine column) makes the affine degenerate."""
GRID_TOL_MM = 0.1
"""SEG lies on the CT's grid when every voxel centre is within this distance of the CT's (5% of a 2 mm voxel)."""
MIN_PET_COVERAGE = 0.9
"""Least fraction of the CT's body (CT > BODY_HU on the store grid) that must lie inside the PET's field of view."""
MIN_BODY_FRACTION = 0.01
"""Least fraction of the CT's voxels (on the store spacing) that are body (> BODY_HU); below it: all air."""


def where(path: str | os.PathLike[str], study_id: str, field: str) -> str:
    """Prefix of an error message naming the study, the manifest field and the file."""
    return f"study {study_id}, field {field}, file {path}"


def load_nifti(path: str | os.PathLike[str], study_id: str = "?", field: str = "?") -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI file as (array (z, y, x), affine of (x, y, z, 1) -> world mm); NaN/Inf are an error (notebook 01)."""
    prefix = where(path, study_id, field)
    if not Path(path).is_file():
        raise InputError(f"{prefix}: file not found")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, zlib.error, ImageFileError, ValueError) as err:
        raise InputError(f"{prefix}: cannot read NIfTI (truncated or corrupt?): {type(err).__name__}: {err}") from err
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{prefix}: expected a 3D volume, got shape {data.shape}")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise InputError(f"{prefix}: {int((~np.isfinite(data)).sum())} voxels are NaN or Inf")
    affine = np.asarray(img.affine, dtype=np.float64)
    require_orientation(img, prefix)
    require_regular(affine, prefix)
    return np.ascontiguousarray(data.transpose(2, 1, 0)), affine


def require_orientation(img: nib.spatialimages.SpatialImage, where: str) -> None:
    """Raise InputError (prefixed by `where`) when a NIfTI header has neither a qform nor an sform (both codes 0)."""
    if isinstance(img, nib.Nifti1Image) and int(img.header["sform_code"]) == int(img.header["qform_code"]) == 0:
        raise InputError(f"{where}: header fields sform_code and qform_code are both 0 (no orientation); "
                         "expected a qform or an sform that places the voxels in scanner space")


def require_regular(affine: np.ndarray, where: str) -> None:
    """Raise InputError (prefixed by `where`) unless the affine is finite with independent axes of >= MIN_SPACING_MM."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.isfinite(affine).all() or spacing.min() < MIN_SPACING_MM or (
            abs(np.linalg.det(affine[:3, :3])) < 1e-3 * np.prod(spacing)):
        raise InputError(f"{where}: degenerate affine: voxel spacing (x, y, z) {np.round(spacing, 4).tolist()} mm, "
                         f"matrix {np.round(affine[:3, :3], 4).tolist()}; expected finite spacings (pixdim) of at "
                         f"least {MIN_SPACING_MM} mm along independent axes")


def save_nifti(array_zyx: np.ndarray, affine: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Write a (z, y, x) array as NIfTI (gzip level 1 for .gz) to a temporary name, then rename (notebook 01)."""
    path = Path(path)
    data = np.asarray(array_zyx)
    img = nib.Nifti1Image((data.astype(np.uint8) if data.dtype == bool else data).transpose(2, 1, 0), None)
    img.set_sform(np.asarray(affine, dtype=np.float64), code=1)
    img.set_qform(np.asarray(affine, dtype=np.float64), code=1)
    blob = img.to_bytes()
    if path.name.endswith(".gz"):
        blob = gzip.compress(blob, compresslevel=1, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(blob)
    tmp.replace(path)


def world_box(shape_zyx: tuple[int, ...], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World (x, y, z) minimum and maximum over the voxel centres of a grid."""
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in shape_zyx[::-1]])), dtype=np.float64)
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    return world.min(axis=0), world.max(axis=0)


def require_binary(mask: np.ndarray, where: str) -> None:
    """Raise InputError (prefixed by `where`) unless every voxel is 0 or 1; {0, 255} is refused too, with a hint."""
    bad = (mask != 0) & (mask != 1)
    if bad.any():
        values = np.unique(mask[bad])
        hint = " (a 0/255 image: store the mask as 0/1, e.g. seg // 255)" if values.tolist() == [255] else ""
        raise InputError(f"{where}: mask must be binary (0/1); {int(bad.sum())} voxels have other values, "
                         f"e.g. {values[:3].tolist()}{hint}")


def require_same_grid(shape_zyx: tuple[int, ...], affine: np.ndarray, ref_shape_zyx: tuple[int, ...],
                      ref_affine: np.ndarray, where: str) -> None:
    """Raise InputError (prefixed by `where`) unless a grid is the CT's: same shape, voxels within GRID_TOL_MM."""
    expected = "expected the CT's voxel grid (autoPET: pair SEG with CTres.nii.gz, the CT on the PET's grid)"
    if tuple(shape_zyx) != tuple(ref_shape_zyx):
        raise InputError(f"{where}: shape (x, y, z) {list(shape_zyx[::-1])}, the CT's {list(ref_shape_zyx[::-1])}; "
                         f"{expected}")
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in shape_zyx[::-1]])), dtype=np.float64)
    diff = affine - ref_affine
    shift = np.linalg.norm(corners @ diff[:3, :3].T + diff[:3, 3], axis=1).max()
    if shift > GRID_TOL_MM:
        raise InputError(f"{where}: affine differs from the CT's: voxel centres up to {shift:.3g} mm apart "
                         f"(tolerance {GRID_TOL_MM} mm); {expected}")


def require_hu(ct_zyx: np.ndarray, where: str) -> None:
    """Raise InputError (prefixed by `where`) when no CT voxel is below BODY_HU: no air, so the values are not HU."""
    low = ct_zyx.min()
    if low > BODY_HU:
        raise InputError(f"{where}: minimum value {low:g} ({ct_zyx.dtype}) is above {BODY_HU:g}: no air, so not HU; "
                         "expected air at about -1000 HU (stored without its rescale intercept, e.g. -1024?)")


def require_body(body_zyx: np.ndarray, where: str) -> None:
    """Raise InputError (prefixed by `where`) when under MIN_BODY_FRACTION of a CT's body mask is True."""
    fraction = np.count_nonzero(body_zyx) / body_zyx.size
    if fraction < MIN_BODY_FRACTION:
        raise InputError(f"{where}: {fraction:.2%} of the voxels are above {BODY_HU:g} HU (body); expected at "
                         f"least {MIN_BODY_FRACTION:.0%}: the CT is (nearly) all air")


def coverage(mask_zyx: np.ndarray, affine: np.ndarray, other_shape_zyx: tuple[int, ...],
             other_affine: np.ndarray) -> float:
    """Fraction of a mask's True voxels whose centres lie in another grid's field of view (its voxels' extent)."""
    total = np.count_nonzero(mask_zyx)
    index_map = np.linalg.inv(other_affine) @ affine
    matrix, offset = index_map[:3, :3], index_map[:3, 3]
    hi = np.asarray(other_shape_zyx[::-1], dtype=np.float64) - 0.5
    if not total:
        return 0.0
    if (np.count_nonzero(np.abs(matrix) > 1e-9, axis=1) == 1).all():
        return _box_count(mask_zyx, matrix, offset, hi) / total
    xyz = np.stack(np.nonzero(mask_zyx)[::-1], axis=1) @ matrix.T + offset
    return np.count_nonzero(((xyz >= -0.5) & (xyz <= hi)).all(axis=1)) / total


def require_coverage(body_zyx: np.ndarray, affine: np.ndarray, pet_shape_zyx: tuple[int, ...],
                     pet_affine: np.ndarray, where: str) -> float:
    """The fraction of the CT's body inside the PET's field of view; InputError below MIN_PET_COVERAGE."""
    fraction = coverage(body_zyx, affine, pet_shape_zyx, pet_affine)
    if fraction < MIN_PET_COVERAGE:
        lo, hi = world_box(pet_shape_zyx, pet_affine)
        body_lo, body_hi = world_box(body_zyx.shape, affine)
        raise InputError(f"{where}: the PET covers {fraction:.1%} of the CT's body (CT > {BODY_HU:g} HU), expected "
                         f"at least {MIN_PET_COVERAGE:.0%} (PET box {lo.round(1).tolist()}..{hi.round(1).tolist()} mm, "
                         f"CT store grid {body_lo.round(1).tolist()}..{body_hi.round(1).tolist()} mm); check the "
                         f"affines and the PET's axial extent")
    return fraction


def _box_count(body_zyx: np.ndarray, matrix: np.ndarray, offset: np.ndarray, hi: np.ndarray) -> int:
    """True voxels inside the other grid when each of its axes follows one axis of this grid (a box here)."""
    window = [slice(None)] * 3
    for col in range(3):
        row = int(np.argmax(np.abs(matrix[:, col])))
        ends = (np.array([-0.5, hi[row]]) - offset[row]) / matrix[row, col]
        n = body_zyx.shape[2 - col]
        window[2 - col] = slice(int(np.clip(np.ceil(ends.min() - 1e-6), 0, n)),
                                int(np.clip(np.floor(ends.max() + 1e-6) + 1, 0, n)))
    return int(np.count_nonzero(body_zyx[tuple(window)]))


def target_grid(shape_zyx: tuple[int, ...], affine: np.ndarray,
                spacing_mm: tuple[float, float, float]) -> tuple[tuple[int, int, int], np.ndarray]:
    """Axis-aligned grid at spacing (z, y, x) centred on a volume's world box; x, y, z index towards L, P, S."""
    lo, hi = world_box(shape_zyx, affine)
    step = np.asarray(spacing_mm, dtype=np.float64)[::-1]
    n = np.floor((hi - lo) / step + 1e-6).astype(int) + 1
    margin = (hi - lo - (n - 1) * step) / 2
    sign = np.array([-1.0, -1.0, 1.0])
    grid = np.eye(4)
    grid[:3, :3] = np.diag(sign * step)
    grid[:3, 3] = np.where(sign > 0, lo + margin, hi - margin)
    return (int(n[2]), int(n[1]), int(n[0])), grid


def resample(array_zyx: np.ndarray, affine: np.ndarray, shape_zyx: tuple[int, ...], target_affine: np.ndarray,
             order: int, cval: float = 0.0) -> np.ndarray:
    """Sample a volume on the grid (shape_zyx, target_affine): order 1 linear -> float32, 0 nearest -> same dtype."""
    index_map = np.linalg.inv(affine) @ target_affine
    matrix = index_map[2::-1, 2::-1]
    offset = index_map[2::-1, 3]
    if np.allclose(matrix, np.diag(np.diag(matrix)), rtol=0, atol=1e-9):
        matrix = np.diag(matrix).copy()
    return ndimage.affine_transform(array_zyx, matrix, offset, output_shape=tuple(shape_zyx),
                                    output=np.float32 if order else array_zyx.dtype, order=order,
                                    mode="constant", cval=cval, prefilter=False)


def body_center(ct_zyx: np.ndarray, threshold_hu: float = BODY_HU) -> tuple[float, float]:
    """(y, x) index of the centre of the in-plane bounding box of CT > threshold over all slices."""
    body = (ct_zyx > threshold_hu).any(axis=0)
    if not body.any():
        return (ct_zyx.shape[1] - 1) / 2, (ct_zyx.shape[2] - 1) / 2
    ys, xs = np.flatnonzero(body.any(axis=1)), np.flatnonzero(body.any(axis=0))
    return (ys[0] + ys[-1]) / 2, (xs[0] + xs[-1]) / 2


def crop_pad(array_zyx: np.ndarray, affine: np.ndarray, size: int, center_yx: tuple[float, float],
             pad_value: float) -> tuple[np.ndarray, np.ndarray]:
    """In-plane size x size window centred at center_yx, padded with pad_value; the affine keeps world positions."""
    start = np.round(np.asarray(center_yx, dtype=np.float64) - (size - 1) / 2).astype(int)
    out = np.full((array_zyx.shape[0], size, size), pad_value, dtype=array_zyx.dtype)
    src = [slice(max(s, 0), max(min(s + size, n), max(s, 0))) for s, n in zip(start, array_zyx.shape[1:])]
    dst = [slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start)]
    out[:, dst[0], dst[1]] = array_zyx[:, src[0], src[1]]
    shift = np.eye(4)
    shift[:2, 3] = start[1], start[0]
    return out, affine @ shift
