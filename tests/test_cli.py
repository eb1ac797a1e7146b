"""The CLI's one error path: bad input is a one-line message naming the file or key, exit status 2, nothing written."""
from __future__ import annotations

from pathlib import Path

import pytest

from wsseg_nb.__main__ import main

ROOT = Path(__file__).resolve().parent.parent
HEADER = (ROOT / "data_manifest.csv").read_text().splitlines()[0]
ROW = (ROOT / "data_manifest.csv").read_text().splitlines()[1]


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    """Run the CLI; assert exit status 2 and a message on stderr holding `expected`, without a traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ")
    for part in expected:
        assert part in err, err
    return err


def _manifest(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "m.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


@pytest.mark.parametrize("text, expected", [
    ("", "empty file"),
    (HEADER + "\n", "a header but no study rows"),
    (HEADER.replace(",", ";") + "\n" + ROW.replace(",", ";") + "\n", "did you mean ','?"),
    ((HEADER + "\n" + ROW + "\n").encode().replace(b"melanoma", b"m\xe9lanoma"), "line 2: byte b'\\xe9' is not UTF-8"),
    (HEADER + "\n" + ROW.replace(",58.0,", ",heavy,") + "\n", "column 'weight_kg' = 'heavy': not a number"),
    (HEADER + "\n" + ROW + "\n", "subset 'demo' selects no study"),
    (HEADER + "\n" + ROW.replace(",58.0,", ",58000,") + "\n", "'weight_kg' = '58000': implausible: expected 20..300"),
    (HEADER + "\n" + ROW.replace(",3152,", ",52,") + "\n", "'injection_to_scan_s' = '52': implausible"),
])
def test_bad_manifest_is_refused_by_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   text: str | bytes, expected: str) -> None:
    out = tmp_path / "store"
    _fails(["preprocess", "--manifest", _manifest(tmp_path, text), "--out", str(out)], capsys, "m.csv", expected)
    assert not out.exists()


@pytest.mark.parametrize("param, expected", [
    ("cls_epochs=abc", "config cls_epochs='abc': expected int"),
    ("cls_epochs=0", "config cls_epochs=0: must be > 0"),
    ("cls_lr=-1e-3", "config cls_lr=-0.001: must be > 0"),
    ("slice_size=100", "slice_size=100: must be a positive multiple of 8"),
    ("split_fractions=0.6,0.3,0.3", "summing to 1"),
    ("cam_methods=cam,gradcamz", "cam_methods=('cam', 'gradcamz'): expected some of"),
    ("device=tpu", "config device='tpu': expected one of"),
    ("nonsense=1", "unknown parameter(s) ['nonsense']"),
    ("cam_unet_method=gradcamz", "config cam_unet_method='gradcamz': expected one of"),
    ("cam_unet_unsure_suv=-1", "config cam_unet_unsure_suv=-1.0: must be >= 0"),
    ("cls_head=authors", "needs cls_head 'gap_fc'"),
    ("unet_crop=60", "config unet_crop=60: expected 0 (whole slices) or a positive multiple of 8"),
    ("unet_crop=-8", "config unet_crop=-8: expected 0 (whole slices) or a positive multiple of 8"),
    ("cls_z_sigma_mm=-1", "config cls_z_sigma_mm=-1.0: must be >= 0 (0: each slice scored on its own)"),
    ("scorecam_weights=sigmoid", "config scorecam_weights='sigmoid' is not one of ('softmax', 'probability')"),
])
def test_bad_setting_is_refused_by_key_before_anything_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 param: str, expected: str) -> None:
    run_dir = tmp_path / "run"
    _fails(["run", "--run-dir", str(run_dir), "-p", param], capsys, expected)
    assert not run_dir.exists()


def test_unknown_notebook_and_bad_run_dir_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(["run", "--run-dir", str(tmp_path / "r"), "--only", "07"], capsys, "--only 07 matches no notebook",
           "02_classifier")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _fails(["run", "--run-dir", str(blocker)], capsys, f"run directory {blocker}: exists and is not a folder")
    _fails(["preprocess", "--out", str(blocker)], capsys, f"slice store {blocker}: exists and is not a folder")
    _fails(["preprocess", "--out", str(blocker / "store")], capsys,
           f"slice store {blocker / 'store'}: cannot be created ({blocker} is not a folder)")
    assert blocker.read_text() == "x"


def test_results_are_printed_only_when_notebook_06_scored_them(tmp_path: Path, monkeypatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from wsseg_nb import chain, report

    monkeypatch.setattr(report, "results_text", lambda run_dir: "TABLE FROM results/")
    monkeypatch.setattr(chain, "run_chain", lambda *args, **kwargs: {"05_baselines": 2.0})
    assert main(["run", "--run-dir", str(tmp_path), "--only", "05"]) == 0
    out = capsys.readouterr().out
    assert "TABLE FROM results/" not in out and "results/ not re-scored: notebook 06 did not run" in out
    monkeypatch.setattr(chain, "run_chain", lambda *args, **kwargs: {"05_baselines": 2.0, "06_statistics": 1.0})
    assert main(["run", "--run-dir", str(tmp_path), "--only", "05", "06"]) == 0
    assert "Results on the test split" in capsys.readouterr().out


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    from wsseg_nb.errors import InputError

    with pytest.raises(InputError, match="cls_epochs"):
        main(["--debug", "run", "--run-dir", str(tmp_path / "r"), "-p", "cls_epochs=abc"])


def test_a_new_run_keeps_the_earlier_run_record(tmp_path: Path) -> None:
    import json

    from wsseg_nb.config import get_config
    from wsseg_nb.runs import record_provenance

    record_provenance(tmp_path, get_config("demo", seed=1))
    record_provenance(tmp_path, get_config("demo", seed=2))
    record_provenance(tmp_path, get_config("demo", seed=3))
    seeds = [json.loads((tmp_path / name).read_text())["config"]["seed"]
             for name in ("history/run-1.json", "history/run-2.json", "run.json")]
    assert seeds == [1, 2, 3]


@pytest.mark.parametrize(("key", "value", "why"), [("unet_val_every", 0, "> 0"), ("cls_val_stride", 0, "> 0")])
def test_config_refuses_bad_validation_settings(key: str, value: int, why: str) -> None:
    from wsseg_nb.config import get_config
    from wsseg_nb.errors import InputError

    with pytest.raises(InputError, match=f"{key}.*{why}"):
        get_config("demo", **{key: value})
