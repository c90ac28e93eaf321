"""The one error type of the bottom floor's file readers."""
from __future__ import annotations


class DataError(ValueError):
    """A data file or folder that cannot be used; the message names it and says what was expected."""
