"""Per-class accuracy of predicted labels against wanted ones (a classifier's test set, a conditional G's requests)."""
from __future__ import annotations

import numpy as np


def per_class_accuracy(predicted: np.ndarray, wanted: np.ndarray, num_classes: int,
                       class_names: list[str] | None = None) -> dict:
    """{"per_class": {name: fraction of items of that wanted class predicted as it, or None when it has none},
    "mean": mean over classes that have items, "overall": fraction right over all items}."""
    predicted, wanted = np.asarray(predicted), np.asarray(wanted)
    names = class_names or [str(c) for c in range(num_classes)]
    per = {}
    for c in range(num_classes):
        mask = wanted == c
        per[names[c]] = float((predicted[mask] == c).mean()) if mask.any() else None
    seen = [v for v in per.values() if v is not None]
    return {"mean": float(np.mean(seen)) if seen else None,
            "overall": float((predicted == wanted).mean()) if len(wanted) else None, "per_class": per}
