"""An exclusive lock on an output folder, so that two runs never write into one folder.

The lock is ``fcntl.flock`` on ``<folder>/.fedsim.lock``: the kernel releases it
when the holding process exits or dies (even by SIGKILL), so a lock left by a dead
process is taken over by the next run without any guessing from pids.  The file
records who holds it (pid, host, start time, command line) for the message a
second run gets.  The file itself is never deleted: deleting a lock file while
another process opens it lets two processes lock two different files.
"""
import datetime
import logging
import os
import socket
import sys
from pathlib import Path

from .errors import OutputFolderBusy
from .layout import LOCK_NAME

__all__ = ["OutputLock", "OutputFolderBusy", "LOCK_NAME"]

log = logging.getLogger("fedsim")


class OutputLock:
    """Hold ``folder``'s lock for the duration of a ``with`` block (or acquire/release).

    Parameters
    ----------
    folder : str or Path
        The output folder (created if missing).

    Raises
    ------
    OutputFolderBusy
        On :meth:`acquire`, when a live process (this one included, through
        another ``OutputLock``) holds the lock; the message names the holder.
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd = None

    def acquire(self):
        """Take the lock or raise :class:`OutputFolderBusy`; returns ``self``."""
        import fcntl

        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read(fd) or "another process"
            os.close(fd)
            raise OutputFolderBusy(
                f"output folder {self.folder} is in use by {holder}; wait for that run to finish or "
                f"write elsewhere (--out DIR or --name NAME)") from None
        previous = _read(fd)
        if previous:
            log.warning("output folder %s: taking over the lock left by %s, which is no longer running",
                        self.folder, previous)
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        info = f"pid {os.getpid()} on {socket.gethostname()} since {stamp} ({' '.join(sys.argv)})"
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode("utf-8", "replace"), 0)
        self._fd = fd
        return self

    def release(self):
        """Give the lock back (idempotent)."""
        import fcntl

        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # an empty file says "released cleanly"
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read(fd):
    """The holder line stored in the lock file ('' when empty)."""
    data = os.pread(fd, 4096, 0)
    return data.decode("utf-8", "replace").strip()
