"""Slice store: preprocessing end to end on tiny studies, resume, bad inputs, split, reading, Dataset, assembly."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from wsseg_nb import slices, volume
from wsseg_nb.errors import InputError
from wsseg_nb.suv import suv_factor

SHAPE = (20, 40, 40)
CT_AFF = np.array([[-2.0, 0, 0, 40], [0, -2.0, 0, 30], [0, 0, 3.0, -100], [0, 0, 0, 1]])
PET_AFF = np.array([[-4.0, 0, 0, 41], [0, -4.0, 0, 31], [0, 0, 3.0, -100], [0, 0, 0, 1]])
LESION_VOXELS = {5: 12, 6: 1, 12: 4}
SPACING, SIZE = (3.0, 2.0, 2.0), 32


def pet_ramp(world_xyz):
    """Activity in Bq/ml as a linear function of world position."""
    return 4000.0 + world_xyz @ np.array([10.0, -5.0, 3.0])


def world_of(shape, affine):
    """World (x, y, z) of every voxel centre, shape (z, y, x, 3)."""
    zyx = np.indices(shape, dtype=np.float64)
    return (np.stack([zyx[2], zyx[1], zyx[0], np.ones(shape)], -1) @ affine.T)[..., :3]


def write_raw(path, array_zyx, affine, sform_code=1):
    """A NIfTI file with only an sform (code 0: no orientation at all)."""
    import nibabel as nib

    img = nib.Nifti1Image(array_zyx.transpose(2, 1, 0), None)
    img.set_sform(affine, code=sform_code)
    img.set_qform(None, code=0)
    nib.save(img, path)


def write_study(root, sid, diagnosis="lymphoma", break_=None):
    """A tiny CT (2x2x3 mm) / PET (4x4x3 mm, other origin) / SEG study; `break_` makes one input bad."""
    d = Path(root) / sid
    d.mkdir(parents=True)
    _, y, x = np.indices(SHAPE)
    ct = (np.where((y - 22) ** 2 / 15 ** 2 + (x - 17) ** 2 / 12 ** 2 < 1, 40, -1000) + x).astype(np.int16)
    seg = np.zeros(SHAPE, np.uint8)
    seg[5, 20:23, 15:19] = 1
    seg[6, 21, 16] = 1
    seg[12, 18:20, 20:22] = 1
    pet_shape = (20, 20, 20)
    pet = pet_ramp(world_of(pet_shape, PET_AFF)).astype(np.float32)
    pet_aff, seg_aff, units, activity = PET_AFF.copy(), CT_AFF.copy(), "BQML", 300.0
    if break_ == "nan":
        pet[3, 3, 3] = np.nan
    if break_ == "mask2":
        seg[6, 21, 16] = 2
    if break_ == "mask255":
        seg *= 255
    if break_ == "no_overlap":
        pet_aff[2, 3] = 500.0
    if break_ == "pet_short":  # PET slices 0..9 only: it covers 10 of the CT's 20 slices
        pet = pet[:10]
    if break_ == "seg_shifted":
        seg_aff[0, 3] += 1.0
    if break_ == "seg_grid":  # SEG on the PET's grid (autoPET's SEG beside the original CT)
        seg, seg_aff = seg[:, ::2, ::2], PET_AFF
    if break_ == "suv_labelled":  # Bq/ml values labelled SUV
        units = "SUV"
    if break_ == "bqml_is_suv":  # values already SUV labelled BQML
        pet *= 3.4e-4
    if break_ == "activity_kbq":  # 300 MBq written as 0.3: SUV 1000x too high
        activity = 0.3
    if break_ == "negative":  # a third of the PET wrapped to large negative values
        pet[:7] = -30000.0
    if break_ == "ct_uint16":  # stored without its rescale intercept of -1024
        ct = (ct + 1024).astype(np.uint16)
    if break_ == "ct_air":
        ct[:] = -1000
    volume.save_nifti(ct, CT_AFF, d / "CT.nii.gz")
    volume.save_nifti(pet, pet_aff, d / "PET.nii.gz")
    volume.save_nifti(seg, seg_aff, d / "SEG.nii.gz")
    if break_ == "zero_pixdim":
        write_raw(d / "CT.nii.gz", ct, CT_AFF @ np.diag([1.0, 0.0, 1.0, 1.0]))
    if break_ == "no_orientation":
        write_raw(d / "PET.nii.gz", pet, pet_aff, sform_code=0)
    if break_ == "truncated":
        blob = (d / "CT.nii.gz").read_bytes()
        (d / "CT.nii.gz").write_bytes(blob[: len(blob) // 2])
    return {"study_id": sid, "diagnosis": diagnosis, "weight_kg": np.nan if break_ == "weight" else 70.0,
            "injected_activity_mbq": activity, "injection_to_scan_s": 3600.0, "ct_path": str(d / "CT.nii.gz"),
            "pet_path": str(d / "PET.nii.gz"), "seg_path": str(d / "SEG.nii.gz"), "pet_units": units, "split": ""}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three good studies preprocessed once with two worker processes."""
    root = tmp_path_factory.mktemp("cohort")
    diagnoses = ["lymphoma", "melanoma", "lymphoma"]
    df = pd.DataFrame([write_study(root / "data", f"S{i}", d) for i, d in enumerate(diagnoses)])
    store = slices.preprocess_cohort(df, root / "store", SPACING, SIZE, seed=0, workers=2)
    return df, store


