"""Preprocessing into an on-disk slice store (memory-mapped arrays + index table), splits, torch Dataset."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import multiprocessing.connection
import os
import shutil
import threading
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import volume
from .errors import InputError
from .progress import progress
from .suv import check_body_suv, to_suv

if TYPE_CHECKING:
    import torch

SPLITS = ("train", "val", "test")
INDEX_COLUMNS = ["study_id", "slice", "label", "lesion_voxels", "lesion_area_mm2", "split", "diagnosis"]
TMP_PREFIX = ".tmp-"


STORE_VERSION = 2
"""Version of what preprocessing writes; bump it when a change alters a stored study (older ones are redone)."""
PATH_FIELDS = ("ct_path", "pet_path", "seg_path")
ROW_FIELDS = ("study_id", "diagnosis", "split", "pet_units", "weight_kg", "injected_activity_mbq",
              "injection_to_scan_s") + PATH_FIELDS
"""The manifest fields a stored study depends on (its arrays and meta.json)."""


def study_inputs(row: Mapping[str, Any], spacing_mm: Sequence[float], slice_size: int) -> dict[str, Any]:
    """What makes a stored study: its manifest fields, its files' size and mtime, the grid and STORE_VERSION."""
    files = {}
    for field in PATH_FIELDS:
        try:
            stat = Path(row[field]).stat()
            files[field] = [stat.st_size, stat.st_mtime_ns]
        except OSError:
            files[field] = None
    return {"store_version": STORE_VERSION, "row": {k: str(row.get(k, "")) for k in ROW_FIELDS}, "files": files,
            "spacing_mm": [float(s) for s in spacing_mm], "slice_size": int(slice_size)}


def fingerprint(inputs: Mapping[str, Any]) -> str:
    """SHA-256 of a study's inputs (canonical JSON)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _stored_meta(folder: Path) -> dict[str, Any] | None:
    """A stored study's meta.json, or None when it is missing or unreadable (the study is then redone)."""
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def store_grid(ct: np.ndarray, ct_aff: np.ndarray, spacing_mm: Sequence[float], slice_size: int,
               at_ct: str | None = None) -> tuple[np.ndarray, np.ndarray, Callable[[np.ndarray, np.ndarray, int], np.ndarray]]:
    """The CT on the store grid (resampled, body-centred, cropped/padded; int16 HU), its affine, and a function
    putting another volume (array, affine, interpolation order) on the same grid. With `at_ct`, an all-air CT is
    refused (measured before padding)."""
    grid_shape, grid_aff = volume.target_grid(ct.shape, ct_aff, tuple(spacing_mm))
    ct_grid = volume.resample(ct, ct_aff, grid_shape, grid_aff, order=1, cval=volume.AIR_HU)
    if at_ct is not None:
        volume.require_body(ct_grid > volume.BODY_HU, at_ct)
    center = volume.body_center(ct_grid)
    ct_store, affine = volume.crop_pad(ct_grid, grid_aff, slice_size, center, volume.AIR_HU)

    def put(array: np.ndarray, array_aff: np.ndarray, order: int) -> np.ndarray:
        return volume.crop_pad(volume.resample(array, array_aff, grid_shape, grid_aff, order=order), grid_aff,
                               slice_size, center, 0)[0]

    return np.clip(np.rint(ct_store), -32768, 32767).astype(np.int16), affine, put


