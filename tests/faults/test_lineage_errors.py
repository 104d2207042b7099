"""`python -m pipeline.lineage VERSION --metadata X` where X is not an ML Metadata store: one line naming
X and what it is instead, exit 2 (was: a Python traceback from ML Metadata's SQL)."""
import os
import sqlite3

import pytest

from pipeline import lineage


def _cases(tmp_path):
    rand = tmp_path / "random.sqlite"
    rand.write_bytes(os.urandom(4096))
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    folder = tmp_path / "folder.sqlite"
    folder.mkdir()
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE patients (id TEXT)")
    con.commit()
    con.close()
    half = tmp_path / "half.sqlite"
    half.write_bytes(b"SQLite format 3\x00" + os.urandom(2000))
    return {rand: "not an SQLite file", empty: "empty file", folder: "is a folder",
            other: "an SQLite file but not an ML Metadata store (no Artifact, Context, Event, Execution, Type",
            half: "not a readable ML Metadata store", tmp_path / "missing.sqlite": "no such file"}


def test_metadata_that_is_not_a_store_is_one_line_exit_2(tmp_path, capsys):
    for path, reason in _cases(tmp_path).items():
        assert lineage.main(["123", "--metadata", str(path)]) == 2, path
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: --metadata {path}: "), err
        assert reason in err[0], (reason, err[0])
        assert "Traceback" not in err[0]
