"""NIfTI I/O, resampling on flipped and oblique grids, target grid, crop/pad, input errors."""
import gzip

import numpy as np
import pytest

from wsseg_nb import volume
from wsseg_nb.errors import InputError

RAMP = np.array([0.7, -1.3, 2.1])  # f(world) = RAMP . (x, y, z) + 5


def index_to_world(shape_zyx, affine):
    """World (x, y, z) of every voxel centre, shape (z, y, x, 3)."""
    zyx = np.indices(shape_zyx, dtype=np.float64)
    xyz1 = np.stack([zyx[2], zyx[1], zyx[0], np.ones(shape_zyx)], axis=-1)
    return (xyz1 @ affine.T)[..., :3]


def ramp_volume(shape_zyx, affine):
    """The analytic linear ramp sampled at the voxel centres of a grid."""
    return index_to_world(shape_zyx, affine) @ RAMP + 5.0


def rotation(axis, degrees):
    """4x4 rotation about world axis 0, 1 or 2."""
    t = np.deg2rad(degrees)
    i, j = [k for k in range(3) if k != axis]
    rot = np.eye(4)
    rot[[i, i, j, j], [i, j, i, j]] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
    return rot


def grid(spacing_xyz, origin):
    """Affine with the given (signed) diagonal spacing and origin."""
    aff = np.diag([*spacing_xyz, 1.0])
    aff[:3, 3] = origin
    return aff


def test_save_load_roundtrip_keeps_zyx_and_affine(tmp_path):
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    aff = rotation(2, 20) @ grid((-2, -2, 3), (10, 20, -30))
    volume.save_nifti(arr, aff, tmp_path / "a.nii.gz")
    back, back_aff = volume.load_nifti(tmp_path / "a.nii.gz")
    assert back.dtype == np.int16 and back.shape == (4, 5, 6)
    np.testing.assert_array_equal(back, arr)
    np.testing.assert_allclose(back_aff, aff, atol=1e-5)
    assert not list(tmp_path.glob(".*tmp"))


def test_array_order_matches_nifti_convention(tmp_path):
    """Voxel arr[z, y, x] lies at affine @ (x, y, z, 1), i.e. the NIfTI affine of arr.transpose(2, 1, 0)."""
    import nibabel as nib

    data_xyz = np.zeros((6, 5, 4), np.float32)
    data_xyz[5, 1, 2] = 1.0
    nib.save(nib.Nifti1Image(data_xyz, grid((2, 3, 4), (0, 0, 0))), tmp_path / "n.nii")
    arr, _ = volume.load_nifti(tmp_path / "n.nii")
    assert arr.shape == (4, 5, 6) and arr[2, 1, 5] == 1.0


@pytest.mark.parametrize("src_affine", [
    grid((2.0, 2.0, 3.0), (-40, -30, -20)),
    grid((-2.0, -2.5, 3.0), (40, 30, -20)),
    grid((-2.0, 2.0, -3.0), (40, -30, 20)),
    rotation(2, 17) @ rotation(0, 9) @ grid((-2.0, -2.0, 3.0), (40, 30, -20)),
], ids=["ras", "flipped_xy", "flipped_xz", "oblique"])
@pytest.mark.parametrize("spacing", [(3.0, 2.0, 2.0), (4.5, 3.5, 2.5)])
def test_linear_resampling_reproduces_a_ramp(src_affine, spacing):
    shape = (14, 16, 18)
    src = ramp_volume(shape, src_affine).astype(np.float32)
    out_shape, out_aff = volume.target_grid(shape, src_affine, spacing)
    out = volume.resample(src, src_affine, out_shape, out_aff, order=1, cval=-999)
    assert out.dtype == np.float32 and out.shape == out_shape
    # interior: target voxels whose source index lies inside the source grid
    world = index_to_world(out_shape, out_aff)
    src_idx = (np.concatenate([world, np.ones(world.shape[:-1] + (1,))], -1) @ np.linalg.inv(src_affine).T)[..., :3]
    inside = np.all((src_idx > 1e-6) & (src_idx < np.array(shape[::-1]) - 1 - 1e-6), axis=-1)
    assert inside.sum() > 0.2 * inside.size
    np.testing.assert_allclose(out[inside], ramp_volume(out_shape, out_aff)[inside], rtol=0, atol=2e-4)
    assert (out[~np.all((src_idx > -1) & (src_idx < np.array(shape[::-1])), axis=-1)] == -999).all()


def test_identity_resampling_is_exact_for_integers():
    aff = grid((-2, -2, 3), (50, 40, -10))
    ct = np.random.default_rng(1).integers(-1000, 1000, (5, 6, 7)).astype(np.int16)
    np.testing.assert_array_equal(volume.resample(ct, aff, ct.shape, aff, order=1), ct)
    np.testing.assert_array_equal(volume.resample(ct, aff, ct.shape, aff, order=0), ct)


