"""data_manifest.csv: schema, validation, the synthetic cohort's table and the autoPET folder scanner."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError

COLUMNS = ("study_id", "diagnosis", "sex", "age", "weight_kg", "injected_activity_mbq", "injection_to_scan_s",
           "ct_path", "pet_path", "seg_path", "pet_units", "split", "demo", "seed")
OPTIONAL = ("demo", "seed")
DIAGNOSES = ("lung_cancer", "lymphoma", "melanoma", "negative")
SEXES = ("F", "M")
PET_UNITS = ("BQML", "SUV")
SPLITS = ("train", "val", "test")
PATH_FIELDS = ("ct_path", "pet_path", "seg_path")
PAPER_DIAGNOSIS_FRACTIONS = {"lung_cancer": 0.50, "lymphoma": 0.18, "melanoma": 0.32}
PAPER_FEMALE_FRACTION = 195 / 453
AGE_BY_DIAGNOSIS = {"lung_cancer": (67.0, 9.0), "lymphoma": (53.0, 16.0), "melanoma": (63.0, 14.0)}
"""Age (mean, sd) by diagnosis, giving the paper's median 64 years (range 19-95)."""
PLAUSIBLE = {"weight_kg": (20.0, 300.0, "body weight in kg; a weight in grams?"),
             "injected_activity_mbq": (20.0, 2000.0, "FDG activity in MBq; in Bq or mCi?"),
             "injection_to_scan_s": (300.0, 4 * 3600.0, "injection-to-scan delay in seconds; in minutes?")}
"""Ranges outside which a manifest value is almost surely in the wrong unit (refused with the hint)."""
DEMO_PER_SPLIT = {"train": 60, "val": 12, "test": 12}
"""The demo subset: 60 training studies (the classifier's; the U-Net takes 30, `unet_train_studies`), 12 validation
and 12 test studies, enough for a per-patient median (issue 11)."""


def _bad(path: Path, line: int, study: str, column: str, value: object, why: str) -> InputError:
    """The one error format of manifest validation: file, line, study, column, value."""
    return InputError(f"{path}: line {line} (study {study!r}), column {column!r} = {value!r}: {why}")


def _number(path: Path, line: int, study: str, column: str, text: str, required: bool) -> float:
    """Parse one positive number (NaN when empty and not required)."""
    if text == "":
        if required:
            raise _bad(path, line, study, column, text, "missing (required)")
        return float("nan")
    try:
        value = float(text)
    except ValueError:
        raise _bad(path, line, study, column, text, "not a number") from None
    if not np.isfinite(value) or value <= 0:
        raise _bad(path, line, study, column, text, "must be a positive number")
    return value


def _choice(path: Path, line: int, study: str, column: str, text: str, allowed: tuple[str, ...]) -> str:
    """Check one categorical value against its vocabulary."""
    if text not in allowed:
        raise _bad(path, line, study, column, text, f"expected one of {list(allowed)}")
    return text


def read_table(path: Path) -> pd.DataFrame:
    """A CSV as strings; a missing, empty or non-UTF-8 file is an InputError naming the file (and line)."""
    if not path.is_file():
        raise InputError(f"{path}: manifest not found (or not a file)")
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise InputError(f"{path}: line {line}: byte {data[err.start:err.start + 1]!r} is not UTF-8 "
                         f"(save the manifest as UTF-8)") from None
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: empty file (expected a header line with {list(COLUMNS)})") from None
    except pd.errors.ParserError as err:
        raise InputError(f"{path}: not a valid CSV ({err})") from None


