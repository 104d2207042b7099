"""One error contract for every command-line entry point: one line, a meaningful exit code.

Every ``main(argv)`` of the package (build, train, evaluate, client, export, the stand-in server and
the pipeline runners) is wrapped by :func:`cli_main`:

- exit 0: success;
- exit 2: a **user error**, something the caller can fix: a bad argument, a missing or malformed input
  file, an output folder that cannot be written (read-only, not a folder), data that cannot train a
  model. Raised as :class:`UsageError`, ``ValueError``, ``FileNotFoundError``, ``PermissionError``...;
- exit 1: a **runtime failure**: full disk, an I/O error, a lock held by another run, a failed
  pipeline, a server that does not answer, or an unexpected exception (a bug);
- exit 130: interrupted (Ctrl-C).

Each failure prints exactly one line, ``error: <message>``, on stderr. A Python traceback is printed
only with ``--debug`` on the command line (removed before the command parses its arguments) or with
the environment variable ``CXR_TFP_DEBUG=1``.
"""
from __future__ import annotations

import errno
import functools
import os
import sys
from typing import Callable, List, Optional, Sequence

DEBUG_ENV = "CXR_TFP_DEBUG"
DEBUG_FLAG = "--debug"
EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
MAX_MESSAGE = 400

# OSError numbers that mean "the path you gave cannot be used" (fix the argument) rather than
# "the machine failed" (full disk, I/O error).
_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR,
                errno.EEXIST, errno.ENOTEMPTY, errno.ENAMETOOLONG, errno.ELOOP}
_DISK_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


class UsageError(ValueError):
    """The caller can fix this (exit 2)."""


class RuntimeFailure(RuntimeError):
    """The run failed for a reason outside the arguments (exit 1)."""


def debug_enabled(argv: Optional[Sequence[str]] = None) -> bool:
    """True when a traceback was asked for (``--debug`` in argv or ``CXR_TFP_DEBUG`` set)."""
    env = os.environ.get(DEBUG_ENV, "").strip().lower()
    return env not in ("", "0", "false", "no") or (argv is not None and DEBUG_FLAG in argv)


def _os_message(exc: OSError) -> str:
    what = exc.strerror or type(exc).__name__
    if exc.errno in (errno.EFBIG,):
        what = "file too large (file-size limit or full file system)"
    where = exc.filename
    return f"{what}: {where}" if where else what


def one_line(exc: BaseException) -> str:
    """A single line describing ``exc`` (first line of its message, capped)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        msg = _os_message(exc)
    else:
        text = str(exc).strip()
        if isinstance(exc, KeyError) and len(exc.args) == 1:
            text = f"missing key {exc.args[0]!r}"
        first = text.splitlines()[0].strip() if text else ""
        msg = first or type(exc).__name__
        if type(exc).__module__.startswith("tensorflow") and first:
            msg = f"{type(exc).__name__}: {first}"
    msg = " ".join(msg.split())
    return msg if len(msg) <= MAX_MESSAGE else msg[:MAX_MESSAGE - 3] + "..."


def exit_code(exc: BaseException) -> int:
    """2 for an error the caller can fix, 1 for everything else."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, RuntimeFailure):
        return EXIT_RUNTIME
    if isinstance(exc, OSError) and exc.errno is not None:
        if exc.errno in _DISK_ERRNOS:
            return EXIT_RUNTIME
        return EXIT_USAGE if exc.errno in _USER_ERRNOS else EXIT_RUNTIME
    if isinstance(exc, (UsageError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                        PermissionError, FileExistsError)):
        return EXIT_USAGE
    return EXIT_RUNTIME


def report(exc: BaseException, stream=None) -> int:
    """Print the one-line error for ``exc`` and return its exit code."""
    stream = stream or sys.stderr
    code = exit_code(exc)
    msg = "interrupted" if code == EXIT_INTERRUPTED else one_line(exc)
    print(f"error: {msg}", file=stream, flush=True)
    return code


def run(main: Callable[[Optional[List[str]]], int], argv: Optional[Sequence[str]] = None) -> int:
    """Call ``main(argv)`` under the error contract (see module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled(args)
    args = [a for a in args if a != DEBUG_FLAG]
    try:
        rc = main(args)
    except SystemExit as exc:  # argparse errors (exit 2) and explicit exits keep their code
        if isinstance(exc.code, str):
            print(f"error: {exc.code}", file=sys.stderr, flush=True)
            return EXIT_USAGE
        if not exc.code and ("-h" in args or "--help" in args):
            print(f"\n{DEBUG_FLAG} (every command): print the Python traceback on error (or {DEBUG_ENV}=1); "
                  f"exit codes: 0 ok, 1 runtime failure, 2 user error")
        return int(exc.code or 0)
    except BaseException as exc:  # noqa: BLE001  (the point: one line, not a traceback)
        if debug:
            import traceback

            traceback.print_exc()
        return report(exc)
    return int(rc or 0)


def cli_main(main: Callable[..., int]) -> Callable[..., int]:
    """Decorator for a ``main(argv=None) -> int``: the wrapped function never raises or tracebacks."""

    @functools.wraps(main)
    def wrapped(argv: Optional[Sequence[str]] = None) -> int:
        return run(main, argv)

    wrapped.unwrapped = main  # type: ignore[attr-defined]
    return wrapped
