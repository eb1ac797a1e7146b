"""The notebook chain: every numbered notebook executed headless with papermill, in order, on one run dir."""
from __future__ import annotations

import ast
import copy
import dataclasses
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from .config import Config, get_config
from .errors import InputError
from .runs import REPO_ROOT, record_provenance, writable_dir, write_json_atomic

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
JUNK_NOTEBOOK_METADATA = ("papermill", "widgets", "varInspector", "toc", "celltoolbar")
KEPT_CELL_METADATA = {"tags": None, "jupyter": ("source_hidden",)}
"""The only cell metadata a committed notebook carries: tags (parameters, solution) and jupyter.source_hidden
(an exercise's solution cell starts collapsed); None keeps the whole value, a tuple the named sub-keys."""


class ChainError(RuntimeError):
    """A notebook of the chain failed; the message names the notebook and the cell."""


def discover_notebooks(directory: Path = NOTEBOOK_DIR) -> list[Path]:
    """The numbered jupytext sources (NN_name.py) in order."""
    return sorted(p for p in directory.glob("[0-9][0-9]_*.py"))


def read_notebook(source: Path) -> Any:
    """A notebook node from its jupytext percent source."""
    import jupytext

    return jupytext.read(source)


CHAIN_PARAMETERS = ("profile", "run_dir", "overrides")
"""Parameters the chain itself sets in every notebook."""


def notebook_parameters(source: Path) -> dict[str, Any]:
    """Name -> default of a notebook's `parameters` cell (literal assignments only)."""
    cells = [c for c in read_notebook(source).cells if "parameters" in c.metadata.get("tags", [])]
    names: dict[str, Any] = {}
    for cell in cells:
        for node in ast.parse(cell.source).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                names[node.targets[0].id] = ast.literal_eval(node.value)
    return names


def split_parameters(pairs: dict[str, Any], sources: list[Path]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """-p name=value pairs -> (config overrides, {notebook stem: its own parameters}); unknown names are an error.

    A name that is a config field is a config override (typed by `get_config`); one that a notebook's parameters
    cell declares goes to every notebook declaring it, parsed as a Python literal when it is one (else a string).
    """
    fields = {f.name for f in dataclasses.fields(Config)}
    declared = {s.stem: {k: v for k, v in notebook_parameters(s).items() if k not in CHAIN_PARAMETERS}
                for s in sources}
    overrides = {k: v for k, v in pairs.items() if k in fields}
    unknown = sorted(k for k in pairs if k not in fields and not any(k in d for d in declared.values()))
    if unknown:
        nb_names = sorted({k for d in declared.values() for k in d})
        raise InputError(f"unknown parameter(s) {unknown}: neither a config key nor a notebook parameter "
                         f"(notebook parameters: {nb_names}; config keys: python -m wsseg_nb run --help)")
    per_notebook = {stem: {k: _literal(pairs[k]) for k in d if k in pairs} for stem, d in declared.items()}
    return overrides, per_notebook


def _literal(value: Any) -> Any:
    """A CLI string as the Python literal it spells (True, 3, ['cam']), else the string itself."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


PROGRESS_LINE = re.compile(r"\b\d{1,3}%\|")
"""A tqdm bar's "k%|" (plain-text bars in papermill's stream outputs)."""


def kept_cell_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """A cell's metadata reduced to KEPT_CELL_METADATA (empty values dropped): papermill, timing, scroll and
    collapse state and any other editor state go."""
    kept: dict[str, Any] = {}
    for key, sub_keys in KEPT_CELL_METADATA.items():
        value = metadata.get(key)
        if sub_keys is not None and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k in sub_keys}
        if value:
            kept[key] = copy.deepcopy(value)
    return kept


def clean_notebook(nb: Any) -> Any:
    """A copy without execution noise: papermill/timing metadata, widget state, progress bars, the injected-parameters
    cell; cells keep only their tags and jupyter.source_hidden (KEPT_CELL_METADATA)."""
    nb = copy.deepcopy(nb)
    for key in JUNK_NOTEBOOK_METADATA:
        nb.metadata.pop(key, None)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    for cell in nb.cells:
        kept = kept_cell_metadata(cell.metadata)
        cell.metadata.clear()
        cell.metadata.update(kept)
        if cell.cell_type == "code":
            for out in cell.get("outputs", []):
                if out.output_type == "stream":  # a progress bar is the run's clock, not its result
                    out.text = "".join(line for line in out.text.splitlines(keepends=True)
                                       if not PROGRESS_LINE.search(line))
            cell.outputs = [out for out in cell.get("outputs", [])
                            if out.output_type != "stream" or out.text.strip()]  # a closed progress bar's blank line
            for out in cell.outputs:
                out.get("metadata", {}).pop("papermill", None)
                if "data" in out:
                    out["data"].pop("application/vnd.jupyter.widget-view+json", None)
    nb.metadata.setdefault("jupytext", {})["formats"] = "ipynb,py:percent"
    return nb


def _kernel_env() -> None:
    """Make the kernel papermill starts use this interpreter (its bin folder first on PATH)."""
    bin_dir = str(Path(sys.executable).parent)
    if not os.environ.get("PATH", "").startswith(bin_dir):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")


class _Lines:
    """stderr with every carriage return made a newline: one line per redraw in a log that is not a terminal."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text.replace("\r", "\n").replace("\n\n", "\n"))

    def flush(self) -> None:
        sys.stderr.flush()


