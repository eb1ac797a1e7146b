"""Issue 12's probe: a catalogue of bad inputs fed to the CLI in-process, each outcome classified.

Run: `.venv/bin/python -m benchmarks.bad_inputs` (about a minute on 2 cores; needs a demo run in runs/demo for
the `segment` cases, which are skipped without one). Each case is one CLI call; an outcome is
- clear: exit status 2, one `error: ...` line on stderr without a traceback, naming what the case expects (the
  file or study, and the field or key), and nothing left behind that a later run would accept;
- valid: an input the project accepts by design (exit status 0), e.g. a {0, 255} label file;
- unclear / accepted / left behind: anything else (listed with its message).
"""
from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from test_slices import SIZE, SPACING, write_study  # noqa: E402  (the unit tests' tiny study writer)

from wsseg_nb.__main__ import main  # noqa: E402

HEADER = (ROOT / "data_manifest.csv").read_text().splitlines()[0]
ROW = (ROOT / "data_manifest.csv").read_text().splitlines()[1]
GRID = ["-p", f"slice_size={SIZE}", "-p", "spacing_mm=" + ",".join(str(v) for v in SPACING), "-p", "subset=all"]


@dataclass
class Case:
    """One bad input: how to build it (in a fresh folder) and what a clear refusal must name."""

    name: str
    argv: Callable[[Path], list[str]]
    expect: tuple[str, ...] = ()
    valid: bool = False
    leftover: Callable[[Path], bool] = field(default=lambda d: False)


def _manifest(d: Path, text: str | bytes) -> str:
    path = d / "m.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def _study_manifest(d: Path, break_: str | None) -> str:
    """A one-study manifest of a tiny study (tests/test_slices.py) broken in one way."""
    row = write_study(d / "data", "BAD", break_=break_)
    frame = pd.DataFrame([{**row, "sex": "M", "age": 50, "split": "train", "demo": 1, "seed": 0}])
    path = d / "m.csv"
    frame.to_csv(path, index=False)
    return str(path)


def _store_left(d: Path) -> bool:
    """A store with any study folder or temporary file in it (the case must leave none)."""
    store = d / "store"
    return store.exists() and any(p.name != "index.csv" or p.stat().st_size for p in store.iterdir())


def _preprocess(text: str | bytes, *expect: str, subset: str = "all") -> tuple[Callable[[Path], list[str]], tuple[str, ...]]:
    return (lambda d: ["preprocess", "--manifest", _manifest(d, text), "--out", str(d / "store"), "-p",
                       f"subset={subset}"]), ("m.csv", *expect)


def manifest_cases() -> list[Case]:
    """Bad study tables."""
    body = HEADER + "\n" + ROW + "\n"
    replace = {  # name: (text, expected message part)
        "empty file": ("", "empty file"),
        "header only": (HEADER + "\n", "no study rows"),
        "semicolons": (body.replace(",", ";"), "did you mean ','?"),
        "latin-1 byte": (body.encode().replace(b"melanoma", b"m\xe9lanoma"), "not UTF-8"),
        "weight not a number": (body.replace(",58.0,", ",heavy,"), "weight_kg"),
        "weight in grams": (body.replace(",58.0,", ",58000,"), "weight_kg"),
        "delay 52 s": (body.replace(",3152,", ",52,"), "injection_to_scan_s"),
        "missing column": ("\n".join(",".join(c for c in line.split(",")[:4] + line.split(",")[5:])
                                     for line in body.splitlines()) + "\n", "weight_kg"),
        "duplicate study": (body + ROW + "\n", "PETCT_"),
        "unknown split": (body.replace(",train,", ",training,").replace(",test,", ",training,")
                          .replace(",val,", ",training,"), "split"),
        "unknown pet_units": (body.replace(",BQML,", ",KBQML,"), "pet_units"),
        "missing CT file": (body.replace("data/synthetic/", "data/nowhere/"), "ct_path"),
    }
    cases = [Case(f"manifest: {name}", *_preprocess(text, part), leftover=_store_left)
             for name, (text, part) in replace.items()]
    return cases + [Case("manifest: subset selects none", *_preprocess(body, "selects no study", subset="demo"),
                         leftover=_store_left)]


def setting_cases() -> list[Case]:
    """Bad settings and notebook selections given to `run` (nothing may be written)."""
    bad = {
        "cls_epochs=abc": "cls_epochs", "cls_epochs=0": "cls_epochs", "cls_lr=-1e-3": "cls_lr",
        "slice_size=100": "slice_size", "split_fractions=0.6,0.3,0.3": "split_fractions",
        "cam_methods=cam,gradcamz": "cam_methods", "device=tpu": "device", "nonsense=1": "nonsense",
        "cls_head=vit": "cls_head", "cls_head=authors": "cam_methods", "cam_unet_epochs=-1": "cam_unet_epochs",
        "vgg_stride=2": "vgg_stride", "gate_threshold=1.5": "gate_threshold", "t_grid=0.1,2": "t_grid",
        "q_grid=120": "q_grid", "unet_threshold_grid=1": "unet_threshold_grid", "workers=0": "workers",
        "spacing_mm=0,2,2": "spacing_mm", "scorecam_topk=-1": "scorecam_topk", "vgg_norm=layer": "vgg_norm",
        "seed=one": "seed", "cam_unet_method=gradcamz": "cam_unet_method",
    }
    # preprocess builds the config before it reads the (absent) manifest: a setting it accepts shows up as a
    # manifest error instead of naming the key, i.e. as "unclear", and nothing heavy ever runs
    cases = [Case(f"setting: -p {p}", lambda d, p=p: ["preprocess", "--manifest", str(d / "absent.csv"), "--out",
                                                       str(d / "store"), "-p", p], (key,),
                  leftover=lambda d: (d / "store").exists()) for p, key in bad.items()]
    cases.append(Case("run: unknown notebook parameter", lambda d: ["run", "--run-dir", str(d / "run"), "--only", "01",
                                                                    "-p", "resum=False"], ("resum",),
                      leftover=lambda d: (d / "run").exists()))
    cases += [
        Case("run: --only 07", lambda d: ["run", "--run-dir", str(d / "run"), "--only", "07"], ("--only 07",),
             leftover=lambda d: (d / "run").exists()),
        Case("run: -p without =", lambda d: ["run", "--run-dir", str(d / "run"), "-p", "cls_epochs"], ("key=value",),
             leftover=lambda d: (d / "run").exists()),
        Case("run: run dir is a file", lambda d: (d / "f").write_text("x") and ["run", "--run-dir", str(d / "f")],
             ("exists and is not a folder",)),
        Case("preprocess: --out is a file", lambda d: (d / "f").write_text("x") and ["preprocess", "--out", str(d / "f")],
             ("exists and is not a folder",)),
        Case("preprocess: --out under a file",
             lambda d: (d / "f").write_text("x") and ["preprocess", "--out", str(d / "f" / "s")], ("not a folder",)),
    ]
    return cases


STUDY_BREAKS = {  # break_ of tests/test_slices.write_study: what the refusal must name (README: {0, 255} labels and
    # a SEG off the CT's grid are refused by design, with the fix in the message)
    "nan": "PET", "mask2": "binary", "mask255": "seg // 255", "no_overlap": "PET", "pet_short": "cover",
    "seg_shifted": "SEG", "seg_grid": "CTres", "suv_labelled": "SUV", "bqml_is_suv": "SUV",
    "activity_kbq": "injected_activity_mbq", "negative": "negative", "ct_uint16": "HU", "ct_air": "HU",
    "zero_pixdim": "pixdim", "no_orientation": "qform",
    "truncated": "CT.nii.gz", "weight": "weight_kg",
}


def study_cases() -> list[Case]:
    """Studies whose files are broken in one way, preprocessed through the CLI."""
    return [Case(f"study: {b}", lambda d, b=b: ["preprocess", "--manifest", _study_manifest(d, b), "--out",
                                                 str(d / "store"), *GRID], ("BAD", part) if part else (),
                 valid=part is None, leftover=(lambda d: False) if part is None else _store_left)
            for b, part in STUDY_BREAKS.items()]


def autopet_cases() -> list[Case]:
    """autoPET trees the scanner must refuse."""
    def pet_without_suv(d: Path) -> list[str]:
        folder = d / "tree" / "PETCT_x" / "01-01-2001-x"
        folder.mkdir(parents=True)
        for name in ("CT", "PET", "SEG"):
            (folder / f"{name}.nii.gz").touch()
        pd.DataFrame({"Subject ID": ["PETCT_x"], "Study UID": ["1"], "Study Date": ["01-01-2001"],
                      "diagnosis": ["LYMPHOMA"], "age": ["050Y"], "sex": ["F"]}).to_csv(
            d / "tree" / "Clinical Metadata FDG PET_CT Lesions.csv", index=False)
        return ["manifest", "autopet", str(d / "tree"), "--out", str(d / "m.csv")]

    return [
        Case("autopet: missing root", lambda d: ["manifest", "autopet", str(d / "none"), "--out", str(d / "m.csv")],
             ("none",), leftover=lambda d: (d / "m.csv").exists()),
        Case("autopet: empty root", lambda d: (d / "tree").mkdir() or ["manifest", "autopet", str(d / "tree"), "--out",
                                                                       str(d / "m.csv")], ("tree",),
             leftover=lambda d: (d / "m.csv").exists()),
        Case("autopet: PET without SUV", pet_without_suv, ("PETCT_x", "SUV.nii.gz"),
             leftover=lambda d: (d / "m.csv").exists()),
    ]