def load_manifest(path: str | os.PathLike[str], subset: str = "all", check_files: bool = True) -> pd.DataFrame:
    """Read and validate a study manifest; paths come back absolute (notebook 01)."""
    path = Path(path).resolve()
    if subset not in ("all", "demo"):
        raise InputError(f"subset must be 'all' or 'demo', got {subset!r}")
    raw = read_table(path)
    missing = [c for c in COLUMNS if c not in raw.columns and c not in OPTIONAL]
    if missing:
        hint = " (the file is separated by ';': did you mean ','?)" if len(raw.columns) == 1 and ";" in raw.columns[0] else ""
        raise InputError(f"{path}: missing column(s) {missing}; expected {list(COLUMNS)}{hint}")
    if raw.empty:
        raise InputError(f"{path}: a header but no study rows")
    rows, seen = [], {}
    for i, rec in enumerate(raw.to_dict("records")):
        line = i + 2
        rec = {k: str(v).strip() for k, v in rec.items()}
        sid = rec["study_id"]
        if sid == "":
            raise _bad(path, line, sid, "study_id", sid, "empty study_id")
        if sid in seen:
            raise _bad(path, line, sid, "study_id", sid, f"duplicate (first on line {seen[sid]})")
        seen[sid] = line
        out: dict[str, object] = {"study_id": sid}
        out["diagnosis"] = _choice(path, line, sid, "diagnosis", rec["diagnosis"], DIAGNOSES)
        out["sex"] = _choice(path, line, sid, "sex", rec["sex"], SEXES + ("",))
        out["age"] = _number(path, line, sid, "age", rec["age"], required=False)
        out["pet_units"] = _choice(path, line, sid, "pet_units", rec["pet_units"], PET_UNITS)
        bqml = out["pet_units"] == "BQML"
        for col in ("weight_kg", "injected_activity_mbq", "injection_to_scan_s"):
            out[col] = _number(path, line, sid, col, rec[col], required=bqml)
            low, high, hint = PLAUSIBLE[col]
            if not np.isnan(out[col]) and not low <= out[col] <= high:
                raise _bad(path, line, sid, col, rec[col], f"implausible: expected {low:g}..{high:g} ({hint})")
        out["split"] = _choice(path, line, sid, "split", rec["split"], SPLITS + ("",))
        out["demo"] = int(_choice(path, line, sid, "demo", rec.get("demo", "0") or "0", ("0", "1")))
        seed = rec.get("seed", "")
        if seed != "" and not re.fullmatch(r"\d+", seed):
            raise _bad(path, line, sid, "seed", seed, "expected a non-negative integer")
        out["seed"] = int(seed) if seed else -1
        for col in PATH_FIELDS:
            if rec[col] == "":
                raise _bad(path, line, sid, col, rec[col], "missing file path")
            file = Path(rec[col]) if Path(rec[col]).is_absolute() else path.parent / rec[col]
            if check_files and (subset == "all" or out["demo"] == 1) and not file.is_file():
                raise _bad(path, line, sid, col, rec[col], f"file not found: {file}")
            out[col] = str(file)
        rows.append(out)
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    if subset == "demo":
        df = df[df["demo"] == 1].reset_index(drop=True)
        if df.empty:
            raise InputError(f"{path}: subset 'demo' selects no study (no row has demo = 1); "
                             f"use -p subset=all or mark studies in the 'demo' column")
    return df


def largest_remainder(total: int, fractions: list[float]) -> list[int]:
    """Integer counts summing to `total`, as close as possible to total * fractions."""
    exact = np.asarray(fractions, dtype=float) * total / sum(fractions)
    counts = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]:
        counts[k] += 1
    return counts.tolist()


def _stratified_split(strata: pd.Series, rng: np.random.Generator) -> np.ndarray:
    """60/20/20 train/val/test labels, exact per stratum (largest remainder), shuffled within strata."""
    split = np.empty(len(strata), dtype=object)
    for _, idx in sorted(strata.groupby(strata).indices.items()):
        counts = largest_remainder(len(idx), [0.6, 0.2, 0.2])
        split[rng.permutation(idx)] = np.repeat(SPLITS, counts)
    return split


def _demo_flags(diagnosis: pd.Series, split: pd.Series, rng: np.random.Generator) -> np.ndarray:
    """The fixed demo subset: DEMO_PER_SPLIT train/val/test studies, diagnoses in proportion within each split."""
    demo = np.zeros(len(diagnosis), dtype=int)
    for name, n_demo in DEMO_PER_SPLIT.items():
        in_split = split.to_numpy() == name
        present = sorted(diagnosis[in_split].unique())
        sizes = [int((diagnosis[in_split] == d).sum()) for d in present]
        for d, k in zip(present, largest_remainder(min(n_demo, int(in_split.sum())), sizes)):
            idx = np.flatnonzero(in_split & (diagnosis.to_numpy() == d))
            demo[np.sort(rng.permutation(idx)[:k])] = 1
    return demo