def test_nearest_resampling_keeps_a_mask_binary_and_its_volume():
    src_aff = rotation(2, 30) @ grid((-1.0, -1.0, 1.0), (20, 20, -20))
    zyx = np.indices((40, 40, 40)) - 19.5
    mask = ((zyx ** 2).sum(0) < 12 ** 2).astype(np.uint8)  # sphere of radius 12 mm
    shape, aff = volume.target_grid(mask.shape, src_aff, (3.0, 2.0, 2.0))
    out = volume.resample(mask, src_aff, shape, aff, order=0)
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 1}
    assert out.sum() * 12.0 == pytest.approx(4 / 3 * np.pi * 12 ** 3, rel=0.1)


def test_target_grid_is_axis_aligned_lps_and_inside_the_box():
    src = rotation(2, 10) @ grid((2.0, 2.0, 3.0), (-40, -30, -20))
    shape, aff = volume.target_grid((10, 20, 30), src, (3.0, 2.0, 2.0))
    np.testing.assert_array_equal(aff[:3, :3], np.diag([-2.0, -2.0, 3.0]))
    lo, hi = volume.world_box((10, 20, 30), src)
    out_lo, out_hi = volume.world_box(shape, aff)
    assert np.all(out_lo >= lo - 1e-9) and np.all(out_hi <= hi + 1e-9)
    assert np.all(hi - lo - (out_hi - out_lo) < np.array([2.0, 2.0, 3.0]))
    np.testing.assert_allclose((lo + hi) / 2, (out_lo + out_hi) / 2)


@pytest.mark.parametrize("size, center", [(8, (4.5, 6.0)), (30, (9.0, 11.0)), (10, (1.0, 20.0))])
def test_crop_pad_keeps_world_positions(size, center):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 100, (3, 12, 22)).astype(np.int16)
    aff = rotation(1, 5) @ grid((-2, -2, 3), (10, 20, 30))
    out, out_aff = volume.crop_pad(arr, aff, size, center, pad_value=-1024)
    assert out.shape == (3, size, size) and out.dtype == arr.dtype
    start_y, start_x = np.round(np.asarray(center) - (size - 1) / 2).astype(int)
    j, i = np.meshgrid(np.arange(size) + start_y, np.arange(size) + start_x, indexing="ij")
    valid = (j >= 0) & (j < 12) & (i >= 0) & (i < 22)
    np.testing.assert_array_equal(out[:, valid], arr[:, j[valid], i[valid]])
    assert (out[:, ~valid] == -1024).all()
    world_out = index_to_world(out.shape, out_aff)
    world_in = index_to_world(arr.shape, aff)
    np.testing.assert_allclose(world_out[:, valid], world_in[:, j[valid], i[valid]], atol=1e-9)


def test_body_center():
    ct = np.full((4, 20, 30), -1000, np.int16)
    ct[1, 3:8, 10:21] = 40
    ct[3, 12, 5] = 0
    assert volume.body_center(ct) == (7.5, 12.5)
    assert volume.body_center(np.full((2, 5, 7), -1000)) == (2.0, 3.0)


def test_load_errors_name_study_field_and_file(tmp_path):
    path = tmp_path / "PET.nii.gz"
    with pytest.raises(ValueError, match=r"study S9, field pet_path, file .*PET.nii.gz: file not found"):
        volume.load_nifti(path, "S9", "pet_path")
    pet = np.ones((20, 30, 30), np.float32)
    pet[3, 4, 5] = np.nan
    volume.save_nifti(pet, np.eye(4), path)
    with pytest.raises(ValueError, match=r"study S9, field pet_path, file .*PET.nii.gz: 1 voxels are NaN"):
        volume.load_nifti(path, "S9", "pet_path")
    volume.save_nifti(np.random.default_rng(0).random((20, 30, 30), dtype=np.float32), np.eye(4), path)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"study S9, field pet_path, file .*PET.nii.gz: cannot read NIfTI"):
        volume.load_nifti(path, "S9", "pet_path")
    path.write_bytes(gzip.compress(b"not a nifti"))
    with pytest.raises(ValueError, match=r"study S9, field pet_path.*cannot read NIfTI"):
        volume.load_nifti(path, "S9", "pet_path")


def test_binary_check_and_the_0_255_decision():
    volume.require_binary(np.array([0, 1, 1.0]), "w")
    with pytest.raises(InputError, match=r"w: mask must be binary \(0/1\); 1 voxels have other values, e.g. \[2\]$"):
        volume.require_binary(np.array([0, 1, 2]), "w")
    with pytest.raises(InputError, match=r"2 voxels have other values, e.g. \[255\] \(a 0/255 image: .*seg // 255"):
        volume.require_binary(np.array([0, 255, 255], np.uint8), "w")