def _cell_bar(name: str) -> dict[str, Any]:
    """papermill's per-cell bar (cell k of n, elapsed): redrawn in place on a terminal, a line every 10 s in a log."""
    if sys.stderr.isatty():
        return {"desc": name, "file": sys.stderr}
    return {"desc": name, "file": _Lines(), "mininterval": 10.0, "ncols": 80}


def run_chain(profile: str = "demo", run_dir: str | os.PathLike[str] = "runs/demo",
              overrides: dict[str, Any] | None = None, only: list[str] | None = None,
              export: bool = False, notebooks: list[Path] | None = None) -> dict[str, float]:
    """Execute the numbered notebooks in order into run_dir/executed; returns seconds per notebook.

    `overrides` may mix config keys and the notebooks' own parameters (`split_parameters`)."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    sources = notebooks if notebooks is not None else discover_notebooks()
    if only:
        chosen = [s for s in sources if any(s.name.startswith(o) for o in only)]
        if not chosen:
            raise InputError(f"--only {' '.join(only)} matches no notebook; the chain has "
                             f"{', '.join(s.stem for s in sources)}")
        sources = chosen
    if not sources:
        raise ChainError("no numbered notebooks (NN_name.py) found to run")
    overrides, own = split_parameters(dict(overrides or {}), sources)
    config = get_config(profile, **overrides)  # fail fast on a bad key or value
    run_path = writable_dir(run_dir)
    (run_path / "executed").mkdir(exist_ok=True)
    record_provenance(run_path, config)
    _kernel_env()
    timings: dict[str, float] = {}
    for i, source in enumerate(sources, 1):
        output = run_path / "executed" / (source.stem + ".ipynb")
        print(f"[{i}/{len(sources)}] {source.stem} ...", flush=True)
        start = time.perf_counter()
        try:
            pm.execute_notebook(read_notebook(source), str(output), cwd=str(source.parent), kernel_name="python3",
                                parameters={"profile": profile, "run_dir": str(run_path), "overrides": overrides,
                                            **own[source.stem]},
                                progress_bar=_cell_bar(source.stem), log_output=False, coalesce_streams=True)
        except PapermillExecutionError as err:
            raise ChainError(f"notebook {source.name} failed in cell {err.cell_index} "
                             f"({err.ename}: {err.evalue}); executed copy: {output}") from None
        timings[source.stem] = round(time.perf_counter() - start, 1)
        print(f"    done in {timings[source.stem]:.1f} s", flush=True)
        if export:
            export_notebook(output, source)
    if export:
        write_numerics(sources[0].parent / NUMERICS)
    write_json_atomic(run_path / "chain.json", {"profile": profile, "overrides": overrides,
                                                "notebook_parameters": {k: v for k, v in own.items() if v},
                                                "seconds": timings,
                                                "total_seconds": round(sum(timings.values()), 1)})
    return timings


NUMERICS = "numerics.json"
"""Beside the committed notebooks: the numerics fingerprint of the machine whose run they show."""


def write_numerics(path: Path) -> dict[str, Any]:
    """Record which machine's rounding made the exported outputs (`train.numerics_fingerprint`, CPU, threads)."""
    import platform

    import torch

    from .train import native_bf16, numerics_fingerprint

    record = {"fingerprint": numerics_fingerprint("cpu"), "bf16": native_bf16(torch.device("cpu")),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": platform.processor() or
              platform.machine()}
    write_json_atomic(path, record)
    return record


def export_notebook(executed: Path, source: Path) -> Path:
    """Write an executed notebook, cleaned, as the committed .ipynb paired with its .py source."""
    import nbformat

    nb = clean_notebook(nbformat.read(executed, as_version=4))
    target = source.with_suffix(".ipynb")
    tmp = target.with_name(target.name + ".tmp")
    nbformat.write(nb, tmp)
    tmp.replace(target)
    return target