def test_store_layout_and_labels(cohort):
    df, store = cohort
    assert store.studies == ["S0", "S1", "S2"]
    assert list(store.index.columns) == slices.INDEX_COLUMNS and len(store.index) == 3 * SHAPE[0]
    rows = store.index[store.index.study_id == "S1"]
    expected = np.zeros(SHAPE[0], int)
    expected[list(LESION_VOXELS)] = list(LESION_VOXELS.values())
    np.testing.assert_array_equal(rows.lesion_voxels, expected)
    np.testing.assert_array_equal(rows.label, expected > 0)
    np.testing.assert_allclose(rows.lesion_area_mm2, expected * 4.0)
    assert set(rows.diagnosis) == {"melanoma"}
    s = store.study("S1")
    assert (s.suv.dtype, s.ct.dtype, s.mask.dtype) == (np.float32, np.int16, np.uint8)
    assert s.suv.shape == s.ct.shape == s.mask.shape == (SHAPE[0], SIZE, SIZE)
    assert isinstance(s.suv, np.memmap)
    assert s.meta["spacing_mm"] == list(SPACING) and s.meta["split"] in slices.SPLITS
    assert not list(store.root.glob(".tmp-*"))


def test_store_values_follow_world_geometry(cohort):
    _, store = cohort
    s = store.study("S0")
    aff = np.asarray(s.meta["affine"])
    world = world_of(s.ct.shape, aff)
    # CT: the store grid coincides with the CT grid up to an in-plane shift -> exact copy, -1024 outside
    idx = np.rint(np.c_[world.reshape(-1, 3), np.ones(world[..., 0].size)] @ np.linalg.inv(CT_AFF).T)[:, :3]
    idx = idx.astype(int).reshape(*s.ct.shape, 3)
    inside = np.all((idx >= 0) & (idx < np.array(SHAPE[::-1])), -1)
    _, y, x = np.indices(SHAPE)
    ct = np.where((y - 22) ** 2 / 15 ** 2 + (x - 17) ** 2 / 12 ** 2 < 1, 40, -1000) + x
    np.testing.assert_array_equal(s.ct[inside], ct[idx[inside][:, 2], idx[inside][:, 1], idx[inside][:, 0]])
    assert (s.ct[~inside] == -1024).all()
    # SUV: linear resampling of the world ramp is exact inside the PET grid, times the SUV factor
    pet_idx = (np.c_[world.reshape(-1, 3), np.ones(world[..., 0].size)] @ np.linalg.inv(PET_AFF).T)[:, :3]
    interior = np.all((pet_idx > 0) & (pet_idx < 19), -1).reshape(s.ct.shape) & inside
    assert interior.mean() > 0.3
    factor = suv_factor(70.0, 300.0, 3600.0)
    np.testing.assert_allclose(s.suv[interior], factor * pet_ramp(world[interior]), rtol=1e-5)
    assert (s.suv[~inside] == 0).all()
    # mask: the lesion voxels keep their world position
    world_lesion = world_of(SHAPE, CT_AFF)[5, 20:23, 15:19].reshape(-1, 3)
    np.testing.assert_allclose(np.sort(world[s.mask == 1][:12], 0), np.sort(world_lesion, 0))


