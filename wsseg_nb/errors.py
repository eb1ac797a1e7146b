"""The one exception type for input a user can fix (the CLI prints its message and exits with status 2)."""
from __future__ import annotations


class InputError(ValueError):
    """Bad input: the message names the study or file, the field or key, the value, and what was expected."""
