"""nbval settings for the notebooks: allow a slow kernel to finish sending a long cell's output."""
from __future__ import annotations

import pytest

OUTPUT_TIMEOUT_S = 120
"""nbval waits only 5 s for the kernel's output after a cell returns; a loaded 2-core machine can take longer
to send a cell's figures."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Raise nbval's per-cell output timeout."""
    for item in items:
        if hasattr(item, "output_timeout"):
            item.output_timeout = OUTPUT_TIMEOUT_S