def synthetic_cohort(n: int = 453, seed: int = 0) -> pd.DataFrame:
    """The synthetic cohort's manifest: paper proportions, 60/20/20 stratified split, demo subset (notebook 01)."""
    rng = np.random.default_rng(seed)
    counts = largest_remainder(n, list(PAPER_DIAGNOSIS_FRACTIONS.values()))
    diagnosis = rng.permutation(np.repeat(list(PAPER_DIAGNOSIS_FRACTIONS), counts))
    n_female = int(round(n * PAPER_FEMALE_FRACTION))
    sex = rng.permutation(np.repeat(["F", "M"], [n_female, n - n_female]))
    loc, scale = (np.array([AGE_BY_DIAGNOSIS[d][k] for d in diagnosis]) for k in (0, 1))
    age = np.clip(np.round(rng.normal(loc, scale)), 19, 95).astype(int)
    female = sex == "F"
    weight = np.round(np.clip(np.where(female, rng.normal(70, 14, n), rng.normal(84, 15, n)), 42, 150))
    activity = np.round(weight * rng.uniform(3.0, 4.0, n), 1)
    delay = np.round(np.clip(3700 * np.exp(rng.normal(0, 0.12, n)), 2700, 6000)).astype(int)
    ids = [f"PETCT_{i + 1:04d}" for i in range(n)]
    df = pd.DataFrame({
        "study_id": ids, "diagnosis": diagnosis, "sex": sex, "age": age, "weight_kg": weight,
        "injected_activity_mbq": activity, "injection_to_scan_s": delay,
        "ct_path": [f"data/synthetic/{s}/CT.nii.gz" for s in ids],
        "pet_path": [f"data/synthetic/{s}/PET.nii.gz" for s in ids],
        "seg_path": [f"data/synthetic/{s}/SEG.nii.gz" for s in ids],
        "pet_units": "BQML",
    })
    df["split"] = _stratified_split(df["diagnosis"], rng)
    df["demo"] = _demo_flags(df["diagnosis"], df["split"], rng)
    df["seed"] = rng.integers(0, 2**31 - 1, n)
    return df[list(COLUMNS)]