def test_resume_does_no_work_and_recovers_a_killed_study(cohort):
    df, store = cohort
    stamps = {p: p.stat().st_mtime_ns for p in store.root.glob("S*/*.npy")}
    index_before = (store.root / "index.csv").read_text()
    slices.preprocess_cohort(df, store.root, SPACING, SIZE, seed=0, workers=2)
    assert {p: p.stat().st_mtime_ns for p in store.root.glob("S*/*.npy")} == stamps
    assert (store.root / "index.csv").read_text() == index_before
    # a run killed mid-study leaves only a temp folder: it is removed and the study redone
    partial = store.root / ".tmp-S2-12345"
    (store.root / "S2").rename(partial)
    slices.preprocess_cohort(df, store.root, SPACING, SIZE, seed=0, workers=2)
    assert not partial.exists() and (store.root / "S2" / "meta.json").is_file()
    assert (store.root / "index.csv").read_text() == index_before
    with pytest.raises(ValueError, match="study S0: store .* spacing_mm"):
        slices.preprocess_cohort(df, store.root, (6.0, 4.0, 4.0), SIZE)


AT = r"study BAD, field {0}, file .*{1}.nii.gz: "


@pytest.mark.parametrize("break_, match", [
    ("nan", AT.format("pet_path", "PET") + "1 voxels are NaN"),
    ("mask2", AT.format("seg_path", "SEG") + r"mask must be binary \(0/1\); 1 voxels have other values, e.g. \[2\]"),
    ("mask255", AT.format("seg_path", "SEG") + r"mask must be binary .*17 voxels .*\[255\] \(a 0/255 image"),
    ("no_overlap", AT.format("pet_path", "PET") + r"the PET covers 0.0% of the CT's body"),
    ("pet_short", AT.format("pet_path", "PET") + r"the PET covers 50.0% of the CT's body .* at least 90%"),
    ("seg_shifted", AT.format("seg_path", "SEG") + r"affine differs from the CT's: voxel centres up to 1 mm apart"),
    ("seg_grid", AT.format("seg_path", "SEG") + r"shape \(x, y, z\) \[20, 20, 20\], the CT's \[40, 40, 20\]"),
    ("zero_pixdim", AT.format("ct_path", "CT") + r"degenerate affine: voxel spacing \(x, y, z\) \[2.0, 0.0, 3.0\]"),
    ("no_orientation", AT.format("pet_path", "PET") + r"header fields sform_code and qform_code are both 0"),
    ("suv_labelled", AT.format("pet_path", "PET") + r"pet_units SUV: 99th percentile of SUV in the body is 4\d{3}, "
                                                   r"expected 0.2..100 \(values in Bq/ml labelled SUV"),
    ("bqml_is_suv", AT.format("pet_path", "PET") + r"pet_units BQML: 99th percentile .* is 0.000\d+, .*already in SUV"),
    ("activity_kbq", AT.format("pet_path", "PET") + r"pet_units BQML: 99th percentile .* is 1\d{3}, .*check weight_kg"),
    ("negative", AT.format("pet_path", "PET") + r"1st percentile of SUV in the body is -10\.\d, expected >= -1"),
    ("ct_uint16", AT.format("ct_path", "CT") + r"minimum value 24 \(uint16\) is above -500: no air, so not HU"),
    ("ct_air", AT.format("ct_path", "CT") + r"0.00% of the voxels are above -500 HU \(body\)"),
    ("truncated", AT.format("ct_path", "CT") + r"cannot read NIfTI"),
    ("weight", r"study BAD: field weight_kg must be a positive number"),
])
def test_bad_study_raises_and_leaves_nothing(tmp_path, break_, match):
    df = pd.DataFrame([write_study(tmp_path / "data", "BAD", break_=break_)])
    with pytest.raises(InputError, match=match):
        slices.preprocess_cohort(df, tmp_path / "store", SPACING, SIZE, workers=1)
    assert [p.name for p in (tmp_path / "store").iterdir()] == []


