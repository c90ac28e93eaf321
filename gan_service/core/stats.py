"""Reading a run's stats.jsonl (one JSON object per line, written by gan_service.training.loop.Recorder); torch-free."""
from __future__ import annotations

import json
from pathlib import Path


def read_stats(stats_path: str | Path) -> list[dict]:
    """The rows of a stats.jsonl in file order; blank lines and lines that are not JSON objects (e.g. the
    torn last line of a killed run) are skipped."""
    rows = []
    for line in Path(stats_path).read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows
