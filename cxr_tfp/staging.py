"""Nothing lost: write outputs into a staging folder, swap them in when complete; one writer at a time.

Used by the TFRecord build (the whole ``--out`` folder) and by training (``model.keras`` and the
SavedModel export).

Layout beside an output folder ``DIR/NAME`` (all in the same parent, so every move is a rename on
one file system)::

    DIR/.NAME.lock       who holds the output: {"pid", "host", "started", "what"} (flock'ed)
    DIR/.NAME.staging/   the run being written (0700; removed if the run dies and the next one starts)
    DIR/.NAME.previous/  the old output, only during the two renames of a swap

- :class:`OutputLock` takes an exclusive ``flock`` on the lock file. A second writer is refused at once
  with a message naming the holder. The kernel drops the lock when its holder dies (even by
  ``kill -9``), so a lock file left by a dead process is simply taken over.
- :func:`recover` (run under the lock) finishes or undoes an interrupted swap: if the output is gone
  and ``.previous`` exists, ``.previous`` is put back; stale staging folders are removed.
- :func:`swap_in` replaces the output by the staging folder: rename out -> .previous,
  rename staging -> out, remove .previous. A kill between the two renames is repaired by the next
  :func:`recover`; at no point is the previous output deleted before the new one is in place.

Limits: ``flock`` is advisory and local (on NFS it depends on the server's lock support); the output
folder must not be a mount point (it is renamed).
"""
from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Iterable, List, Optional, Union

from cxr_tfp.cli import RuntimeFailure, UsageError

PathLike = Union[str, os.PathLike]
OWNER_DIR = 0o700
OWNER_FILE = 0o600


class OutputLockedError(RuntimeFailure):
    """Another live process is writing the same output."""


def real_out(out: PathLike) -> Path:
    """The folder an output path really names: a symlinked ``--out`` (or a symlinked folder above it)
    is resolved, so a build writes where the link points and keeps the link, and the lock, staging
    folder and swap all sit beside the real folder (one lock whichever path names it). A dangling
    link resolves to its target (created by the build); a symlink loop is a :class:`UsageError`."""
    p = Path(out).expanduser().absolute()
    try:
        os.stat(p)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UsageError(f"{out}: symbolic link loop (the link points back to itself); fix the link or "
                             f"choose another output folder") from None
    return Path(os.path.realpath(p))


def _sibling(out: Path, suffix: str) -> Path:
    out = real_out(out)
    return out.parent / f".{out.name}.{suffix}"


def lock_path(out: PathLike) -> Path:
    return _sibling(Path(out), "lock")


def staging_path(out: PathLike) -> Path:
    return _sibling(Path(out), "staging")


def previous_path(out: PathLike) -> Path:
    return _sibling(Path(out), "previous")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def describe_holder(info: dict) -> str:
    if not info:
        return "another process (no holder information)"
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')} since {info.get('started', '?')}"


class OutputLock:
    """Exclusive writer lock for an output folder (see module docstring). Use as a context manager."""

    def __init__(self, out: PathLike, what: str = "run"):
        self.out = real_out(out)
        self.path = lock_path(self.out)
        self.what = what
        self.fd: Optional[int] = None
        self.took_over: Optional[dict] = None

    def acquire(self) -> "OutputLock":
        parent = self.out.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except PermissionError:
            raise UsageError(f"cannot create the folder holding {self.out}: permission denied") from None
        except OSError as exc:
            if exc.errno == errno.EROFS:
                raise UsageError(f"cannot write beside {self.out}: read-only file system") from None
            raise
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, OWNER_FILE)
            except PermissionError:
                raise UsageError(f"cannot write beside {self.out} ({parent} is not writable): choose "
                                 f"another output folder") from None
            except OSError as exc:
                if exc.errno == errno.EROFS:
                    raise UsageError(f"cannot write beside {self.out}: read-only file system") from None
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(self.path)
                os.close(fd)
                raise OutputLockedError(
                    f"{self.out} is being written by another {self.what}: {describe_holder(holder)}; "
                    f"wait for it to finish or stop it (lock {self.path})") from None
            # The previous holder may have unlinked the file between our open and flock: retry on
            # the file that is there now, or two writers could each hold a different inode.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        old = _read_holder(self.path)
        if old and old.get("pid") is not None:
            self.took_over = old
            alive = old.get("host") == socket.gethostname() and _pid_alive(int(old["pid"]))
            if not alive:
                print(f"[lock] took over the stale lock of {describe_holder(old)} (no longer running)",
                      file=sys.stderr)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "what": self.what}  # no command line: it may hold source paths
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding it: a waiter re-checks the inode
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def recover(out: PathLike) -> List[str]:
    """Repair what a killed run left beside ``out`` (call under :class:`OutputLock`); returns notes."""
    out = real_out(out)
    notes = []
    prev, stage = previous_path(out), staging_path(out)
    if prev.exists():
        if not out.exists():
            os.rename(prev, out)  # killed between the two renames of a swap: put the old output back
            notes.append(f"restored the previous {out.name} left by an interrupted swap")
        else:
            shutil.rmtree(prev, ignore_errors=True)
            notes.append("removed the previous output of a completed swap")
    if stage.exists():
        shutil.rmtree(stage, ignore_errors=True)
        notes.append(f"removed the stale staging folder {stage.name} of a killed run")
    return notes


def check_replaceable(out: PathLike, allowed: Iterable[str]) -> None:
    """Refuse to replace ``out`` if it holds anything but ``allowed`` entries (nothing lost)."""
    out = real_out(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder")
    allowed = set(allowed)
    foreign = sorted(p.name for p in out.iterdir() if p.name not in allowed)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UsageError(f"refusing to replace {out}: it holds {shown}, which a rebuild would not keep; "
                         f"choose an empty or new output folder")


def make_staging(out: PathLike) -> Path:
    """A fresh, owner-only staging folder beside ``out``."""
    stage = staging_path(out)
    if stage.exists():
        shutil.rmtree(stage)
    stage.parent.mkdir(parents=True, exist_ok=True)
    stage.mkdir(mode=OWNER_DIR)
    os.chmod(stage, OWNER_DIR)  # mkdir's mode is filtered by the umask
    return stage


def _umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def swap_in(stage: PathLike, out: PathLike, publish_mode: Optional[int] = None) -> None:
    """Replace ``out`` by ``stage`` (see module docstring); ``stage`` gets ``publish_mode`` first
    (default: what a new folder gets under the current umask)."""
    stage, out = Path(stage), real_out(out)
    os.chmod(stage, (0o777 & ~_umask()) if publish_mode is None else publish_mode)
    _fsync_dir(stage)
    prev = previous_path(out)
    if prev.exists():
        shutil.rmtree(prev)
    had_old = out.exists()
    if had_old:
        os.rename(out, prev)
    os.rename(stage, out)
    _fsync_dir(out.parent)
    if had_old:
        shutil.rmtree(prev, ignore_errors=True)


def replace_file(tmp: PathLike, final: PathLike) -> None:
    """Atomically put a fully written file ``tmp`` at ``final`` (same folder)."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    _fsync_dir(Path(final).parent)


class owner_only_umask:
    """Context manager: files and folders created inside are owner-only (umask 077)."""

    def __enter__(self):
        self.old = os.umask(0o077)
        return self

    def __exit__(self, *exc):
        os.umask(self.old)