def test_bad_study_in_worker_pool(tmp_path):
    df = pd.DataFrame([write_study(tmp_path / "data", "GOOD"), write_study(tmp_path / "data", "BAD", break_="mask2")])
    with pytest.raises(ValueError, match=r"study BAD, field seg_path"):
        slices.preprocess_cohort(df, tmp_path / "store", SPACING, SIZE, workers=2)
    assert not (tmp_path / "store" / "BAD").exists() and not list((tmp_path / "store").glob(".tmp-*"))
    assert not (tmp_path / "store" / "index.csv").exists()


def split_manifest(n_subjects=120, seed=5):
    """Subjects with one to three studies each and four diagnoses."""
    rng = np.random.default_rng(seed)
    diagnoses = rng.choice(["lung_cancer", "lymphoma", "melanoma", "negative"], n_subjects, p=[0.4, 0.2, 0.3, 0.1])
    rows = [{"study_id": f"P{s:03d}_{k}", "subject_id": f"P{s:03d}", "diagnosis": diagnoses[s], "split": ""}
            for s in range(n_subjects) for k in range(rng.integers(1, 4))]
    return pd.DataFrame(rows)


def test_split_is_subject_level_stratified_and_deterministic():
    df = split_manifest()
    split = slices.assign_split(df, (0.6, 0.2, 0.2), seed=3)
    assert (df.assign(split=split).groupby("subject_id")["split"].nunique() == 1).all()
    subjects = df.assign(split=split).drop_duplicates("subject_id")
    counts = subjects.groupby("split").size()
    np.testing.assert_array_less(np.abs(counts[list(slices.SPLITS)].to_numpy() - np.array([0.6, 0.2, 0.2]) * 120), 1)
    for _, group in subjects.groupby("diagnosis"):
        per = group["split"].value_counts().reindex(slices.SPLITS, fill_value=0).to_numpy()
        np.testing.assert_array_less(np.abs(per - np.array([0.6, 0.2, 0.2]) * len(group)), 2)
    pd.testing.assert_series_equal(split, slices.assign_split(df, (0.6, 0.2, 0.2), seed=3))
    assert not split.equals(slices.assign_split(df, (0.6, 0.2, 0.2), seed=4))


def test_split_keeps_given_values_and_rejects_bad_ones():
    df = split_manifest()
    df.loc[df.subject_id == "P007", "split"] = ["test"] + [""] * ((df.subject_id == "P007").sum() - 1)
    split = slices.assign_split(df, seed=0)
    assert set(split[df.subject_id == "P007"]) == {"test"}
    bad = df.copy()
    bad.loc[0, "split"] = "training"
    with pytest.raises(ValueError, match=r"study P000_0: field split"):
        slices.assign_split(bad)
    mixed = df.copy()
    mixed.loc[mixed.subject_id == "P007", "split"] = ["test", "train"] + [""] * ((df.subject_id == "P007").sum() - 2)
    with pytest.raises(ValueError, match="subject P007: field split differs"):
        slices.assign_split(mixed)


