"""NIfTI I/O, resampling on flipped and oblique grids, target grid, crop/pad, input errors."""
import gzip

import numpy as np
import pytest

from wsseg_nb import volume

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


def test_binary_and_overlap_checks():
    volume.require_binary(np.array([0, 1, 1.0]), "w")
    with pytest.raises(ValueError, match="w: mask must be binary .* 1 voxels"):
        volume.require_binary(np.array([0, 1, 2]), "w")
    aff = grid((2, 2, 3), (0, 0, 0))
    volume.require_overlap((10, 10, 10), grid((4, 4, 3), (18, 18, 27)), (10, 10, 10), aff, "w")
    with pytest.raises(ValueError, match="w: does not overlap the CT in world space"):
        volume.require_overlap((10, 10, 10), grid((4, 4, 3), (0, 0, 100)), (10, 10, 10), aff, "w")
