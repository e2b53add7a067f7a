"""Atomic file writes: a uniquely named temporary file in the same folder, fsync, rename.

A reader sees the old file or the new one, never half of one; two writers never
share a temporary name (each gets its own from ``tempfile.mkstemp``), so neither
can rename or delete the other's file.  A temporary left behind by a killed
process carries the writer's pid in its name, which lets a later writer remove
it once that process is gone (:func:`remove_stale_temporaries`).
"""
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "remove_stale_temporaries"]


def _prefix(path):
    """Temporary-name prefix of a target: hidden, tied to the target's name."""
    return f".{path.name}.tmp-"


def _pid_alive(pid):
    """Whether a process with this pid exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(path):
    """Delete temporaries of ``path`` whose writing process no longer exists; returns their names."""
    path = Path(path)
    removed = []
    prefix = _prefix(path)
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return removed
    for name in names:
        if not name.startswith(prefix):
            continue
        pid_text = name[len(prefix):].split("-", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and not _pid_alive(int(pid_text)):
            try:
                os.unlink(path.parent / name)
                removed.append(name)
            except FileNotFoundError:  # another writer removed it first
                pass
    return removed


def _fsync_dir(folder):
    """Make a rename durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` atomically.

    Parameters
    ----------
    path : str or Path
        Target; its folder is created if missing.  A symbolic link is written
        through (its target is replaced), as editors do.
    data : bytes-like

    Returns
    -------
    Path
        The file written (the link's target for a link).
    """
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{_prefix(path)}{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path, text):
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))