def preprocess_study(row: Mapping[str, Any], out_dir: str | os.PathLike[str], spacing_mm: Sequence[float],
                     slice_size: int) -> dict[str, Any]:
    """One manifest row -> input checks -> <out_dir>/<study_id>/{suv,ct,mask}.npy + meta.json (notebook 01)."""
    sid, out_dir = str(row["study_id"]), Path(out_dir)
    inputs = study_inputs(row, spacing_mm, slice_size)
    at = {field: volume.where(row[field], sid, field) for field in PATH_FIELDS}
    ct, ct_aff = volume.load_nifti(row["ct_path"], sid, "ct_path")
    volume.require_hu(ct, at["ct_path"])
    pet, pet_aff = volume.load_nifti(row["pet_path"], sid, "pet_path")
    seg, seg_aff = volume.load_nifti(row["seg_path"], sid, "seg_path")
    volume.require_binary(seg, at["seg_path"])
    volume.require_same_grid(seg.shape, seg_aff, ct.shape, ct_aff, at["seg_path"])
    suv = to_suv(pet, row["pet_units"], row.get("weight_kg"), row.get("injected_activity_mbq"),
                 row.get("injection_to_scan_s"), sid)
    pet_shape = pet.shape
    del pet
    ct_store, affine, put = store_grid(ct, ct_aff, spacing_mm, slice_size, at["ct_path"])
    suv_store = put(suv, pet_aff, 1)
    mask_store = put(seg.astype(np.uint8), seg_aff, 0)
    arrays = {"suv": suv_store.astype(np.float32, copy=False),
              "ct": ct_store,
              "mask": mask_store.astype(np.uint8, copy=False)}
    checks = _store_checks(arrays, affine, pet_shape, pet_aff, row["pet_units"], at)
    meta = {
        "study_id": sid, "spacing_mm": [float(s) for s in spacing_mm], "shape": list(ct_store.shape),
        "affine": affine.tolist(), "diagnosis": str(row.get("diagnosis", "")), "split": str(row.get("split", "")),
        "pet_units": str(row["pet_units"]).upper(),
        "source": {k: str(row[k]) for k in PATH_FIELDS},
        "lesion_voxels": mask_store.sum(axis=(1, 2), dtype=np.int64).tolist(),
        "checks": checks, "inputs": inputs, "fingerprint": fingerprint(inputs),
    }
    _write_study(out_dir, sid, arrays, meta)
    return meta


def _store_checks(arrays: Mapping[str, np.ndarray], affine: np.ndarray, pet_shape: tuple[int, ...],
                  pet_affine: np.ndarray, pet_units: str, at: Mapping[str, str]) -> dict[str, float]:
    """Checks on the store grid (CT > BODY_HU is body): PET coverage of the body, plausible SUV in it."""
    body = arrays["ct"] > volume.BODY_HU
    return {"pet_body_coverage": volume.require_coverage(body, affine, pet_shape, pet_affine, at["pet_path"]),
            **check_body_suv(arrays["suv"][body], pet_units, at["pet_path"])}