def test_read_matches_arrays(cohort):
    _, store = cohort
    positions = np.array([45, 3, 25, 44, 59])
    x, mask = store.read(positions)
    assert x.shape == (5, 2, SIZE, SIZE) and x.dtype == np.float32 and mask.shape == (5, SIZE, SIZE)
    for k, p in enumerate(positions):
        sid, z = store.index.study_id[p], store.index.slice[p]
        np.testing.assert_array_equal(x[k, 0], np.load(store.root / sid / "suv.npy")[z])
        np.testing.assert_array_equal(x[k, 1], np.load(store.root / sid / "ct.npy")[z])
        np.testing.assert_array_equal(mask[k], np.load(store.root / sid / "mask.npy")[z])


def test_dataset_items_batches_and_pickling(cohort):
    _, store = cohort
    split = store.index.split.iloc[0]
    ds = slices.SliceDataset(store.root, split)
    assert len(ds) == (store.index.split == split).sum()
    x, label, mask = ds[7]
    assert (x.dtype, x.shape, label.dtype, label.shape, mask.dtype, mask.shape) == (
        torch.float32, (2, SIZE, SIZE), torch.float32, (), torch.uint8, (SIZE, SIZE))
    ref_x, ref_mask = store.read([ds.positions[7]])
    assert torch.equal(x, torch.from_numpy(ref_x[0])) and torch.equal(mask, torch.from_numpy(ref_mask[0]))
    assert label.item() == store.index.label[ds.positions[7]]
    clone = pickle.loads(pickle.dumps(ds))
    assert len(clone.store._cache) == 0 and torch.equal(clone[7][0], x)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=1, multiprocessing_context="spawn")
    xb, lb, mb = next(iter(loader))
    assert xb.shape == (8, 2, SIZE, SIZE) and lb.shape == (8,) and mb.shape == (8, SIZE, SIZE)
    assert torch.equal(xb[7], x) and torch.equal(lb, torch.from_numpy(ds.labels[:8]))
    xs, ls, ms = ds[[7, 0, 7]]
    assert xs.shape == (3, 2, SIZE, SIZE) and torch.equal(xs[2], x) and ls.shape == (3,) and torch.equal(ms[0], mb[0])
    sampler = torch.utils.data.BatchSampler(range(8), 4, drop_last=False)
    batched = torch.utils.data.DataLoader(ds, batch_size=None, sampler=sampler)
    assert torch.equal(torch.cat([b[0] for b in batched]), xb)
    sub = slices.SliceDataset(store, split, indices=ds.positions[[3, 1]])
    assert torch.equal(sub[1][0], ds[1][0])
    with pytest.raises(ValueError, match="outside split"):
        slices.SliceDataset(store, split, indices=np.flatnonzero(store.index.split != split)[:1])


def test_assemble(cohort):
    _, store = cohort
    masks = np.zeros((2, SIZE, SIZE), bool)
    masks[0, 3, 4] = masks[1, 10:12, 5] = True
    vol = slices.assemble(store, "S1", [6, 2], masks)
    assert vol.shape == (SHAPE[0], SIZE, SIZE) and vol.dtype == bool
    assert vol.sum() == 3 and vol[6, 3, 4] and vol[2, 10:12, 5].all()


