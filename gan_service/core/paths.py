"""The one rule for paths the project ships: where a relative path that is not found is looked up.

The package carries its shipped models (``gan_service/models/``: the served generators and the evaluation
classifiers) as package data, so a wheel installed anywhere serves and evaluates without the checkout. A path
given by a user is taken as given (relative to the current directory); only a relative path that does not exist
there is looked up inside the installed package, so ``models/fmnist-cdcgan`` names the shipped model from any
directory unless the user has a ``models/fmnist-cdcgan`` of their own.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]       # the installed gan_service/ directory
SHIPPED_MODELS = PACKAGE_ROOT / "models"


def resolve_shipped(path: str | Path) -> Path:
    """``path`` itself when it exists or is absolute; else the same relative path inside the package if that
    exists; else ``path`` unchanged (so the caller's error names what the user typed)."""
    p = Path(path)
    if p.exists() or p.is_absolute():
        return p
    inside = PACKAGE_ROOT / p
    return inside if inside.exists() else p
