"""Pseudonymous keys and patient-level splits from a salted hash.

Records never carry a source identifier (patient id, image id, DICOM UID, file name): only
``patient_key`` / ``example_key``, which are HMAC-SHA256 digests of the identifier under a salt.

The salt comes, in order of precedence, from
1. the ``salt`` argument (CLI: ``--salt``),
2. the environment variable ``CXR_TFP_SALT``,
3. the file named by ``CXR_TFP_SALT_FILE`` (a mounted secret: a Kubernetes / Vertex secret volume,
   Docker secret), its content without the trailing newline,
4. :data:`DEFAULT_SALT`.

The salt is a secret: pipelines and logs carry only :func:`salt_fingerprint` (a one-way digest that
tells builds apart), never the salt itself.

The default salt is public (it is in this file), so keys made with it are *pseudonymous, not
anonymous*: anyone holding the source IDs can recompute them. A site that must keep keys
unlinkable sets its own secret ``CXR_TFP_SALT`` and keeps it out of version control. The same salt
must be used for every build whose records are compared or joined, because it also decides the
train/eval/test split (:func:`assign_split`).

Identifiers are namespaced (``"nih"``, ``"mimic"``, ...) so that, e.g., patient ``123`` of NIH and
subject ``123`` of MIMIC get different keys, while MIMIC-CXR, EGD-CXR and REFLACX (all MIMIC
subjects) share the ``"mimic"`` namespace: one MIMIC subject gets the same key and the same split
in all three.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
from typing import Iterable, Optional, Sequence, Tuple

from cxr_tfp.features import EVAL_SPLIT, TEST_SPLIT, TRAIN_SPLIT

ENV_VAR = "CXR_TFP_SALT"
FILE_ENV_VAR = "CXR_TFP_SALT_FILE"
DEFAULT_SALT = "cxr-tfp-public-default-salt-v1"

DEFAULT_FRACTIONS: Tuple[float, float, float] = (0.8, 0.1, 0.1)

KEY_HEX_CHARS = 24  # 96 bits: collisions are negligible for any real dataset size


def get_salt(salt: Optional[str] = None) -> str:
    """The salt in force: ``salt``, else ``$CXR_TFP_SALT``, else the ``$CXR_TFP_SALT_FILE`` file's
    content, else :data:`DEFAULT_SALT`. A named salt file that cannot be read, or is empty, raises
    ``ValueError`` (a missing secret must not silently fall back to the public default)."""
    if salt:
        return str(salt)
    env = os.environ.get(ENV_VAR, "")
    if env:
        return env
    path = os.environ.get(FILE_ENV_VAR, "")
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                value = fh.read().rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"${FILE_ENV_VAR}: cannot read the salt file {path} "
                             f"({exc.strerror or type(exc).__name__})") from None
        if not value:
            raise ValueError(f"${FILE_ENV_VAR}: the salt file {path} is empty")
        return value
    return DEFAULT_SALT


def salt_fingerprint(salt: Optional[str] = None) -> str:
    """A short public fingerprint of the salt (to tell builds apart without revealing the salt)."""
    return hashlib.sha256(("fingerprint:" + get_salt(salt)).encode()).hexdigest()[:12]


def _digest(kind: str, namespace: str, value: str, salt: Optional[str]) -> bytes:
    msg = f"{kind}\x1f{namespace}\x1f{str(value).strip()}".encode("utf-8")
    return hmac.new(get_salt(salt).encode("utf-8"), msg, hashlib.sha256).digest()


def pseudonym(value: str, namespace: str, kind: str = "id", salt: Optional[str] = None,
              length: int = KEY_HEX_CHARS) -> str:
    """Salted, namespaced, one-way pseudonym of ``value`` (lower-case hex)."""
    if value is None or str(value).strip() == "":
        raise ValueError("cannot pseudonymise an empty identifier")
    return _digest(kind, namespace, value, salt).hex()[:length]


def patient_key(patient_id: str, namespace: str, salt: Optional[str] = None) -> str:
    """The record's ``patient_key``."""
    return pseudonym(patient_id, namespace, "patient", salt)


def example_key(image_id: str, namespace: str, salt: Optional[str] = None) -> str:
    """The record's ``example_key`` (unique per image, or per reading for REFLACX)."""
    return pseudonym(image_id, namespace, "example", salt)


def unit_interval(value: str, namespace: str, kind: str = "split", salt: Optional[str] = None) -> float:
    """A deterministic, uniform-looking number in [0, 1) from the salted hash of ``value``."""
    d = _digest(kind, namespace, value, salt)
    return int.from_bytes(d[:8], "big") / 2.0 ** 64


def parse_fractions(spec) -> Tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` or a 3-sequence -> normalised (train, eval, test) fractions."""
    if spec is None:
        return DEFAULT_FRACTIONS
    if isinstance(spec, str):
        parts = [p for p in re.split(r"[,\s]+", spec.strip()) if p]
    else:
        parts = list(spec)
    try:
        vals = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise ValueError(f"split fractions must be three numbers, got {spec!r}") from None
    if len(vals) != 3 or any(v < 0 for v in vals) or sum(vals) <= 0:
        raise ValueError(f"split fractions must be three non-negative numbers, got {spec!r}")
    total = sum(vals)
    return tuple(v / total for v in vals)  # type: ignore[return-value]


def assign_split(patient_id: str, namespace: str, salt: Optional[str] = None,
                 fractions: Sequence[float] = DEFAULT_FRACTIONS) -> str:
    """``train`` / ``eval`` / ``test`` for a patient, from the salted hash of its id.

    A pure function of (salt, namespace, patient id, fractions): every image of a patient lands in the
    same split, on any worker, in any run.
    """
    f = parse_fractions(fractions)
    u = unit_interval(patient_id, namespace, "split", salt)
    if u < f[0]:
        return TRAIN_SPLIT
    if u < f[0] + f[1]:
        return EVAL_SPLIT
    return TEST_SPLIT


def assign_train_eval(patient_id: str, namespace: str, salt: Optional[str] = None,
                      fractions: Sequence[float] = DEFAULT_FRACTIONS) -> str:
    """``train`` or ``eval`` for a patient an official list puts in train+validation.

    Uses the same hash as :func:`assign_split`, rescaled to the train:eval ratio.
    """
    f = parse_fractions(fractions)
    if f[0] + f[1] <= 0:
        return TRAIN_SPLIT
    u = unit_interval(patient_id, namespace, "split", salt)
    return TRAIN_SPLIT if u < f[0] / (f[0] + f[1]) else EVAL_SPLIT


def redact(text: str, secrets: Iterable[Optional[str]]) -> str:
    """Replace every occurrence of each non-empty secret in ``text`` with ``<redacted>``."""
    out = str(text)
    for s in sorted({str(s) for s in secrets if s}, key=len, reverse=True):
        if len(s) >= 3:
            out = out.replace(s, "<redacted>")
    return out
