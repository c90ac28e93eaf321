"""The one way this project writes a file or a directory that readers must never see half-written.

A temporary name in the same directory, the bytes flushed and fsynced, one ``os.replace`` onto the final name,
then an fsync of the directory so the rename itself survives a power cut. A crash at any moment leaves either
the old file, the new one, or an unlisted temporary that the writer can recognise as its own.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: str | Path) -> None:
    """fsync a directory (its entries: renames, new files); a no-op where the platform cannot open one."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: bytes | str | Callable[[BinaryIO], None], tmp: str | Path | None = None) -> Path:
    """Write ``data`` (bytes, text as UTF-8, or a function writing to a binary file) to ``path`` atomically.

    ``tmp``: the temporary path (same directory); default ``.NAME.tmp-PID`` beside ``path``."""
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def publish_dir(tmp: str | Path, final: str | Path) -> Path:
    """Move the finished directory ``tmp`` onto ``final`` (missing or empty) after fsyncing every file in it."""
    tmp, final = Path(tmp), Path(final)
    for p in tmp.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    return final