def write_manifest(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write a manifest CSV atomically (temporary name, then rename)."""
    path = Path(path)
    missing = [c for c in COLUMNS if c not in df.columns and c not in OPTIONAL]
    if missing:
        raise InputError(f"{path}: manifest lacks column(s) {missing}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    df[[c for c in COLUMNS if c in df.columns]].to_csv(tmp, index=False, lineterminator="\n")
    tmp.replace(path)


AUTOPET_METADATA = "Clinical Metadata FDG PET_CT Lesions.csv"
_AUTOPET_DIAGNOSIS = {"LUNG_CANCER": "lung_cancer", "LYMPHOMA": "lymphoma", "MELANOMA": "melanoma",
                      "NEGATIVE": "negative"}


def _autopet_metadata(root: Path) -> pd.DataFrame | None:
    """(subject, date, diagnosis, age, sex) rows from the release's clinical metadata CSV, if present."""
    candidates = sorted(root.glob("*etadata*.csv"))
    if not candidates:
        return None
    meta = pd.read_csv(candidates[0], dtype=str, keep_default_na=False)
    need = ["Subject ID", "diagnosis"]
    if any(c not in meta.columns for c in need):
        raise InputError(f"{candidates[0]}: metadata CSV lacks column(s) {[c for c in need if c not in meta.columns]}")
    out = pd.DataFrame({"subject": meta["Subject ID"].str.strip()})
    out["date"] = pd.to_datetime(meta.get("Study Date", pd.Series("", index=meta.index)), errors="coerce")
    diag = meta["diagnosis"].str.strip().str.upper()
    unknown = sorted(set(diag) - set(_AUTOPET_DIAGNOSIS))
    if unknown:
        raise InputError(f"{candidates[0]}: column 'diagnosis' has unknown value(s) {unknown}")
    out["diagnosis"] = diag.map(_AUTOPET_DIAGNOSIS)
    age = meta.get("age", pd.Series("", index=meta.index)).str.extract(r"(\d+)", expand=False)
    out["age"] = pd.to_numeric(age, errors="coerce")
    sex = meta.get("sex", pd.Series("", index=meta.index)).str.strip().str.upper()
    out["sex"] = sex.where(sex.isin(SEXES), "")
    out["source"] = str(candidates[0])
    return out


def _match_metadata(meta: pd.DataFrame, subject: str, study_dir: Path) -> pd.Series:
    """The metadata row of one study: by subject, disambiguated by the folder's leading MM-DD-YYYY date."""
    rows = meta[meta["subject"] == subject]
    if rows.empty:
        raise InputError(f"{study_dir}: subject {subject!r} not found in {meta['source'].iloc[0]} "
                         "(column 'Subject ID')")
    if rows["diagnosis"].nunique() > 1:
        m = re.match(r"(\d{2}-\d{2}-\d{4})", study_dir.name)
        date = pd.to_datetime(m.group(1), format="%m-%d-%Y") if m else pd.NaT
        dated = rows[rows["date"] == date]
        if dated["diagnosis"].nunique() != 1:
            raise InputError(f"{study_dir}: cannot match study to one diagnosis of subject {subject!r} by date")
        rows = dated
    return rows.iloc[0]


def scan_autopet(root: str | os.PathLike[str], seed: int = 0) -> pd.DataFrame:
    """A manifest for the autoPET / FDG-PET-CT-Lesions NIfTI release (PETCT_*/<study>/...) under `root` (PET as SUV)."""
    root = Path(root).resolve()
    meta = _autopet_metadata(root)
    if meta is None:
        raise InputError(f"{root}: no clinical metadata CSV (e.g. {AUTOPET_METADATA!r}); it supplies each study's "
                         "diagnosis, age and sex")
    rows = []
    for study_dir in sorted(p for p in root.glob("PETCT_*/*") if p.is_dir()):
        subject = study_dir.parent.name
        ct = study_dir / "CTres.nii.gz" if (study_dir / "CTres.nii.gz").is_file() else study_dir / "CT.nii.gz"
        pet, seg = study_dir / "SUV.nii.gz", study_dir / "SEG.nii.gz"
        if not pet.is_file() and (study_dir / "PET.nii.gz").is_file():
            raise InputError(f"{study_dir}: study {subject}/{study_dir.name} has PET.nii.gz (Bq/ml) but no SUV.nii.gz "
                             "(pet_path), and the metadata CSV gives no weight or injected activity to convert it; "
                             "expected SUV.nii.gz beside it, or write the study's manifest row by hand with "
                             "pet_units BQML, weight_kg, injected_activity_mbq and injection_to_scan_s")
        for field, file in (("ct_path", ct), ("pet_path", pet), ("seg_path", seg)):
            if not file.is_file():
                raise InputError(f"{study_dir}: study {subject}/{study_dir.name} lacks {file.name} ({field})")
        info = _match_metadata(meta, subject, study_dir)
        rows.append({
            "study_id": f"{subject}_{study_dir.name[:10]}", "subject": subject, "diagnosis": info["diagnosis"],
            "sex": info["sex"], "age": info["age"], "weight_kg": np.nan, "injected_activity_mbq": np.nan,
            "injection_to_scan_s": np.nan,
            "ct_path": str(ct), "pet_path": str(pet), "seg_path": str(seg), "pet_units": "SUV",
        })
    if not rows:
        raise InputError(f"{root}: no study folders PETCT_*/<study>/ found")
    df = pd.DataFrame(rows)
    if df["study_id"].duplicated().any():
        df["study_id"] = [f"{s}_{i}" for s, i in zip(df["subject"], df.groupby("subject").cumcount())]
    rng = np.random.default_rng(seed)
    subjects = df.groupby("subject", sort=True)["diagnosis"].first()
    subject_split = pd.Series(_stratified_split(subjects.reset_index(drop=True), rng), index=subjects.index)
    df["split"] = df["subject"].map(subject_split)
    df["demo"] = _demo_flags(df["diagnosis"], df["split"], rng)
    df["seed"] = ""
    return df[list(COLUMNS)]
