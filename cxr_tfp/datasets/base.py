"""What every adapter yields, and small helpers they share.

An adapter reads a dataset's published tables on the launching machine (they are small: the NIH
label table is 112k rows) and yields, for each input, either

- a :class:`SourceRecord`: one image to decode, with its labels (over ``labels.FINDINGS`` plus a
  per-finding mask), its official split if any, and its annotations (boxes, ellipses, fixations)
  still in source coordinates (they are checked against the decoded image on the worker), or
- a :class:`Rejected`: an input that is already known to be unusable (malformed CSV row, unknown
  finding, annotation for an image that is not there), with its source and reason.

Accounting unit ("input"): one image row of the dataset's table (or one DICOM file), plus one per
annotation row (one box, one ellipse) and one per fixation set (all fixations of one image reading).
The build guarantees ``in == written + rejected`` over these units. Rows the adapter *skips* on
purpose (label rows whose image is not in a partial download, views filtered out) are counted in
``summary["skipped"]`` and are not inputs.

Source identifiers (patient id, image id) travel inside records only as far as the worker, which
replaces them by salted hashes (:mod:`cxr_tfp.privacy`); they never reach a TFRecord, a log line or
an error message.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import os
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from cxr_tfp.annotations import Gaze, Region
from cxr_tfp import labels as L
from cxr_tfp.labels import FINDINGS

NUM_FINDINGS = len(FINDINGS)
POLICIES = ("ignore", "zeros", "ones")


class DatasetLayoutError(FileNotFoundError):
    """The root does not look like the dataset (missing folder or label table). Fails the run at once."""


@dataclasses.dataclass
class SourceRecord:
    """One image to turn into a tf.Example (see module docstring)."""

    dataset: str
    namespace: str                        # privacy namespace for patient/example keys
    source: str                           # relative path (for dead letters)
    image_path: str                       # absolute path of the image file
    image_id: str                         # source image id (hashed into example_key)
    patient_id: Optional[str]             # source patient id; None = read from the DICOM header
    labels: np.ndarray                    # float32 [NUM_FINDINGS]
    label_mask: np.ndarray                # float32 [NUM_FINDINGS]
    view: Optional[str] = "UNKNOWN"       # None = read from the DICOM header
    split: Optional[str] = None           # official split (train/eval/test) or None = salted hash
    regions: List[Region] = dataclasses.field(default_factory=list)
    gaze: Optional[Gaze] = None
    frame: Optional[Tuple[float, float]] = None   # (w, h) the annotation coordinates refer to
    extra_inputs: int = 0                 # other annotation inputs folded into this record
    patient_key: Optional[str] = None     # salted key set instead of patient_id (cxr_tfp.workfiles)
    example_key: Optional[str] = None     # salted key set instead of image_id

    @property
    def n_annotation_inputs(self) -> int:
        return len(self.regions) + (1 if self.gaze is not None else 0) + self.extra_inputs


@dataclasses.dataclass
class Rejected:
    """An input the adapter already knows is unusable."""

    source: str
    stage: str
    reason: str
    kind: str = "example"                 # "example" or "annotation"


Item = Union[SourceRecord, Rejected]


class Adapter:
    """Base class. Subclasses set ``name`` and implement :meth:`check` and :meth:`items`."""

    name = "base"
    namespace = "base"
    label_table_hint = ""

    def __init__(self, root: Union[str, os.PathLike], **options):
        self.root = Path(root).expanduser()
        self.options = options
        self.skipped: Dict[str, int] = {}

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n

    def check_root(self) -> None:
        if not self.root.exists():
            raise DatasetLayoutError(f"--root {self.root} does not exist (expected the {self.name} dataset "
                                     f"folder: {self.label_table_hint})")
        if not self.root.is_dir():
            raise DatasetLayoutError(f"--root {self.root} is not a folder")

    def check(self) -> None:
        """Raise :class:`DatasetLayoutError` naming what is missing."""
        self.check_root()

    def items(self) -> Iterator[Item]:
        raise NotImplementedError


def empty_labels() -> Tuple[np.ndarray, np.ndarray]:
    return np.zeros(NUM_FINDINGS, np.float32), np.zeros(NUM_FINDINGS, np.float32)


def parse_finding_list(text: str, vocabulary: Sequence[str], vocabulary_desc: str,
                       require_nonempty: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """``'Effusion|Mass'`` -> (labels, mask) over FINDINGS; every finding of ``vocabulary`` is known.

    Raises ``ValueError`` naming an unknown finding, one outside ``vocabulary`` (described by
    ``vocabulary_desc`` in the message), an empty list when ``require_nonempty``, or
    'No Finding' together with findings.
    """
    labels, mask = empty_labels()
    for name in vocabulary:
        mask[L.FINDINGS.index(name)] = 1.0
    names = [n.strip() for n in str(text).split("|") if n.strip()]
    if require_nonempty and not names:
        raise ValueError("empty Finding Labels")
    for n in names:
        if n in L.NON_FINDINGS:
            continue
        try:
            h = L.harmonise(n)
        except KeyError:
            raise ValueError(f"unknown finding {n!r}") from None
        if h not in vocabulary:
            raise ValueError(f"finding {n!r} is not {vocabulary_desc}")
        labels[L.FINDINGS.index(h)] = 1.0
    if any(n in L.NON_FINDINGS for n in names) and labels.any():
        raise ValueError("'No Finding' together with findings")
    return labels, mask


def apply_policy(value: Optional[float], uncertain: str, blank: str) -> Optional[Tuple[float, float]]:
    """A CheXpert-style value (1, 0, -1, None=blank) -> (label, mask), per the policies.

    ``ignore`` -> mask 0; ``zeros`` -> (0, 1); ``ones`` -> (1, 1).
    """
    def pol(p: str) -> Tuple[float, float]:
        return {"ignore": (0.0, 0.0), "zeros": (0.0, 1.0), "ones": (1.0, 1.0)}[p]

    if value is None:
        return pol(blank)
    if value == 1:
        return 1.0, 1.0
    if value == 0:
        return 0.0, 1.0
    if value == -1:
        return pol(uncertain)
    raise ValueError(value)


def check_policy(name: str, value: str) -> str:
    if value not in POLICIES:
        raise ValueError(f"--{name} must be one of {', '.join(POLICIES)} (got {value!r})")
    return value


def parse_chexpert_value(text) -> Optional[float]:
    """'1.0' / '0' / '-1.0' / '' -> 1, 0, -1, None. Raises ValueError on anything else."""
    if text is None:
        return None
    t = str(text).strip()
    if t == "" or t.lower() in ("nan", "none"):
        return None
    v = float(t)
    if v not in (1.0, 0.0, -1.0):
        raise ValueError(f"label value {t!r} is not 1, 0, -1 or blank")
    return v


def open_text(path: Union[str, os.PathLike]) -> io.TextIOBase:
    """Open a CSV that may be gzipped (by extension), decoded strictly as UTF-8.

    A byte that is not UTF-8 raises :class:`DatasetLayoutError` naming the file, line and column
    (the whole table is decoded up front: label tables are a few MB, and a late failure would name
    no line).
    """
    p = str(path)
    try:
        if p.endswith(".gz"):
            with gzip.open(p, "rb") as fh:
                raw = fh.read()
        else:
            with open(p, "rb") as fh:
                raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DatasetLayoutError(f"{p}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DatasetLayoutError(f"{p}: line {line}, column {col}: byte 0x{raw[exc.start]:02x} is not UTF-8; "
                                 f"save the table as UTF-8") from None
    return io.StringIO(text, newline="")


def require_columns(path: Union[str, os.PathLike], header: Sequence[str], required: Sequence[str]) -> None:
    """Raise :class:`DatasetLayoutError` naming each required column absent from ``header``.

    A renamed column must fail the build, not silently turn every value into UNKNOWN.
    """
    missing = [c for c in required if c not in header]
    if not missing:
        return
    import difflib

    hints = []
    for c in missing:
        near = difflib.get_close_matches(c, header, n=1, cutoff=0.6)
        hints.append(f"{c!r}" + (f" (found {near[0]!r}: renamed?)" if near else ""))
    raise DatasetLayoutError(f"{path}: line 1: missing required column{'s' if len(missing) > 1 else ''} "
                             f"{', '.join(hints)}")


def read_csv(path: Union[str, os.PathLike], required: Sequence[str] = ()
             ) -> Tuple[List[str], Iterator[Tuple[int, List[str]]]]:
    """(header, iterator of (line number, fields)). Line numbers are 1-based file lines.

    ``required`` columns are checked at once (:func:`require_columns`); a row the CSV parser cannot
    read raises :class:`DatasetLayoutError` naming the file and line.
    """
    fh = open_text(path)
    reader = csv.reader(fh)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        fh.close()
        require_columns(path, [], required)
        return [], iter(())
    except csv.Error as exc:
        raise DatasetLayoutError(f"{path}: line 1: {exc}") from None
    require_columns(path, header, required)

    def rows():
        with fh:
            while True:
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    raise DatasetLayoutError(f"{path}: line {reader.line_num}: {exc}") from None
                if not fields or all(not f.strip() for f in fields):
                    continue
                yield reader.line_num, fields

    return header, rows()


def malformed_reason(n_fields: int, n_header: int) -> str:
    """Why a row with the wrong number of fields is rejected, naming the first bad column."""
    if n_fields > n_header:
        return f"{n_fields} fields, header has {n_header} (column {n_header + 1} is extra)"
    return f"{n_fields} fields, header has {n_header} (column {n_fields + 1} is missing)"


def read_dict_csv(path: Union[str, os.PathLike], required: Sequence[str] = ()
                  ) -> Iterator[Tuple[int, Dict[str, str]]]:
    """Rows as dicts keyed by the (stripped) header; rows with a wrong field count come as
    ``{"__malformed__": reason}``. ``required`` columns are checked before the first row."""
    header, rows = read_csv(path, required)
    for line, fields in rows:
        if len(fields) != len(header):
            yield line, {"__malformed__": malformed_reason(len(fields), len(header))}
            continue
        yield line, dict(zip(header, fields))


def find_first(root: Path, patterns: Sequence[str]) -> Optional[Path]:
    """First existing file matching any glob pattern (in pattern order, then sorted)."""
    for pat in patterns:
        hits = sorted(root.glob(pat))
        hits = [h for h in hits if h.is_file()]
        if hits:
            return hits[0]
    return None


def rel(path: Union[str, os.PathLike], root: Path) -> str:
    try:
        return os.path.relpath(str(path), str(root))
    except ValueError:
        return os.path.basename(str(path))


def to_float(text, name: str) -> float:
    try:
        v = float(str(text).strip())
    except (TypeError, ValueError):
        raise ValueError(f"{name} is not a number") from None
    if not np.isfinite(v):
        raise ValueError(f"{name} is not finite")
    return v


def iter_files(root: Path, suffixes: Iterable[str]) -> Iterator[Path]:
    """Files under root with one of the suffixes (case-insensitive), sorted, following no symlinked dirs."""
    suffixes = tuple(s.lower() for s in suffixes)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            if f.lower().endswith(suffixes):
                yield Path(dirpath) / f