def _write_study(out_dir: Path, sid: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """Write a study to a temporary folder, then rename it to <out_dir>/<sid> (a concurrent run's same study is kept)."""
    tmp = out_dir / f"{TMP_PREFIX}{sid}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        final = out_dir / sid
        if (_stored_meta(final) or {}).get("fingerprint") == meta["fingerprint"]:
            shutil.rmtree(tmp)
        else:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def assign_split(manifest_df: pd.DataFrame, fractions: Sequence[float] = (0.6, 0.2, 0.2),
                 seed: int = 0) -> pd.Series:
    """Subject-level train/val/test split stratified by diagnosis; rows with a split keep it (notebook 01)."""
    df = manifest_df.reset_index(drop=True)
    subjects = df["subject_id"].astype(str) if "subject_id" in df else df["study_id"].astype(str)
    given = df["split"].fillna("").astype(str).str.strip() if "split" in df else pd.Series("", index=df.index)
    bad = ~given.isin(("",) + SPLITS)
    if bad.any():
        raise InputError(f"study {df.loc[bad.idxmax(), 'study_id']}: field split must be one of {SPLITS} or "
                         f"empty, got {given[bad.idxmax()]!r}")
    by_subject = given[given != ""].groupby(subjects[given != ""]).agg(set)
    mixed = by_subject[by_subject.map(len) > 1]
    if len(mixed):
        raise InputError(f"subject {mixed.index[0]}: field split differs between its studies {sorted(mixed.iloc[0])}")
    split_of = by_subject.map(lambda s: next(iter(s))).to_dict()
    todo = (pd.DataFrame({"subject": subjects, "diagnosis": df["diagnosis"].astype(str)})
            .loc[~subjects.isin(split_of.keys())].drop_duplicates("subject"))
    rng = np.random.default_rng(seed)
    ordered = [subject for _, group in sorted(todo.groupby("diagnosis")["subject"])
               for subject in rng.permutation(sorted(group))]
    frac = np.asarray(fractions, dtype=np.float64) / np.sum(fractions)
    counts = np.zeros(len(SPLITS))
    for i, subject in enumerate(ordered):
        k = int(np.argmax(frac * (i + 1) - counts))
        counts[k] += 1
        split_of[subject] = SPLITS[k]
    return pd.Series(subjects.map(split_of).to_numpy(), index=manifest_df.index, name="split")


def _index_rows(meta: Mapping[str, Any]) -> pd.DataFrame:
    """Index-table rows of one preprocessed study from its meta.json alone."""
    voxels = np.asarray(meta["lesion_voxels"], dtype=np.int64)
    return pd.DataFrame({
        "study_id": meta["study_id"], "slice": np.arange(len(voxels)), "label": (voxels > 0).astype(np.int8),
        "lesion_voxels": voxels, "lesion_area_mm2": voxels * meta["spacing_mm"][1] * meta["spacing_mm"][2],
        "split": meta["split"], "diagnosis": meta["diagnosis"]})


def index_positions(index: pd.DataFrame, keys: pd.DataFrame, source: str) -> np.ndarray:
    """Row in the store `index` of each (study_id, slice) of `keys`; a key not in it is an error naming `source`."""
    rows = pd.Series(np.arange(len(index)),
                     index=pd.MultiIndex.from_arrays([index["study_id"].astype(str), index["slice"]]))
    pos = rows.reindex(pd.MultiIndex.from_arrays([keys["study_id"].astype(str), keys["slice"]])).to_numpy(float)
    if np.isnan(pos).any():
        bad = keys.iloc[int(np.flatnonzero(np.isnan(pos))[0])]
        raise InputError(f"{source}: study {bad['study_id']} slice {bad['slice']} is not in store/index.csv")
    return pos.astype(np.intp)


def _read_meta(path: Path) -> dict[str, Any]:
    """A study's meta.json."""
    return json.loads((path / "meta.json").read_text())


def exit_with_parent() -> None:
    """Worker initializer: a daemon thread ends this process as soon as its parent is gone (e.g. SIGKILLed)."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_when_ready, args=(parent.sentinel,), daemon=True).start()


def _exit_when_ready(sentinel: int) -> None:
    """Block until the parent's sentinel is ready (the parent exited), then exit without cleanup."""
    multiprocessing.connection.wait([sentinel])
    os._exit(1)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """Spawned worker processes that exit when the parent dies instead of finishing their queue."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=exit_with_parent)


def _require_same_grid_settings(stored: Mapping[str, Mapping[str, Any]], out_dir: Path,
                                spacing_mm: Sequence[float], slice_size: int) -> None:
    """Refuse a store folder whose studies were made on another grid (a mixed store would be wrong)."""
    for sid, meta in sorted(stored.items()):
        if not np.allclose(meta["spacing_mm"], spacing_mm) or meta["shape"][1] != slice_size:
            raise InputError(f"study {sid}: store {out_dir} was built with spacing_mm {meta['spacing_mm']} and "
                             f"slice_size {meta['shape'][1]}, asked {list(spacing_mm)} and {slice_size}; "
                             f"use a new folder")


def _plan(rows: list[dict[str, Any]], out_dir: Path, spacing_mm: Sequence[float],
          slice_size: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows to (re)do, and the stored studies among them (stale: their fingerprint differs); refuses another grid."""
    stored = {str(row["study_id"]): _stored_meta(out_dir / str(row["study_id"])) for row in rows}
    stored = {sid: meta for sid, meta in stored.items() if meta is not None}
    _require_same_grid_settings(stored, out_dir, spacing_mm, slice_size)
    todo = [row for row in rows if (stored.get(str(row["study_id"])) or {}).get("fingerprint")
            != fingerprint(study_inputs(row, spacing_mm, slice_size))]
    return todo, sorted(str(row["study_id"]) for row in todo if str(row["study_id"]) in stored)


def _discard(out_dir: Path, stale: list[str]) -> None:
    """Remove index.csv and the stale studies before work starts, so a run that fails keeps nothing stale."""
    (out_dir / "index.csv").unlink(missing_ok=True)
    for sid in stale:
        shutil.rmtree(out_dir / sid)


def _run(todo: list[dict[str, Any]], args: tuple[Any, ...], workers: int, bar: Any) -> None:
    """preprocess_study on each row, in worker processes when more than one is asked and needed."""
    if workers <= 1 or len(todo) <= 1:
        for row in todo:
            preprocess_study(row, *args)
            bar.update()
        return
    with worker_pool(min(workers, len(todo))) as pool:
        futures = [pool.submit(preprocess_study, row, *args) for row in todo]
        try:
            for future in as_completed(futures):
                future.result()
                bar.update()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def preprocess_cohort(manifest_df: pd.DataFrame, out_dir: str | os.PathLike[str], spacing_mm: Sequence[float],
                      slice_size: int, split_fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0,
                      workers: int = 2) -> "SliceStore":
    """Preprocess studies in parallel, redoing only missing or stale ones, then index.csv from meta (notebook 01)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for leftover in out_dir.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    rows = manifest_df.assign(split=assign_split(manifest_df, split_fractions, seed)).to_dict("records")
    todo, stale = _plan(rows, out_dir, spacing_mm, slice_size)
    if todo:
        _discard(out_dir, stale)
    if stale:
        print(f"preprocess: redoing {len(stale)} stored studies whose inputs changed (manifest row, source files, "
              f"grid or store version): {', '.join(stale[:10])}{' ...' if len(stale) > 10 else ''}")
    with progress(total=len(rows), initial=len(rows) - len(todo), desc="preprocess", unit="study") as bar:
        _run(todo, (out_dir, tuple(spacing_mm), slice_size), workers, bar)
    index = pd.concat([_index_rows(_read_meta(out_dir / str(row["study_id"]))) for row in rows],
                      ignore_index=True)[INDEX_COLUMNS]
    tmp = out_dir / f"{TMP_PREFIX}index.csv"
    index.to_csv(tmp, index=False)
    tmp.replace(out_dir / "index.csv")
    return SliceStore(out_dir)


@dataclass
class Study:
    """One stored study: memory-mapped (z, S, S) arrays and its meta.json."""

    suv: np.ndarray
    ct: np.ndarray
    mask: np.ndarray
    meta: dict[str, Any]


class SliceStore:
    """Read side of the slice store: index table plus memory-mapped studies (LRU-cached, pickle-safe)."""

    max_open = 128
    """Studies kept memory-mapped at once (each holds three file descriptors)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        if not (self.root / "index.csv").is_file():
            raise InputError(f"slice store {self.root}: file index.csv not found; run preprocessing first")
        self.index = pd.read_csv(self.root / "index.csv", dtype={"study_id": str, "split": str, "diagnosis": str},
                                 keep_default_na=False)
        codes, uniques = pd.factorize(self.index["study_id"])
        self.studies: list[str] = list(uniques)
        self._codes = codes.astype(np.int64)
        self._slices = self.index["slice"].to_numpy(np.int64)
        self._cache: OrderedDict[str, Study] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without open memory maps (each DataLoader worker opens its own)."""
        return {**self.__dict__, "_cache": OrderedDict()}

    def study(self, study_id: str) -> Study:
        """Memory-mapped arrays and meta of one study (notebook 01)."""
        if study_id in self._cache:
            self._cache.move_to_end(study_id)
            return self._cache[study_id]
        folder = self.root / study_id
        if not (folder / "meta.json").is_file():
            raise InputError(f"slice store {self.root}: study {study_id}: file {folder / 'meta.json'} not found")
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in ("suv", "ct", "mask")}
        self._cache[study_id] = Study(**arrays, meta=_read_meta(folder))
        if len(self._cache) > self.max_open:
            self._cache.popitem(last=False)
        return self._cache[study_id]

    def volume_grid(self, study_id: str) -> dict[str, Any]:
        """Shape (z, S, S), spacing_mm (z, y, x) and affine (4x4 array) of a study's store grid."""
        meta = self.study(study_id).meta
        return {"shape": tuple(meta["shape"]), "spacing_mm": tuple(meta["spacing_mm"]),
                "affine": np.asarray(meta["affine"])}

    def read(self, positions: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slices at index-row positions: x float32 (n, 2, S, S) raw [SUV, HU] and mask uint8 (n, S, S)."""
        pos = np.atleast_1d(np.asarray(positions, dtype=np.int64))
        codes, z = self._codes[pos], self._slices[pos]
        first = self.study(self.studies[codes[0]] if len(pos) else self.studies[0])
        size = first.suv.shape[1:]
        x = np.empty((len(pos), 2, *size), dtype=np.float32)
        mask = np.empty((len(pos), *size), dtype=np.uint8)
        for code in np.unique(codes):
            sel = np.flatnonzero(codes == code)
            study = self.study(self.studies[code])
            x[sel, 0] = study.suv[z[sel]]
            x[sel, 1] = study.ct[z[sel]]
            mask[sel] = study.mask[z[sel]]
        return x, mask


class SliceDataset:
    """Map-style torch Dataset of one split: (x float32 (2,S,S) raw [SUV, HU], label float32, mask uint8 (S,S))."""

    def __init__(self, store: SliceStore | str | os.PathLike[str], split: str | None = None,
                 indices: Sequence[int] | np.ndarray | None = None):
        self.store = store if isinstance(store, SliceStore) else SliceStore(store)
        index = self.store.index
        keep = np.ones(len(index), bool) if split is None else (index["split"] == split).to_numpy()
        if indices is None:
            self.positions = np.flatnonzero(keep)
        else:
            self.positions = np.asarray(indices, dtype=np.int64)
            if not keep[self.positions].all():
                raise ValueError(f"SliceDataset: indices include rows outside split {split!r}")
        self.labels = index["label"].to_numpy(np.float32)[self.positions]

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int | Sequence[int]) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
        """One item; for a sequence of items the stacked batch (DataLoader(batch_size=None, sampler=BatchSampler))."""
        return self.__getitems__([i])[0] if np.ndim(i) == 0 else self.batch(i)

    def __getitems__(self, items: Sequence[int]) -> list[tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]]:
        """A list of items read with one store read (the DataLoader's batched fetch)."""
        x, labels, mask = self.batch(items)
        return [(x[j], labels[j], mask[j]) for j in range(len(labels))]

    def batch(self, items: Sequence[int]) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
        """Stacked (x (n,2,S,S), label (n,), mask (n,S,S)) of dataset items with one store read."""
        import torch  # imported here so that preprocessing worker processes start without torch

        items = np.asarray(items, dtype=np.int64)
        x, mask = self.store.read(self.positions[items])
        return torch.from_numpy(x), torch.from_numpy(self.labels[items]), torch.from_numpy(mask)


def assemble(store: SliceStore, study_id: str, slices: Sequence[int] | np.ndarray,
             per_slice_masks: np.ndarray) -> np.ndarray:
    """A study's (z, S, S) bool volume from masks of some of its slices; slices not given are empty (notebook 04)."""
    out = np.zeros(store.volume_grid(study_id)["shape"], dtype=bool)
    out[np.asarray(slices, dtype=np.int64)] = np.asarray(per_slice_masks, dtype=bool)
    return out
