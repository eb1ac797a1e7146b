"""Progress bars as plain text: readable in a terminal, in papermill's log and in a committed notebook's output."""
from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.std import tqdm

BAR_INTERVAL_S = 2.0
"""Least seconds between redraws: a long cell writes one line of output per redraw, not a flood."""


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm:
    """A text tqdm bar on stderr, never a notebook widget (a widget's state is lost when the notebook is saved)."""
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("mininterval", BAR_INTERVAL_S)
    kwargs.setdefault("ncols", 100)
    return tqdm(iterable, **kwargs)
