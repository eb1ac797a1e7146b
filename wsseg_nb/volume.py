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

BODY_HU = -500.0
"""CT voxels above this HU count as body when centring the crop."""
AIR_HU = -1024
"""Fill value of CT outside its field of view and in padding."""


def where(path: str | os.PathLike[str], study_id: str, field: str) -> str:
    """Prefix of an error message naming the study, the manifest field and the file."""
    return f"study {study_id}, field {field}, file {path}"


def load_nifti(path: str | os.PathLike[str], study_id: str = "?", field: str = "?") -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI file as (array (z, y, x), affine of (x, y, z, 1) -> world mm); NaN/Inf are an error (notebook 01)."""
    prefix = where(path, study_id, field)
    if not Path(path).is_file():
        raise ValueError(f"{prefix}: file not found")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, zlib.error, ImageFileError, ValueError) as err:
        raise ValueError(f"{prefix}: cannot read NIfTI (truncated or corrupt?): {type(err).__name__}: {err}") from err
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{prefix}: expected a 3D volume, got shape {data.shape}")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise ValueError(f"{prefix}: {int((~np.isfinite(data)).sum())} voxels are NaN or Inf")
    return np.ascontiguousarray(data.transpose(2, 1, 0)), np.asarray(img.affine, dtype=np.float64)


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


def require_overlap(shape_zyx: tuple[int, ...], affine: np.ndarray, ref_shape_zyx: tuple[int, ...],
                    ref_affine: np.ndarray, where: str) -> None:
    """Raise ValueError (prefixed by `where`) when two grids share no world volume."""
    lo, hi = world_box(shape_zyx, affine)
    ref_lo, ref_hi = world_box(ref_shape_zyx, ref_affine)
    if np.any(np.minimum(hi, ref_hi) < np.maximum(lo, ref_lo)):
        raise ValueError(f"{where}: does not overlap the CT in world space (box {lo.round(1)}..{hi.round(1)} mm "
                         f"vs CT {ref_lo.round(1)}..{ref_hi.round(1)} mm); check the affines")


def require_binary(mask: np.ndarray, where: str) -> None:
    """Raise ValueError (prefixed by `where`) unless every voxel is 0 or 1."""
    bad = (mask != 0) & (mask != 1)
    if bad.any():
        raise ValueError(f"{where}: mask must be binary (0/1); {int(bad.sum())} voxels have other values, "
                         f"e.g. {mask[bad][:3].tolist()}")


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
