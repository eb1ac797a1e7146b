"""The notebook chain: every numbered notebook executed headless with papermill, in order, on one run dir."""
from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path
from typing import Any

from .config import get_config
from .runs import REPO_ROOT, record_provenance, write_json_atomic

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
JUNK_NOTEBOOK_METADATA = ("papermill", "widgets", "varInspector", "toc", "celltoolbar")
JUNK_CELL_METADATA = ("papermill", "execution", "collapsed", "scrolled", "ExecuteTime")


class ChainError(RuntimeError):
    """A notebook of the chain failed; the message names the notebook and the cell."""


def discover_notebooks(directory: Path = NOTEBOOK_DIR) -> list[Path]:
    """The numbered jupytext sources (NN_name.py) in order."""
    return sorted(p for p in directory.glob("[0-9][0-9]_*.py"))


def read_notebook(source: Path) -> Any:
    """A notebook node from its jupytext percent source."""
    import jupytext

    return jupytext.read(source)


def clean_notebook(nb: Any) -> Any:
    """A copy without execution noise: papermill/timing metadata, widget state, the injected-parameters cell."""
    nb = copy.deepcopy(nb)
    for key in JUNK_NOTEBOOK_METADATA:
        nb.metadata.pop(key, None)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    for cell in nb.cells:
        for key in JUNK_CELL_METADATA:
            cell.metadata.pop(key, None)
        if cell.metadata.get("tags") == []:
            cell.metadata.pop("tags")
        if cell.cell_type == "code":
            for out in cell.get("outputs", []):
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


def run_chain(profile: str = "demo", run_dir: str | os.PathLike[str] = "runs/demo",
              overrides: dict[str, Any] | None = None, only: list[str] | None = None,
              export: bool = False, notebooks: list[Path] | None = None) -> dict[str, float]:
    """Execute the numbered notebooks in order into run_dir/executed; returns seconds per notebook."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    overrides = dict(overrides or {})
    config = get_config(profile, **overrides)  # fail fast on a bad key or value
    run_path = Path(run_dir).resolve()
    (run_path / "executed").mkdir(parents=True, exist_ok=True)
    record_provenance(run_path, config)
    sources = notebooks if notebooks is not None else discover_notebooks()
    if only:
        sources = [s for s in sources if any(s.name.startswith(o) for o in only)]
    if not sources:
        raise ChainError("no numbered notebooks (NN_name.py) found to run")
    _kernel_env()
    timings: dict[str, float] = {}
    for i, source in enumerate(sources, 1):
        output = run_path / "executed" / (source.stem + ".ipynb")
        print(f"[{i}/{len(sources)}] {source.stem} ...", flush=True)
        start = time.perf_counter()
        try:
            pm.execute_notebook(read_notebook(source), str(output), cwd=str(source.parent), kernel_name="python3",
                                parameters={"profile": profile, "run_dir": str(run_path), "overrides": overrides},
                                progress_bar=sys.stderr.isatty(), log_output=False)
        except PapermillExecutionError as err:
            raise ChainError(f"notebook {source.name} failed in cell {err.cell_index} "
                             f"({err.ename}: {err.evalue}); executed copy: {output}") from None
        timings[source.stem] = round(time.perf_counter() - start, 1)
        print(f"    done in {timings[source.stem]:.1f} s", flush=True)
        if export:
            export_notebook(output, source)
    write_json_atomic(run_path / "chain.json", {"profile": profile, "overrides": overrides, "seconds": timings,
                                                "total_seconds": round(sum(timings.values()), 1)})
    return timings


def export_notebook(executed: Path, source: Path) -> Path:
    """Write an executed notebook, cleaned, as the committed .ipynb paired with its .py source."""
    import nbformat

    nb = clean_notebook(nbformat.read(executed, as_version=4))
    target = source.with_suffix(".ipynb")
    tmp = target.with_name(target.name + ".tmp")
    nbformat.write(nb, tmp)
    tmp.replace(target)
    return target