def test_rerun_redoes_exactly_the_stale_studies(tmp_path, capsys):
    rows = [write_study(tmp_path / "data", f"S{i}") for i in range(4)]
    df = pd.DataFrame(rows).assign(split=["train", "train", "val", "test"])  # given splits: no reshuffle
    root = slices.preprocess_cohort(df, tmp_path / "store", SPACING, SIZE, workers=1).root
    stamps = {p.parent.name: p.stat().st_mtime_ns for p in root.glob("S*/ct.npy")}
    suv_s1 = np.load(root / "S1" / "suv.npy")
    capsys.readouterr()
    seg = np.zeros(SHAPE, np.uint8)
    seg[8, 10:12, 10:13] = 1
    volume.save_nifti(seg, CT_AFF, rows[0]["seg_path"])  # S0: a source file rewritten
    df.loc[1, "weight_kg"] = 35.0  # S1: a manifest field changed
    df.loc[2, "diagnosis"] = "melanoma"  # S2: diagnosis changed, and made by code without fingerprints
    meta = json.loads((root / "S2" / "meta.json").read_text())
    (root / "S2" / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "fingerprint"}))
    store = slices.preprocess_cohort(df, root, SPACING, SIZE, workers=1)
    assert capsys.readouterr().out == ("preprocess: redoing 3 stored studies whose inputs changed (manifest row, "
                                       "source files, grid or store version): S0, S1, S2\n")
    after = {p.parent.name: p.stat().st_mtime_ns for p in root.glob("S*/ct.npy")}
    assert [sid for sid in sorted(stamps) if after[sid] == stamps[sid]] == ["S3"]
    rows_s0 = store.index[store.index.study_id == "S0"]
    assert rows_s0.lesion_voxels.sum() == 6 and rows_s0.set_index("slice").lesion_voxels[8] == 6
    np.testing.assert_array_equal(store.study("S1").suv, suv_s1 / 2)  # SUV is proportional to the weight
    assert set(store.index[store.index.study_id == "S2"].diagnosis) == {"melanoma"} == {store.study("S2").meta["diagnosis"]}
    slices.preprocess_cohort(df, root, SPACING, SIZE, workers=1)
    assert capsys.readouterr().out == ""
    # a rerun that fails keeps neither the stale study nor an index that still lists it
    bad = np.zeros(SHAPE, np.uint8)
    bad[3, 3, 3] = 2
    volume.save_nifti(bad, CT_AFF, rows[3]["seg_path"])
    with pytest.raises(InputError, match="study S3, field seg_path"):
        slices.preprocess_cohort(df, root, SPACING, SIZE, workers=1)
    assert sorted(p.name for p in root.iterdir()) == ["S0", "S1", "S2"]


def test_fingerprint_covers_row_files_grid_and_version(tmp_path, monkeypatch):
    row = write_study(tmp_path, "S0")
    base = slices.fingerprint(slices.study_inputs(row, SPACING, SIZE))
    assert base == slices.fingerprint(slices.study_inputs(dict(row), list(SPACING), SIZE))
    assert base == slices.fingerprint(slices.study_inputs({**row, "demo": 1, "seed": 7}, SPACING, SIZE))
    changed = [slices.study_inputs({**row, "injection_to_scan_s": 3601.0}, SPACING, SIZE),
               slices.study_inputs(row, (3.0, 2.0, 2.5), SIZE), slices.study_inputs(row, SPACING, SIZE + 8)]
    Path(row["pet_path"]).touch()
    changed.append(slices.study_inputs(row, SPACING, SIZE))
    monkeypatch.setattr(slices, "STORE_VERSION", slices.STORE_VERSION + 1)
    changed.append(slices.study_inputs(row, SPACING, SIZE))
    prints = {slices.fingerprint(inputs) for inputs in changed}
    assert len(prints) == 5 and base not in prints


def alive(pid):
    """Whether a process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("watched", [True, False], ids=["worker_pool", "plain_executor"])
def test_workers_exit_when_the_parent_is_killed(watched):
    script = (
        "import multiprocessing, os, sys, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from wsseg_nb import slices\n"
        f"pool = slices.worker_pool(1) if {watched} else "
        "ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn'))\n"
        "print(pool.submit(os.getpid).result(), flush=True)\n"
        "pool.submit(time.sleep, 60)\n"
        "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
    worker = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + (10 if watched else 3)
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert alive(worker) is not watched
    finally:
        if alive(worker):
            os.kill(worker, signal.SIGKILL)