def segment_cases(run_dir: Path) -> list[Case]:
    """Bad calls of `segment` against a trained run."""
    ct = ROOT / "data" / "synthetic" / "PETCT_0051" / "CT.nii.gz"
    pet = ct.with_name("PET.nii.gz")
    base = ["segment", "--run-dir", str(run_dir), "--ct", str(ct), "--pet", str(pet)]
    dose = ["--weight", "98", "--activity", "338.8", "--delay", "3821"]
    out = lambda d: ["--out", str(d / "mask.nii.gz")]  # noqa: E731
    left = lambda d: (d / "mask.nii.gz").exists()  # noqa: E731
    return [
        Case("segment: no run dir", lambda d: ["segment", "--run-dir", str(d / "none"), "--ct", str(ct), "--pet",
                                                str(pet), *dose, *out(d)], ("none",), leftover=left),
        Case("segment: unknown method", lambda d: [*base, *dose, "--method", "gradcamz", *out(d)], ("--method",),
             leftover=left),
        *([] if (run_dir / "cam_unet" / "best.pt").exists() else [
            Case("segment: cam-unet untrained", lambda d: [*base, *dose, "--method", "cam-unet", *out(d)],
                 ("cam_unet",), leftover=left)]),
        Case("segment: Bq/ml without dose", lambda d: [*base, *out(d)], ("--weight",), leftover=left),
        Case("segment: Bq/ml given as --suv", lambda d: [*base, "--suv", "--method", "cam", *out(d)], ("SUV",),
             leftover=left),
        Case("segment: --study and --ct", lambda d: [*base, "--study", str(d), *dose, *out(d)], ("either",),
             leftover=left),
        Case("segment: missing CT", lambda d: ["segment", "--run-dir", str(run_dir), "--ct", str(d / "CT.nii.gz"),
                                               "--pet", str(pet), *dose, *out(d)], ("CT.nii.gz",), leftover=left),
    ]


def classify(case: Case) -> tuple[str, str]:
    """Run one case in a fresh folder: (outcome, message)."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        err, sink = io.StringIO(), io.StringIO()
        try:
            argv = case.argv(d)
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(sink):
                rc = main(argv)
        except SystemExit as stop:  # argparse
            rc = stop.code
        except Exception as exc:  # an escaped library error is exactly what the probe looks for
            return "unclear", f"{type(exc).__name__}: {exc}"[:200]
        message = err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else ""
        if case.valid:
            return ("valid" if rc == 0 else "refused valid"), message[:200]
        if rc == 0:
            return "accepted", ""
        if case.leftover(d):
            return "left behind", message[:200]
        clear = (rc == 2 and message.startswith("error: ") and "Traceback" not in err.getvalue()
                 and all(part.lower() in message.lower() for part in case.expect))
        return ("clear" if clear else "unclear"), message[:200]


def main_probe() -> pd.DataFrame:
    """Every case's outcome; prints the counts and the cases that are not clear."""
    cases = manifest_cases() + setting_cases() + study_cases() + autopet_cases()
    run_dir = ROOT / "runs" / "demo"
    if (run_dir / "segment" / "thresholds.json").is_file() and (ROOT / "data" / "synthetic" / "PETCT_0051").is_dir():
        cases += segment_cases(run_dir)
    else:
        print("(no trained runs/demo with its data: the segment cases are skipped)")
    rows = [(case.name, *classify(case)) for case in cases]
    table = pd.DataFrame(rows, columns=["case", "outcome", "message"])
    print(f"{len(table)} bad inputs: " + ", ".join(f"{k} {v}" for k, v in table["outcome"].value_counts().items()))
    with pd.option_context("display.max_colwidth", 140, "display.width", 200):
        print(table[~table["outcome"].isin(["clear", "valid"])].to_string(index=False))
    return table


if __name__ == "__main__":
    np.seterr(all="ignore")
    main_probe()
