"""Manifest schema and validation, the synthetic cohort's table, the autoPET scanner."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from wsseg_nb import manifest

REPO = Path(__file__).resolve().parent.parent


def _write(tmp_path: Path, rows: list[dict]) -> Path:
    """A manifest in tmp_path whose relative file paths exist (empty files)."""
    for row in rows:
        for field in manifest.PATH_FIELDS:
            file = tmp_path / row[field]
            file.parent.mkdir(parents=True, exist_ok=True)
            file.touch()
    path = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _rows(n: int = 2) -> list[dict]:
    return manifest.synthetic_cohort(n=n, seed=1).to_dict("records")


def test_valid_manifest_resolves_paths(tmp_path):
    path = _write(tmp_path, _rows())
    df = manifest.load_manifest(path)
    assert list(df.columns) == list(manifest.COLUMNS)
    assert df["ct_path"].iloc[0] == str(tmp_path / _rows()[0]["ct_path"])
    assert df["weight_kg"].dtype.kind == "f"


@pytest.mark.parametrize("column,value,needle", [
    ("weight_kg", "", "missing"), ("injected_activity_mbq", "", "missing"), ("weight_kg", "-70", "positive"),
    ("diagnosis", "lungcancer", "expected one of"), ("sex", "X", "expected one of"),
    ("pet_units", "kBq", "expected one of"), ("split", "training", "expected one of"),
])
def test_bad_value_names_file_row_column_value(tmp_path, column, value, needle):
    rows = _rows(3)
    rows[1][column] = value
    path = _write(tmp_path, rows)
    with pytest.raises(ValueError) as err:
        manifest.load_manifest(path)
    msg = str(err.value)
    for part in (str(path), "line 3", rows[1]["study_id"], repr(column), repr(value), needle):
        assert part in msg


def test_suv_units_need_no_weight_or_dose(tmp_path):
    rows = _rows()
    rows[0].update(pet_units="SUV", weight_kg="", injected_activity_mbq="", injection_to_scan_s="")
    df = manifest.load_manifest(_write(tmp_path, rows))
    assert df["weight_kg"].isna().tolist() == [True, False]


def test_duplicate_study_id(tmp_path):
    rows = _rows(3)
    rows[2]["study_id"] = rows[0]["study_id"]
    with pytest.raises(ValueError, match=r"line 4 .*study_id.*duplicate \(first on line 2\)"):
        manifest.load_manifest(_write(tmp_path, rows))


def test_missing_file_names_study_field_and_file(tmp_path):
    rows = _rows()
    path = _write(tmp_path, rows)
    (tmp_path / rows[1]["pet_path"]).unlink()
    with pytest.raises(ValueError) as err:
        manifest.load_manifest(path)
    assert rows[1]["study_id"] in str(err.value) and "'pet_path'" in str(err.value)
    assert str(tmp_path / rows[1]["pet_path"]) in str(err.value)
    assert len(manifest.load_manifest(path, check_files=False)) == 2


def test_write_manifest_atomic_and_rejects_bad_frame(tmp_path):
    with pytest.raises(ValueError, match="lacks column"):
        manifest.write_manifest(pd.DataFrame({"study_id": ["a"]}), tmp_path / "m.csv")
    assert list(tmp_path.iterdir()) == []
    manifest.write_manifest(manifest.synthetic_cohort(n=5), tmp_path / "m.csv")
    assert [p.name for p in tmp_path.iterdir()] == ["m.csv"]


def test_synthetic_cohort_proportions_split_and_demo():
    df = manifest.synthetic_cohort()
    assert df["diagnosis"].value_counts().to_dict() == {"lung_cancer": 226, "melanoma": 145, "lymphoma": 82}
    assert df["sex"].value_counts().to_dict() == {"M": 258, "F": 195}
    assert df["study_id"].is_unique and df["seed"].is_unique
    assert 62 <= df["age"].median() <= 66 and df["age"].min() >= 19 and df["age"].max() <= 95
    by = df.groupby(["diagnosis", "split"]).size().unstack()
    assert by.loc["lung_cancer"].to_dict() == {"test": 45, "train": 136, "val": 45}
    assert by.loc["lymphoma"].to_dict() == {"test": 16, "train": 49, "val": 17}
    assert by.loc["melanoma"].to_dict() == {"test": 29, "train": 87, "val": 29}
    demo = df[df["demo"] == 1]
    assert demo["split"].value_counts().to_dict() == {"train": 60, "val": 12, "test": 12}
    assert demo["diagnosis"].value_counts().to_dict() == {"lung_cancer": 42, "melanoma": 27, "lymphoma": 15}
    assert demo.groupby("split")["diagnosis"].value_counts().loc["train"].to_dict() == \
        {"lung_cancer": 30, "melanoma": 19, "lymphoma": 11}
    dose = df["injected_activity_mbq"] / df["weight_kg"]
    assert dose.between(2.95, 4.05).all() and df["injection_to_scan_s"].between(2700, 6000).all()


def test_demo_subset_is_fixed():
    a, b = manifest.synthetic_cohort(), manifest.synthetic_cohort()
    assert a.equals(b)
    assert not a["seed"].equals(manifest.synthetic_cohort(seed=1)["seed"])


def test_committed_manifest_equals_synthetic_cohort(tmp_path):
    manifest.write_manifest(manifest.synthetic_cohort(), tmp_path / "m.csv")
    assert (tmp_path / "m.csv").read_bytes() == (REPO / "data_manifest.csv").read_bytes()
    demo = manifest.load_manifest(REPO / "data_manifest.csv", subset="demo", check_files=False)
    assert len(demo) == 84 and Path(demo["ct_path"].iloc[0]).is_absolute()


def _autopet_tree(root: Path) -> None:
    """Two autoPET-style studies: one lymphoma with CTres + SUV, one negative control with CT (no CTres) + SUV."""
    a = root / "PETCT_aaa" / "01-02-2003-NA-PET-CT Ganzkoerper-111"
    b = root / "PETCT_bbb" / "05-06-2007-NA-PET-CT Ganzkoerper-222"
    for folder, files in ((a, ("CT", "CTres", "PET", "SUV", "SEG")), (b, ("CT", "PET", "SUV", "SEG"))):
        folder.mkdir(parents=True)
        for name in files:
            (folder / f"{name}.nii.gz").touch()
    pd.DataFrame({"Subject ID": ["PETCT_aaa", "PETCT_aaa", "PETCT_bbb"], "Study UID": ["1", "1", "2"],
                  "Study Date": ["01-02-2003", "01-02-2003", "05-06-2007"],
                  "diagnosis": ["LYMPHOMA", "LYMPHOMA", "NEGATIVE"], "age": ["064Y", "064Y", "045Y"],
                  "sex": ["F", "F", "M"]}).to_csv(root / manifest.AUTOPET_METADATA, index=False)


def test_scan_autopet(tmp_path):
    _autopet_tree(tmp_path)
    df = manifest.scan_autopet(tmp_path).set_index("study_id")
    assert list(df.index) == ["PETCT_aaa_01-02-2003", "PETCT_bbb_05-06-2007"]
    a, b = df.loc["PETCT_aaa_01-02-2003"], df.loc["PETCT_bbb_05-06-2007"]
    assert Path(a["ct_path"]).name == "CTres.nii.gz" and Path(a["pet_path"]).name == "SUV.nii.gz"
    assert Path(b["ct_path"]).name == "CT.nii.gz" and Path(b["pet_path"]).name == "SUV.nii.gz"
    assert (a["pet_units"], b["pet_units"]) == ("SUV", "SUV")
    assert (a["diagnosis"], b["diagnosis"], a["age"], a["sex"]) == ("lymphoma", "negative", 64, "F")
    assert set(df["split"]) <= set(manifest.SPLITS)
    out = tmp_path / "autopet.csv"
    manifest.write_manifest(df.reset_index(), out)
    assert len(manifest.load_manifest(out)) == 2


def test_scan_autopet_refuses_pet_without_suv(tmp_path):
    _autopet_tree(tmp_path)
    (tmp_path / "PETCT_bbb" / "05-06-2007-NA-PET-CT Ganzkoerper-222" / "SUV.nii.gz").unlink()
    with pytest.raises(manifest.InputError, match=r"study PETCT_bbb/05-06-2007-NA-PET-CT Ganzkoerper-222 has "
                                                   r"PET.nii.gz \(Bq/ml\) but no SUV.nii.gz \(pet_path\), .*no weight"):
        manifest.scan_autopet(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [manifest.AUTOPET_METADATA, "PETCT_aaa", "PETCT_bbb"]


def test_scan_autopet_unknown_subject(tmp_path):
    _autopet_tree(tmp_path)
    folder = tmp_path / "PETCT_ccc" / "01-01-2010-x"
    folder.mkdir(parents=True)
    for name in ("CT", "SUV", "SEG"):
        (folder / f"{name}.nii.gz").touch()
    with pytest.raises(ValueError, match="subject 'PETCT_ccc' not found"):
        manifest.scan_autopet(tmp_path)
    (tmp_path / manifest.AUTOPET_METADATA).unlink()
    with pytest.raises(ValueError, match="no clinical metadata CSV"):
        manifest.scan_autopet(tmp_path)


def test_demo_unet_studies_are_the_first_30_of_the_demo_draw(monkeypatch):
    from wsseg_nb.config import DEMO_UNET_STUDIES

    monkeypatch.setitem(manifest.DEMO_PER_SPLIT, "train", 30)  # the draw before session 26 took 60
    df = manifest.synthetic_cohort()
    first30 = df.loc[(df["demo"] == 1) & (df["split"] == "train"), "study_id"]
    assert tuple(sorted(first30)) == DEMO_UNET_STUDIES
    assert set(DEMO_UNET_STUDIES) < set(manifest.load_manifest(REPO / "data_manifest.csv", subset="demo",
                                                               check_files=False).query("split == 'train'")["study_id"])
