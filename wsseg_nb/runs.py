"""A run directory: the resolved config, the device, provenance and artifact paths shared by the notebooks."""
from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config, get_config
from .errors import InputError

REPO_ROOT = Path(__file__).resolve().parent.parent
RECORDED_PACKAGES = ("torch", "torchvision", "numpy", "scipy", "pandas", "nibabel", "imgaug", "pingouin",
                     "papermill", "jupytext", "matplotlib", "ipywidgets")


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """An existing path as given, else relative to the repository root (notebooks run from notebooks/)."""
    p = Path(path)
    return p if p.is_absolute() or p.exists() else REPO_ROOT / p


def pick_device(name: str = "auto") -> "torch.device":
    """CUDA when present (or asked for), else CPU."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but torch sees no CUDA device")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def git_commit() -> str | None:
    """The repository's HEAD commit (with '+dirty' when the tree has changes), or None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape the results."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary name, then rename: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


def write_csv_atomic(path: str | os.PathLike[str], frame: Any) -> Path:
    """Write a DataFrame as CSV (no index) to a temporary name, then rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)
    return path


@dataclass
class Run:
    """One run directory with its resolved config and device."""

    config: Config
    dir: Path
    device: "torch.device"

    @property
    def manifest(self) -> Path:
        """The manifest file of this run."""
        return resolve_path(self.config.manifest)

    @property
    def store(self) -> Path:
        """The slice store written by notebook 01."""
        return self.dir / "store"

    def path(self, *parts: str) -> Path:
        """A path inside the run directory (parent folders created)."""
        p = self.dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


def check_writable(path: str | os.PathLike[str], what: str = "run directory") -> Path:
    """`path` resolved and checked to be a folder that exists or could be created, without creating it."""
    path = Path(path).resolve()
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path}: exists and is not a folder")
    parent = next(p for p in (path, *path.parents) if p.exists())
    if not parent.is_dir():
        raise InputError(f"{what} {path}: cannot be created ({parent} is not a folder)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{what} {path}: not writable" if parent == path else
                         f"{what} {path}: cannot be created ({parent} is not writable)")
    return path


def writable_dir(path: str | os.PathLike[str], what: str = "run directory") -> Path:
    """`path` created if needed and checked writable; a file in the way or no permission is an InputError."""
    path = check_writable(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{what} {path}: cannot be created ({err.strerror})") from None
    return path


def record_provenance(run_dir: Path, config: Config) -> None:
    """Write the resolved config, package versions, git commit and command line to run_dir/run.json.

    An earlier run's record is kept, renamed to run_dir/history/run-<k>.json (k = 1, 2, ...), never overwritten.
    """
    record = run_dir / "run.json"
    if record.exists():
        history = run_dir / "history"
        history.mkdir(exist_ok=True)
        k = 1 + max((int(p.stem.split("-")[1]) for p in history.glob("run-*.json") if p.stem.split("-")[1].isdigit()),
                    default=0)
        record.replace(history / f"run-{k}.json")
    write_json_atomic(record, {
        "config": config.to_dict(), "packages": package_versions(), "git_commit": git_commit(),
        "argv": sys.argv, "platform": platform.platform(),
    })


def start(profile: str = "demo", run_dir: str | os.PathLike[str] = "runs/demo", **overrides: Any) -> Run:
    """Resolve the config, create the run directory, seed everything and pick the device (each notebook's setup)."""
    config = get_config(profile, **overrides)
    directory = writable_dir(run_dir)
    seed_everything(config.seed)
    run = Run(config=config, dir=directory, device=pick_device(config.device))
    if not (directory / "run.json").exists():
        record_provenance(directory, config)
    return run
