"""The build's intermediate work shards: salted keys instead of identifiers, encrypted, owner-only.

The launcher hands the records to the Beam workers through files (a ``beam.Create`` of 100k records
would bloat the pipeline graph). Those files would otherwise hold, in clear, what the outputs never
do: patient and image identifiers and source paths (NIH file names start with the patient number).
So, before anything is written:

1. :func:`seal_identifiers` replaces each record's ``patient_id`` / ``image_id`` by the salted
   ``patient_key`` / ``example_key`` (and fixes its split), exactly as the worker would compute them;
2. each shard is pickled and encrypted (Fernet: AES-128-CBC + HMAC, ``cryptography``) with a key made
   for this run. The key lives only in the pipeline graph (memory, for the DirectRunner), never on
   disk beside the shards: shards left behind by a killed run cannot be read back by anyone;
3. shards are created ``0600`` in an ``0700`` folder, and removed when the run ends (or by the next
   run's staging clean-up).
"""
from __future__ import annotations

import dataclasses
import os
import pickle
from typing import List, Optional, Sequence

from cxr_tfp.privacy import assign_split, example_key, patient_key


def new_key() -> bytes:
    from cryptography.fernet import Fernet

    return Fernet.generate_key()


def seal_identifiers(records: Sequence, salt: Optional[str], fractions) -> List:
    """Copies of ``records`` whose raw ids are replaced by salted keys (see module docstring).

    A record whose patient is only known from its DICOM header (``patient_id`` None) keeps
    ``patient_key`` None: the worker hashes the header value in memory.
    """
    out = []
    for rec in records:
        changes = {}
        if rec.patient_id is not None:
            changes["patient_key"] = patient_key(rec.patient_id, rec.namespace, salt)
            if rec.split is None:
                changes["split"] = assign_split(rec.patient_id, rec.namespace, salt, fractions)
            changes["patient_id"] = None
        if rec.image_id is not None:
            changes["example_key"] = example_key(rec.image_id, rec.namespace, salt)
            changes["image_id"] = None
        out.append(dataclasses.replace(rec, **changes) if changes else rec)
    return out


def write_shard(path: str, records: Sequence, key: bytes) -> None:
    """Pickle, encrypt and write ``records`` to ``path`` (0600)."""
    from cryptography.fernet import Fernet

    token = Fernet(key).encrypt(pickle.dumps(list(records), protocol=4))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(token)


def read_shard(path: str, key: bytes) -> List:
    """Inverse of :func:`write_shard` (any Beam file system path)."""
    from apache_beam.io.filesystems import FileSystems
    from cryptography.fernet import Fernet

    with FileSystems.open(path) as fh:
        return pickle.loads(Fernet(key).decrypt(fh.read()))
