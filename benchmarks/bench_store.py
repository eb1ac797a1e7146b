"""Slice-store benchmark: random slice reads/s, DataLoader throughput, disk size and preprocessing time per study.

Usage: PYTHONPATH=. python benchmarks/bench_store.py [--store DIR] [--reads 3000] [--batches 40]
Without --store a fake store of random studies (256 x 256, 330 slices) is built in a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from wsseg_nb import slices, volume


def fake_store(root: Path, n_studies: int, n_slices: int, size: int, spacing: tuple[float, float, float]) -> Path:
    """A store of random studies with the real file layout and index.csv."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_studies):
        sid = f"FAKE_{i:03d}"
        (root / sid).mkdir(parents=True)
        mask = (rng.random((n_slices, size, size), dtype=np.float32) > 0.999).astype(np.uint8)
        np.save(root / sid / "suv.npy", rng.random((n_slices, size, size), dtype=np.float32) * 5)
        np.save(root / sid / "ct.npy", rng.integers(-1024, 1500, (n_slices, size, size), dtype=np.int16))
        np.save(root / sid / "mask.npy", mask)
        meta = {"study_id": sid, "spacing_mm": list(spacing), "shape": [n_slices, size, size],
                "affine": np.diag([-spacing[2], -spacing[1], spacing[0], 1.0]).tolist(),
                "lesion_voxels": mask.sum(axis=(1, 2)).tolist()}
        (root / sid / "meta.json").write_text(json.dumps(meta))
        rows.append(slices._index_rows(meta, "train", "lymphoma"))
    pd.concat(rows, ignore_index=True)[slices.INDEX_COLUMNS].to_csv(root / "index.csv", index=False)
    return root


def study_bytes(root: Path) -> float:
    """Mean bytes on disk of one study folder."""
    sizes = [sum(f.stat().st_size for f in d.iterdir()) for d in root.iterdir() if d.is_dir()]
    return float(np.mean(sizes))


def reads_per_second(store: slices.SliceStore, n: int) -> float:
    """Single random-position SliceStore.read calls per second."""
    rng = np.random.default_rng(1)
    positions = rng.integers(0, len(store.index), n)
    store.read(positions[:100])
    start = time.perf_counter()
    for p in positions:
        store.read([p])
    return n / (time.perf_counter() - start)


def loader_slices_per_second(store: slices.SliceStore, batches: int, workers: int, batched: bool) -> float:
    """Slices/s, random batches of 64: per-item fetch + collate, or batched ds[list] (worker start-up excluded)."""
    dataset = slices.SliceDataset(store)
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=64 * (batches + 1))
    if batched:
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers,
                                             sampler=torch.utils.data.BatchSampler(sampler, 64, drop_last=True))
    else:
        loader = torch.utils.data.DataLoader(dataset, batch_size=64, sampler=sampler, num_workers=workers)
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * 64 / (time.perf_counter() - start)


def phantom_sized_study(root: Path) -> dict:
    """A 250x250x350 CT (2x2x3 mm), 125x125x350 PET (4x4x3 mm, other origin) and SEG, as manifest row."""
    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[:350, :250, :250]
    body = (y - 125) ** 2 / 90 ** 2 + (x - 125) ** 2 / 110 ** 2 < 1
    ct = np.where(body, 40, -1000).astype(np.int16) + rng.integers(-20, 20, (350, 250, 250), dtype=np.int16)
    seg = ((z - 175) ** 2 / 100 + (y - 120) ** 2 / 64 + (x - 100) ** 2 / 64 < 1).astype(np.uint8)
    pet = (np.where(body[:, ::2, ::2], 5000.0, 100.0) + rng.normal(0, 300, (350, 125, 125))).astype(np.float32)
    ct_aff = np.diag([-2.0, -2.0, 3.0, 1.0])
    ct_aff[:3, 3] = [250, 250, -1000]
    pet_aff = np.diag([-4.0, -4.0, 3.0, 1.0])
    pet_aff[:3, 3] = [251, 251, -1000]
    for name, arr, aff in (("CT", ct, ct_aff), ("PET", pet, pet_aff), ("SEG", seg, ct_aff)):
        volume.save_nifti(arr, aff, root / f"{name}.nii.gz")
    return {"study_id": "PHANTOM", "diagnosis": "lymphoma", "weight_kg": 70.0, "injected_activity_mbq": 300.0,
            "injection_to_scan_s": 3600.0, "ct_path": str(root / "CT.nii.gz"), "pet_path": str(root / "PET.nii.gz"),
            "seg_path": str(root / "SEG.nii.gz"), "pet_units": "BQML", "split": "train"}


def main() -> None:
    """Run the measurements and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="existing store (default: build a fake one)")
    parser.add_argument("--studies", type=int, default=3)
    parser.add_argument("--reads", type=int, default=3000)
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = args.store or fake_store(tmp / "paper", args.studies, 330, 256, (3.0, 2.0, 2.0))
        store = slices.SliceStore(root)
        size = store.study(store.studies[0]).suv.shape[1]
        table.append(("SliceStore.read, 1 random slice", f"{reads_per_second(store, args.reads):,.0f} slices/s", size))
        for batched in (False, True):
            for workers in (0, 2):
                rate = loader_slices_per_second(store, args.batches, workers, batched)
                how = "ds[list], batch_size=None" if batched else "batch_size=64, collate"
                table.append((f"DataLoader {how}, {workers} workers", f"{rate:,.0f} slices/s", size))
        table.append(("disk per study (this store)", f"{study_bytes(root) / 1e6:.1f} MB", size))
        row = phantom_sized_study(tmp / "phantom")
        for name, spacing, size in (("demo", (6.0, 4.0, 4.0), 128), ("paper", (3.0, 2.0, 2.0), 256)):
            start = time.perf_counter()
            meta = slices.preprocess_study(row, tmp / name, spacing, size)
            seconds = time.perf_counter() - start
            table.append((f"preprocess_study {name} {spacing} mm", f"{seconds:.2f} s/study", size))
            table.append((f"disk per study {name} ({meta['shape'][0]} slices)",
                          f"{study_bytes(tmp / name) / 1e6:.1f} MB", size))
    print(pd.DataFrame(table, columns=["measurement", "value", "S"]).to_string(index=False))


if __name__ == "__main__":
    main()
