"""Durable file writes shared by every side: a reader sees the old file or the new one, never
half of one, and after a crash the new file is either complete on disk or absent.

One function for what the deployment file, a station's ``station.json`` and the demo's
``processes.json`` each did by hand: write a temporary file beside the target, fsync it, rename
it over the target, fsync the directory so the rename itself survives a power loss.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(path: Path | str, text: str, *, mode: int = 0o644) -> Path:
    """Replaces `path` with `text` (UTF-8) atomically and durably; returns the path.

    `mode` is applied before the rename (mkstemp creates 0600). The parent directory must exist.
    """
    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    # The rename is durable only once the directory entry is on disk. Some filesystems refuse
    # to fsync a directory; the rename is still atomic there, only its durability is theirs.
    with contextlib.suppress(OSError):
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return target
