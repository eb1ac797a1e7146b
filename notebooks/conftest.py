"""nbval settings: the chain runs in a fresh temporary run directory, and a slow kernel may finish sending output."""
from __future__ import annotations

import re
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest

OUTPUT_TIMEOUT_S = 120
"""nbval waits only 5 s for the kernel's output after a cell returns; a loaded 2-core machine can take longer
to send a cell's figures."""
RUN_DIR = Path(tempfile.mkdtemp(prefix="wsseg-nbval-"))
"""Where the notebooks under test write: empty at the start, so no earlier run on disk can make them pass or fail."""


def _reproducible_here() -> bool:
    """Whether this machine trains as the one that made the committed outputs did: bf16 computed natively."""
    import torch

    from wsseg_nb.train import native_bf16

    return native_bf16(torch.device("cpu"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Point every notebook's `parameters` cell at RUN_DIR and raise nbval's per-cell output timeout.

    The committed outputs were made on a CPU with native bf16 (AVX512-BF16 / AMX); elsewhere training runs in
    float32 and follows another trajectory, so the output check of `# NBVAL_CHECK_OUTPUT` cells (the results
    table) is switched off there, with a warning, instead of failing on numbers no such machine reproduces.
    """
    reproducible = _reproducible_here()
    for item in items:
        options = getattr(item, "options", None)
        if options is not None and options["check"] and not reproducible:
            options["check"] = False
            warnings.warn(f"{item.nodeid}: output check skipped, this CPU has no native bf16 (the committed "
                          f"numbers come from one that has)", pytest.PytestWarning, stacklevel=2)
        if hasattr(item, "output_timeout"):
            item.output_timeout = OUTPUT_TIMEOUT_S
        cell = getattr(item, "cell", None)
        if cell is not None and "parameters" in cell.metadata.get("tags", []):
            cell.source, n = re.subn(r"^run_dir = .*$", f"run_dir = {str(RUN_DIR)!r}", cell.source, flags=re.M)
            if n != 1:
                raise pytest.UsageError(f"{item.nodeid}: the parameters cell sets no `run_dir = ...` line")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the run directory after a passing session; keep it to inspect after a failure."""
    if exitstatus == 0:
        shutil.rmtree(RUN_DIR, ignore_errors=True)
    else:
        print(f"\nnbval run directory kept for inspection: {RUN_DIR}")
