"""Command line: `python -m wsseg_nb {run,synth,preprocess,manifest,segment}`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .config import PROFILES, get_config
from .errors import InputError
from .runs import check_writable, resolve_path, writable_dir


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """key=value strings (repeatable -p) to a dict; values are typed by get_config."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"-p expects key=value, got {pair!r}")
        overrides[key.strip()] = value.strip()
    return overrides


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", choices=sorted(PROFILES), default="demo", help="settings profile (default demo)")
    parser.add_argument("--manifest", help="study table (default: the committed synthetic cohort)")
    parser.add_argument("-p", dest="params", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value (repeatable), e.g. -p cls_epochs=2; `run` also takes "
                             "the notebooks' own parameters, e.g. -p resume=False -p split=val")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The -p KEY=VALUE overrides, plus --manifest as an absolute path."""
    overrides = parse_overrides(args.params)
    if args.manifest:
        overrides["manifest"] = str(Path(args.manifest).resolve())
    return overrides


def _config(args: argparse.Namespace):
    return get_config(args.profile, **_overrides(args))


def cmd_run(args: argparse.Namespace) -> int:
    """Execute the notebook chain headless."""
    from .chain import ChainError, run_chain
    from .report import results_text

    try:
        timings = run_chain(args.profile, args.run_dir, _overrides(args), only=args.only, export=args.export_notebooks)
    except ChainError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"chain finished in {sum(timings.values()):.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    if not any(name.startswith("06") for name in timings):
        print("results/ not re-scored: notebook 06 did not run (add 06 to --only to score the test split)")
        return 0
    table = results_text(args.run_dir)
    if table:
        print("\nResults on the test split (the synthetic cohort unless --manifest named real data):\n" + table)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    """Generate the synthetic cohort's missing NIfTI files."""
    from .manifest import load_manifest
    from .phantom import generate_cohort

    config = _config(args)
    studies = load_manifest(resolve_path(config.manifest), subset=config.subset, check_files=False)
    generate_cohort(studies, workers=args.workers or config.workers)
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    """Resample every study to the profile's grid and write the slice store."""
    from .manifest import load_manifest
    from .slices import preprocess_cohort

    config = _config(args)
    check_writable(args.out, "slice store")
    studies = load_manifest(resolve_path(config.manifest), subset=config.subset)
    out = writable_dir(args.out, "slice store")
    store = preprocess_cohort(studies, out, spacing_mm=config.spacing_mm, slice_size=config.slice_size,
                              split_fractions=config.split_fractions, seed=config.seed,
                              workers=args.workers or config.workers)
    print(f"slice store at {args.out}: {len(store.index)} slices of {len(store.studies)} studies")
    return 0


def cmd_manifest_autopet(args: argparse.Namespace) -> int:
    """Write a manifest for an autoPET / FDG-PET-CT-Lesions NIfTI tree."""
    from .manifest import scan_autopet, write_manifest

    table = scan_autopet(Path(args.root))
    write_manifest(table, Path(args.out))
    print(f"wrote {args.out}: {len(table)} studies " + str(table["diagnosis"].value_counts().to_dict()))
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    """Segment one study with a trained run; the mask on the CT's grid, a JSON report and a lesion CSV."""
    from .infer import autopet_files, segment_study, study_files

    if args.study and (args.ct or args.pet):
        raise InputError("give either --study DIR or --ct and --pet, not both")
    if args.study:
        ct, pet, is_suv = autopet_files(args.study)
    elif args.ct and args.pet:
        ct, pet, is_suv = args.ct, args.pet, False
    else:
        raise InputError("segment needs --ct CT.nii.gz and --pet PET.nii.gz, or --study DIR (an autoPET folder)")
    files = study_files(ct, pet, args.suv or is_suv, args.weight, args.activity, args.delay)
    _, _, record = segment_study(args.run_dir, files, args.method, args.out, args.report, args.device)
    print(f"wrote {args.out}: {record['n_lesions']} lesions, MTV {record['mtv_ml']:.1f} ml, "
          f"TLG {record['tlg_g']:.1f} g" + (f"; report {args.report}" if args.report else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the CLI."""
    parser = argparse.ArgumentParser(prog="python -m wsseg_nb", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an input error")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute the numbered notebooks headless with papermill")
    _common(run)
    run.add_argument("--run-dir", default=None, help="run directory (default runs/<profile>)")
    run.add_argument("--only", nargs="*", help="run only notebooks whose names start with these prefixes")
    run.add_argument("--export-notebooks", action="store_true",
                     help="write the executed notebooks (cleaned) back to notebooks/*.ipynb")
    run.set_defaults(func=cmd_run)

    synth = sub.add_parser("synth", help="generate the synthetic cohort's NIfTI files")
    _common(synth)
    synth.add_argument("--workers", type=int, default=0, help="processes (default: config workers)")
    synth.set_defaults(func=cmd_synth)

    pre = sub.add_parser("preprocess", help="SUV, resampling, crop/pad, slice store")
    _common(pre)
    pre.add_argument("--out", required=True, help="slice store folder")
    pre.add_argument("--workers", type=int, default=0, help="processes (default: config workers)")
    pre.set_defaults(func=cmd_preprocess)

    seg = sub.add_parser("segment", help="segment one study with a trained run (mask on the CT's grid + report)")
    seg.add_argument("--run-dir", required=True, help="a run directory of the chain (classifier, thresholds, U-Net)")
    seg.add_argument("--ct", help="CT NIfTI in HU (the mask is written on its grid)")
    seg.add_argument("--pet", help="PET NIfTI, in Bq/ml (give --weight, --activity, --delay) or SUV (--suv)")
    seg.add_argument("--study", help="an autoPET study folder instead of --ct/--pet (CTres over CT, SUV over PET)")
    seg.add_argument("--suv", action="store_true", help="the PET is already body-weight SUV")
    seg.add_argument("--weight", type=float, help="body weight in kg")
    seg.add_argument("--activity", type=float, help="injected FDG activity in MBq")
    seg.add_argument("--delay", type=float, help="injection-to-scan delay in seconds")
    seg.add_argument("--method", default="scorecam", help="scorecam (default), cam, gradcampp, gradcam, unet, cam-unet")
    seg.add_argument("--out", required=True, help="mask to write (.nii.gz)")
    seg.add_argument("--report", help="JSON report to write; its lesion table goes beside it as .csv")
    seg.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: the run's device setting")
    seg.set_defaults(func=cmd_segment)

    man = sub.add_parser("manifest", help="write a manifest for real data")
    man_sub = man.add_subparsers(dest="layout", required=True)
    autopet = man_sub.add_parser("autopet", help="autoPET / FDG-PET-CT-Lesions NIfTI release")
    autopet.add_argument("root", help="folder holding PETCT_*/<study>/{CT,CTres,PET,SUV,SEG}.nii.gz")
    autopet.add_argument("--out", default="autopet_manifest.csv", help="manifest to write")
    autopet.set_defaults(func=cmd_manifest_autopet)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input is one line on stderr and exit status 2 (the traceback only with --debug)."""
    args = build_parser().parse_args(argv)
    if getattr(args, "run_dir", "unset") is None:
        args.run_dir = f"runs/{args.profile}"
    try:
        return args.func(args)
    except InputError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
