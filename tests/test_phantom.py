"""Synthetic PET/CT phantom: determinism, grids, physiology, lesion statistics, resumable cohort generation."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wsseg_nb import manifest, phantom, volume
from wsseg_nb.suv import suv_factor


@pytest.fixture(scope="module")
def row() -> dict:
    rows = manifest.synthetic_cohort().to_dict("records")
    return next(r for r in rows if r["diagnosis"] == "lung_cancer")


@pytest.fixture(scope="module")
def study(row) -> dict:
    return phantom.synthesize(row)


def test_same_row_same_bytes_other_seed_differs(row, study):
    again = phantom.synthesize(row)
    for key in ("ct", "pet", "seg"):
        assert study[key].tobytes() == again[key].tobytes()
    other = phantom.synthesize({**row, "seed": row["seed"] + 1})
    assert other["ct"].shape != study["ct"].shape or not np.array_equal(other["ct"], study["ct"])
    assert not np.array_equal(other["pet"][:50], study["pet"][:50])


def test_grids_dtypes_and_pet_offset(study):
    ct, pet, seg = study["ct"], study["pet"], study["seg"]
    assert (ct.dtype, pet.dtype, seg.dtype) == (np.int16, np.float32, np.uint8)
    nz = ct.shape[0]
    assert ct.shape == seg.shape == (nz, 250, 250) and 315 <= nz <= 367
    assert pet.shape == (nz - 1, 125, 125)
    assert np.allclose(np.diag(study["ct_affine"]), [2, 2, 3, 1])
    assert np.allclose(np.diag(study["pet_affine"]), [4, 4, 3, 1])
    # PET voxel (0, 0, 0) lies midway between CT voxels 0 and 1 on every axis.
    assert np.allclose(study["pet_affine"][:3, 3] - study["ct_affine"][:3, 3], [1.0, 1.0, 1.5])


def test_physiology(row, study):
    median = phantom.organ_suv(study, row)["median_suv"]
    assert 5.5 <= median["brain"] <= 10.5
    assert 1.4 <= median["liver"] <= 2.6
    assert 0.25 <= median["lung"] <= 0.7
    assert median["bladder"] >= 8.0 and median["fat"] <= 0.5
    ct = study["ct"]
    assert np.median(ct[study["labels"] == phantom.L["lung"]]) < -750
    assert np.all(ct[study["labels"] == phantom.L["air"]] == -1000)
    assert study["seg"].sum() > 0
    assert np.median(ct[study["seg"] > 0]) > 0  # lesions are soft tissue on CT


def test_physiological_confounders_reach_lesion_suvs(row, study):
    median = phantom.organ_suv(study, row)["median_suv"]
    labels = study["labels"]
    for name in ("colon", "stomach", "ureter", "tonsil"):
        assert (labels == phantom.L[name]).any(), name
    assert 1.0 <= median["colon"] <= 12.0 and 1.0 <= median["stomach"] <= 4.5 and median["tonsil"] >= 1.5
    # on the PET as stored, physiology (not tumour) reaches lesion-like SUV 3
    suv = study["pet"] * suv_factor(row["weight_kg"], row["injected_activity_mbq"],
                                    row["injection_to_scan_s"], row["study_id"])
    on_pet = labels[:-1, ::2, ::2]
    lesion = phantom._pet_lesion_ids(study["seg"].astype(np.int16)) > 0
    confounder = np.isin(on_pet, [phantom.L[n] for n in phantom.PHYSIOLOGY]) & ~lesion
    assert (suv[confounder] >= 3.0).sum() > 50


def test_confounders_are_painted_only_into_soft_tissue(row):
    anat_rng, _, _, _, phys_rng = phantom._streams(row)
    anat = phantom._anatomy(row, anat_rng)
    g = phantom._grid(anat)
    before = phantom._label_map(anat, g, anat_rng)
    after = before.copy()
    phantom._physiology(after, anat, g, phys_rng, age=60.0)
    changed = before != after
    assert changed.sum() > 10_000
    assert np.isin(before[changed], [phantom.L[n] for n in ("viscera", "fat", "muscle", "lung")]).all()  # no organ, bone
    assert np.isin(after[changed], [phantom.L[n] for n in phantom.PHYSIOLOGY]).all()


def test_confounder_stream_leaves_the_other_draws_unchanged(row):
    five = phantom._streams(row)
    four = tuple(np.random.default_rng(s) for s in np.random.SeedSequence(int(row["seed"])).spawn(4))
    assert len(five) == 5
    assert all(np.array_equal(a.random(8), b.random(8)) for a, b in zip(five, four))


def test_tube_is_a_cylinder_with_round_caps():
    g = phantom._grid(phantom.Anatomy(1000.0, False, np.array([0.0, 1.0]), np.ones(2), np.ones(2), np.zeros(2),
                                      5.0, 10.0, 40))
    box, near = phantom._tube(g, [(0.0, 0.0, 30.0), (0.0, 0.0, 90.0)], 10.0)
    s, y, x = g.s[box[0]], g.y[box[1]], g.x[box[2]]
    rho2 = y[:, None] ** 2 + x[None, :] ** 2
    inside = ((s >= 30.0) & (s <= 90.0))
    for k, depth in enumerate(s):
        along = 0.0 if inside[k] else min(abs(depth - 30.0), abs(depth - 90.0))
        assert np.array_equal(near[k], rho2 + along ** 2 <= 100.0), depth


def test_smooth_field_is_standardised_and_smooth():
    field = phantom._smooth_field((40, 50, 60), (3.0, 2.0, 2.0), np.random.default_rng(0))
    assert abs(field.mean()) < 1e-5 and abs(field.std() - 1.0) < 1e-5
    assert np.corrcoef(field[:, :, :-1].ravel(), field[:, :, 1:].ravel())[0, 1] > 0.9  # 2 mm apart, 30 mm length


def test_lesion_mask_equals_generated_seg(row, study):
    seg, affine = phantom.lesion_mask(row)
    assert np.array_equal(seg, study["seg"]) and np.array_equal(affine, study["ct_affine"])
    assert not phantom.lesion_mask({**row, "diagnosis": "negative"})[0].any()


def test_cohort_statistics_match_masks(row, study):
    stats = phantom.cohort_statistics(pd.DataFrame([row]), workers=1)
    per_slice = study["seg"].reshape(study["seg"].shape[0], -1).sum(axis=1)
    assert stats["tumor_volume_ml"].iloc[0] == pytest.approx(study["seg"].sum() * 2 * 2 * 3 / 1000)
    assert stats["tumor_slices"].iloc[0] == int((per_slice > 0).sum())
    assert np.array_equal(stats["tumor_areas_mm2"].iloc[0], per_slice[per_slice > 0] * 4.0)
    summary = phantom.summarize_statistics(stats)
    assert summary["tumor_slice_fraction"] == stats["tumor_slices"].iloc[0] / study["seg"].shape[0]


def test_generate_cohort_writes_files_and_resumes(tmp_path, row, study):
    folder = tmp_path / row["study_id"]
    paths = {f: str(folder / name) for f, name in phantom.STUDY_FILES.items()}
    df = pd.DataFrame([{**row, **paths}])
    assert phantom.generate_cohort(df, workers=1) == [row["study_id"]]
    ct, ct_aff = volume.load_nifti(paths["ct_path"])
    pet, pet_aff = volume.load_nifti(paths["pet_path"])
    seg, _ = volume.load_nifti(paths["seg_path"])
    assert np.array_equal(ct, study["ct"]) and np.array_equal(pet, study["pet"]) and np.array_equal(seg, study["seg"])
    assert np.allclose(pet_aff, study["pet_affine"]) and np.allclose(ct_aff, study["ct_affine"])
    assert sorted(p.name for p in folder.iterdir()) == ["CT.nii.gz", "PET.nii.gz", "SEG.nii.gz"]
    assert phantom.generate_cohort(df, workers=1) == []  # complete studies are skipped
    with pytest.raises(ValueError, match="pet_path"):
        phantom.generate_cohort(df.assign(pet_path=str(tmp_path / "x.nii.gz")), workers=1)


def test_measured_lesion_suvmax_follows_the_drawn_targets(row, study):
    from wsseg_nb import metrics
    from wsseg_nb.suv import suv_factor

    suv = study["pet"] * suv_factor(row["weight_kg"], row["injected_activity_mbq"], row["injection_to_scan_s"])
    on_pet = phantom._pet_lesion_ids(study["seg"].astype(np.int16)) > 0
    measured = metrics.lesion_uptake(suv, on_pet, phantom.PET_SPACING_MM)
    lo, hi = phantom.LESION_SUVMAX[row["diagnosis"]]
    assert len(measured) >= 1
    # each lesion's PET maximum (after PSF and noise) is its drawn target; merged lesions keep the larger one
    assert measured["suvmax"].between(lo * 0.97, hi * 1.03).all()
    assert (measured["lesion_to_background"] > 1.2).all()


def test_parallel_statistics_use_the_watched_pool_and_match_serial(monkeypatch) -> None:
    from wsseg_nb import slices

    rows = manifest.synthetic_cohort().head(2)
    opened = []
    monkeypatch.setattr(phantom, "worker_pool", lambda n: opened.append(n) or slices.worker_pool(n))
    parallel = phantom.cohort_statistics(rows, workers=2)
    assert opened == [2]  # workers that exit when the parent is killed (tests/test_slices.py proves that)
    serial = phantom.cohort_statistics(rows, workers=1)
    pd.testing.assert_frame_equal(parallel.drop(columns="tumor_areas_mm2"), serial.drop(columns="tumor_areas_mm2"))
