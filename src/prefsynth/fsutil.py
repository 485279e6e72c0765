"""Crash-safe file-system helpers shared by every stage.

Everything prefsynth writes goes through here: a file or a folder is built under a temporary name in the same
directory and renamed into place, so a crash at any moment leaves either the previous complete version or the new
complete version, never a torn one. Locks use `flock`, which the kernel releases when the holder dies, so a lock
left by a killed process never blocks the next run.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from prefsynth import faults
from prefsynth.errors import UserError

_TMP_MARK = ".tmp-"
HOST = socket.gethostname().replace("/", "_").replace("-", "_")  # in names of files a writer may leave behind


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    # pid and host: on a folder several machines share, a sweep removes only its own host's leftovers
    tmp = path.with_name(f"{path.name}{_TMP_MARK}{os.getpid()}-{HOST}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


# renameat2(RENAME_EXCHANGE) swaps two paths in one step (Linux >= 3.15). Where it is missing we fall back to two
# renames and repair the one-rename window on the next run (see `recover_dir`).
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def recover_dir(final: Path) -> None:
    """Undo a crash inside the two-rename fallback: put the old folder back if the new one never arrived,
    and sweep temporary folders left by dead writers."""
    final = Path(final)
    parent = final.parent
    if not parent.is_dir():
        return
    olds = sorted(parent.glob(f"{final.name}.old-*"))
    if olds and not final.exists():
        os.rename(olds[-1], final)
        olds = olds[:-1]
    for p in olds + list(parent.glob(f"{final.name}{_TMP_MARK}*")):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: Path, *, keep: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `final`; on success it replaces `final` in one step.

    keep=True starts the temporary folder as a copy of the current `final` (so a run that adds one config to a
    dataset keeps the others). On an exception the temporary folder is removed and `final` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(final)
    tmp = final.with_name(f"{final.name}{_TMP_MARK}{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if keep and final.is_dir():
        shutil.copytree(final, tmp)
    else:
        tmp.mkdir()
    try:
        yield tmp
        for root, _dirs, files in os.walk(tmp):
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    os.fsync(f.fileno())
        faults.point("write.before_swap")
        if final.exists():
            if not _exchange(tmp, final):
                old = final.with_name(f"{final.name}.old-{os.getpid()}")
                os.rename(final, old)
                os.rename(tmp, final)
                tmp = old
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.rename(tmp, final)
        fsync_dir(final.parent)
        faults.point("write.after_swap")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class FileLock:
    """An exclusive advisory lock on `path` (created if needed).

    flock is tied to the open file description: if the holder is killed, the kernel drops the lock, so stale locks
    recover by themselves. The holder's pid is written into the file only to make the waiting message useful.
    """

    def __init__(self, path: Path, *, timeout: float = 0.0, what: str = "this folder"):
        self.path = Path(path)
        self.timeout = timeout
        self.what = what
        self._fd: int | None = None

    def __enter__(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                    os.close(fd)
                    raise UserError(
                        f"{self.what} is in use by pid {holder} (lock {self.path}); wait for it to finish "
                        f"or raise the lock timeout"
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def check_writable_dir(path: Path, what: str = "output") -> Path:
    """Fail early, with one line, when `path` cannot become a folder we can write into."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} path {path} exists and is not a folder")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{what} path {path} cannot be created: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{what} path {path} is not writable")
    # os.access says yes to root everywhere; a real write also catches read-only file systems.
    try:
        fd, name = tempfile.mkstemp(prefix=".prefsynth-probe-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise UserError(f"{what} path {path} is not writable ({e.strerror})") from None
    return path
