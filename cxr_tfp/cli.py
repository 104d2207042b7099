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
the environment variable ``CXR_TFP_DEBUG=1``. A bad argument is one line too, ``error: <what argparse
says> (see --help)``, with no usage dump (:func:`run` turns ``ArgumentParser.error`` into a
:class:`UsageError`).

TensorFlow's start-up noise (CUDA probing on a machine without a GPU, the CPU instruction-set notice,
absl's "log messages before InitializeLog" line) is hidden for every command at default verbosity and
shown with ``--debug``: :func:`quiet_tensorflow` runs from ``cxr_tfp/__init__.py`` when the process
is one of the project's entry points, before anything imports TensorFlow. It sets
``TF_CPP_MIN_LOG_LEVEL=2`` (unless the caller set it) and, because XLA's CUDA probe logs through absl
without honouring that variable, drops the known start-up lines written to stderr while TensorFlow
is imported and its devices are listed. Every other line of that window is written back unchanged.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from typing import Callable, Iterator, List, Optional, Sequence

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


# ---------------------------------------------------------------------------- one-line usage errors
def _argparse_error(self: argparse.ArgumentParser, message: str):
    raise UsageError(f"{message} (see --help)")


@contextlib.contextmanager
def one_line_usage_errors() -> Iterator[None]:
    """While active, every ``ArgumentParser.error`` (bad choice, missing argument...) raises a
    :class:`UsageError` instead of printing the usage block and exiting."""
    original = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = _argparse_error  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original  # type: ignore[method-assign]


# ------------------------------------------------------------------------ TensorFlow start-up noise
# Lines TensorFlow, XLA and absl write at import / device discovery on a machine without a GPU or with
# a generic CPU build. They say nothing about the run; --debug shows them.
TF_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|cudart_stub\.cc|cuda_platform\.cc|cuda_driver\.cc|"
    r"failed call to cuInit|cuda_executor\.cc|cpu_feature_guard\.cc|To enable the following instructions|"
    r"rebuild TensorFlow with the appropriate compiler flags|oneDNN custom operations are on|"
    r"Unable to register cu(DNN|FFT|BLAS) factory|computation_placer\.cc|TF-TRT Warning|"
    r"Could not find cuda drivers|cuda_dnn\.cc|cuda_fft\.cc|cuda_blas\.cc")
QUIET_PACKAGES = ("cxr_tfp", "serving", "pipeline", "benchmarks", "scripts")


def entry_point(orig_argv: Optional[Sequence[str]] = None) -> Optional[str]:
    """The project entry point this process runs (``cxr_tfp.evaluate``, ``pipeline/local_runner.py``),
    or None when it is something else (a notebook, pytest, another program importing the library)."""
    argv = list(getattr(sys, "orig_argv", sys.argv) if orig_argv is None else orig_argv)
    for i, a in enumerate(argv[1:], 1):
        if a == "-m" and i + 1 < len(argv):
            target = argv[i + 1]
            return target if target.split(".")[0] in QUIET_PACKAGES else None
        if a.startswith("-m") and len(a) > 2:
            return a[2:] if a[2:].split(".")[0] in QUIET_PACKAGES else None
        if not a.startswith("-"):   # a script: quiet when it lives in one of the project's folders
            parts = os.path.normpath(os.path.abspath(a)).split(os.sep)
            return a if len(parts) > 1 and parts[-2] in QUIET_PACKAGES else None
    return None


@contextlib.contextmanager
def filtered_stderr(pattern: "re.Pattern[str]" = TF_NOISE) -> Iterator[None]:
    """Collect what is written to file descriptor 2 (C++ logs included) and write it back afterwards,
    without the lines matching ``pattern``."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not pattern.search(ln)]
            if kept:
                os.write(2, "".join(kept).encode("utf-8"))


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Wraps the first ``import tensorflow`` (and its device discovery) in :func:`filtered_stderr`."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def quiet_exec(module):
            with filtered_stderr():
                exec_module(module)
                try:  # CUDA is probed on first use; do it now, inside the filter
                    module.config.list_physical_devices()
                except Exception:  # noqa: BLE001  (a broken driver shows up later, unfiltered)
                    pass

        spec.loader.exec_module = quiet_exec  # type: ignore[method-assign]
        return spec


def quiet_tensorflow(argv: Optional[Sequence[str]] = None) -> bool:
    """Hide TensorFlow's start-up noise unless ``--debug`` / ``CXR_TFP_DEBUG`` (see module docstring).

    Must run before TensorFlow is imported; returns True when the noise will be hidden.
    """
    if debug_enabled(sys.argv if argv is None else argv) or "tensorflow" in sys.modules:
        return False
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())
    return True


# ------------------------------------------------------------------------------------------ progress
class Progress:
    """``[label] 32/58 images (55%), 12 s, about 10 s left`` on stderr: at most every ``every_s``
    seconds, and always for the first and the last step, so a short run is not silent either."""

    def __init__(self, label: str, total: Optional[int], unit: str = "images", every_s: float = 10.0,
                 stream=None):
        import time

        self.label, self.total, self.unit, self.every_s = label, total, unit, every_s
        self.stream = stream
        self.done = 0
        self._clock = time.monotonic
        self._t0 = self._clock()
        self._last: Optional[float] = None

    def line(self) -> str:
        elapsed = self._clock() - self._t0
        if self.total:
            text = f"[{self.label}] {self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%), {elapsed:.0f} s"
            if 0 < self.done < self.total:
                text += f", about {elapsed * (self.total - self.done) / self.done:.0f} s left"
            return text
        return f"[{self.label}] {self.done} {self.unit}, {elapsed:.0f} s"

    def update(self, n: int = 1, extra: str = "") -> None:
        self.done += n
        now = self._clock()
        last = self.total is not None and self.done >= self.total
        if self._last is None or last or now - self._last >= self.every_s:
            self._last = now
            print(self.line() + (f"; {extra}" if extra else ""), file=self.stream or sys.stderr, flush=True)


def run(main: Callable[[Optional[List[str]]], int], argv: Optional[Sequence[str]] = None) -> int:
    """Call ``main(argv)`` under the error contract (see module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled(args)
    args = [a for a in args if a != DEBUG_FLAG]
    try:
        with one_line_usage_errors():
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