def test_same_grid_check_names_the_shift():
    aff = rotation(2, 10) @ grid((2, 2, 3), (5, 6, 7))
    volume.require_same_grid((10, 20, 30), aff + 1e-4, (10, 20, 30), aff, "w")
    with pytest.raises(InputError, match=r"w: shape \(x, y, z\) \[30, 20, 11\], the CT's \[30, 20, 10\]"):
        volume.require_same_grid((11, 20, 30), aff, (10, 20, 30), aff, "w")
    shifted = aff.copy()
    shifted[:3, 3] += [0.3, 0.0, 0.4]
    with pytest.raises(InputError, match=r"w: affine differs from the CT's: voxel centres up to 0.5 mm apart"):
        volume.require_same_grid((10, 20, 30), shifted, (10, 20, 30), aff, "w")
    scaled = aff @ np.diag([1.0, 1.0, 1.01, 1.0])  # z spacing 3 -> 3.03 mm: the last slice 9 * 0.03 mm off
    with pytest.raises(InputError, match=r"up to 0.27 mm apart"):
        volume.require_same_grid((10, 20, 30), scaled, (10, 20, 30), aff, "w")


def brute_coverage(mask, affine, other_shape, other_affine):
    """Coverage by mapping every True voxel centre into the other grid's index space."""
    world = index_to_world(mask.shape, affine)[mask]
    idx = (np.c_[world, np.ones(len(world))] @ np.linalg.inv(other_affine).T)[:, :3]
    return np.all((idx >= -0.5) & (idx <= np.array(other_shape[::-1]) - 0.5), axis=1).mean()


@pytest.mark.parametrize("other", [
    grid((-2.0, -2.0, 3.0), (30, 20, 9.0)), grid((4.0, 4.0, 6.0), (-3, -11, 13.5)),
    np.array([[0, 2.0, 0, -5], [-2.0, 0, 0, 21], [0, 0, 3.0, 4], [0, 0, 0, 1]]),
    rotation(2, 12) @ grid((-2.0, -2.0, 3.0), (30, 20, 9.0)),
], ids=["shifted", "coarser", "permuted", "oblique"])
def test_coverage_equals_brute_force(other):
    mask = np.random.default_rng(3).random((12, 16, 18)) < 0.4
    aff = grid((-2.0, -2.0, 3.0), (24, 20, 0))
    expected = brute_coverage(mask, aff, (5, 9, 10), other)
    assert 0.05 < expected < 0.95
    assert volume.coverage(mask, aff, (5, 9, 10), other) == pytest.approx(expected, abs=1e-12)


def test_coverage_check_reports_the_fraction():
    body = np.ones((10, 8, 8), bool)
    aff = grid((2, 2, 3), (0, 0, 0))
    assert volume.require_coverage(body, aff, (10, 8, 8), aff, "w") == 1.0
    with pytest.raises(InputError, match=r"w: the PET covers 40.0% of the CT's body .* expected at least 90%"):
        volume.require_coverage(body, aff, (4, 8, 8), aff, "w")  # 4 of 10 slices
    with pytest.raises(InputError, match=r"w: the PET covers 0.0%"):
        volume.require_coverage(body, aff, (10, 8, 8), grid((2, 2, 3), (0, 0, 100)), "w")


def test_hu_and_body_checks():
    volume.require_hu(np.array([-1000, 40], np.int16), "w")
    with pytest.raises(InputError, match=r"w: minimum value 24 \(uint16\) is above -500: no air, so not HU"):
        volume.require_hu(np.array([24, 1064], np.uint16), "w")
    body = np.zeros((10, 10, 10), bool)
    body[0, 0, :9] = True
    with pytest.raises(InputError, match=r"w: 0.90% of the voxels are above -500 HU \(body\); expected at least 1%"):
        volume.require_body(body, "w")
    body[0, 0, 9] = True
    volume.require_body(body, "w")


def write_raw(path, aff, sform_code=1, qform_code=0):
    """An uncompressed NIfTI with a chosen sform (or none) and no qform."""
    import nibabel as nib

    img = nib.Nifti1Image(np.zeros((6, 5, 4), np.float32), None)
    img.set_sform(aff, code=sform_code)
    img.set_qform(None, code=qform_code)
    nib.save(img, path)


def test_degenerate_affines_are_refused(tmp_path):
    path = tmp_path / "CT.nii"
    write_raw(path, np.diag([2.0, 0.0, 3.0, 1.0]))
    with pytest.raises(InputError, match=r"study S1, field ct_path, file .*CT.nii: degenerate affine: voxel spacing "
                                         r"\(x, y, z\) \[2.0, 0.0, 3.0\] mm"):
        volume.load_nifti(path, "S1", "ct_path")
    collinear = np.array([[2.0, 2.0, 0, 0], [0, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]])
    write_raw(path, collinear)
    with pytest.raises(InputError, match=r"degenerate affine"):
        volume.load_nifti(path, "S1", "ct_path")
    write_raw(path, np.diag([2.0, 2.0, 3.0, 1.0]), sform_code=0)
    with pytest.raises(InputError, match=r"study S1, field ct_path, .*sform_code and qform_code are both 0"):
        volume.load_nifti(path, "S1", "ct_path")
    write_raw(path, np.diag([2.0, 2.0, 3.0, 1.0]))
    assert volume.load_nifti(path, "S1", "ct_path")[0].shape == (4, 5, 6)
