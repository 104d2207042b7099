"""Hostile ingestion inputs and planted identifiers: nothing leaked, nothing decoded that should not be."""
from __future__ import annotations

import gzip
import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from cxr_tfp.records import build as B
from tests.faults import hostile

SECRETS = ["PAT-SECRET-77", "Secret^Name", "SECRET HOSPITAL", "SECRETMOD", "SECRETBODY", "1.2.826.0.1.99999"]


def every_output_text(out: Path, extra: str = "") -> bytes:
    """All bytes a user or attacker can read after a build: shards (decompressed), JSON, logs."""
    blob = [extra.encode()]
    for p in sorted(out.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            blob.append(gzip.decompress(data) if p.name.endswith(".gz") else data)
    return b"\n".join(blob)


@pytest.fixture(scope="module")
def hospital(tmp_path_factory):
    """A DICOM export with every problem at once, identifiers planted in headers and paths."""
    root = tmp_path_factory.mktemp("hospital") / "export"
    root.mkdir()
    who = dict(patient_id="PAT-SECRET-77", patient_name="Secret^Name")
    (root / "ok.dcm").write_bytes(hostile.dicom_with(**who, InstitutionName="SECRET HOSPITAL"))
    (root / "ok_copy.dcm").write_bytes((root / "ok.dcm").read_bytes())           # same SOPInstanceUID
    (root / "modality.dcm").write_bytes(hostile.dicom_with(**who, modality="SECRETMOD"))
    (root / "body.dcm").write_bytes(hostile.dicom_with(**who, body_part="SECRETBODY"))
    (root / "burned.dcm").write_bytes(hostile.dicom_with(**who, BurnedInAnnotation="YES"))
    (root / "bomb.dcm").write_bytes(hostile.dicom_with(**who, Rows=20000, Columns=20000))
    (root / "cut.dcm").write_bytes(hostile.truncated(hostile.dicom_with(**who), 0.4))
    (root / "junk.dcm").write_bytes(hostile.garbage(4096))
    (root / "private_ts.dcm").write_bytes(hostile.dicom_with(**who, StudyInstanceUID="1.2.826.0.1.99999"))
    return root


def _build(root, out, **kw):
    return B.build("dicom", root, out, image_size=16, workers=1, progress=False, max_rejected_fraction=1.0,
                   split_fractions="1,0,0", **kw)


def test_hostile_dicom_folder(hospital, tmp_path, capsys):
    s = _build(hospital, tmp_path / "o")
    dead = {d["source"]: d for d in map(json.loads, (tmp_path / "o" / "dead_letters.jsonl").read_text().splitlines())}
    assert s["examples"] == {"in": 9, "written": 2, "rejected": 7}
    assert dead["ok_copy.dcm"]["stage"] == "dedupe"
    assert "BurnedInAnnotation is YES" in dead["burned.dcm"]["reason"]
    assert "image is 20000x20000" in dead["bomb.dcm"]["reason"] and "before decoding" in dead["bomb.dcm"]["reason"]
    assert "Modality (value not shown)" in dead["modality.dcm"]["reason"]
    assert dead["body.dcm"]["reason"] == "BodyPartExamined is not the chest"
    assert {dead["cut.dcm"]["stage"], dead["junk.dcm"]["stage"]} == {"decode"}
    text = every_output_text(tmp_path / "o", capsys.readouterr().err)
    for secret in SECRETS:
        assert secret.encode() not in text, secret


def _process(data: bytes, tmp_path: Path, **cfg):
    """One file through the worker's code (what the Beam DoFn runs), without a whole build."""
    from cxr_tfp.records.process import ProcessConfig, process_record
    from cxr_tfp.datasets.base import SourceRecord, empty_labels

    p = tmp_path / "x.dcm"
    p.write_bytes(data)
    labels, mask = empty_labels()
    rec = SourceRecord(dataset="dicom", namespace="dicom", source="x.dcm", image_path=str(p), image_id=None,
                       patient_id=None, labels=labels, label_mask=mask, view=None)
    return process_record(rec, ProcessConfig(image_size=16, **cfg))


def test_keep_burned_in_flag_and_redact_sources(tmp_path):
    burned = hostile.dicom_with(BurnedInAnnotation="YES")
    ok, dead = _process(burned, tmp_path)
    assert ok is None and "BurnedInAnnotation is YES" in dead[0]["reason"]
    ok, dead = _process(burned, tmp_path, allow_burned_in=True)
    assert ok is not None and dead == []
    ct = hostile.dicom_with(modality="CT")
    _, dead = _process(ct, tmp_path)
    assert "Modality CT is not" in dead[0]["reason"]   # an allow-listed coded value, echoed by default
    _, dead = _process(ct, tmp_path, redact_sources=True)
    assert dead[0]["reason"].startswith("Modality is not") and " CT " not in dead[0]["reason"]
    _, dead = _process(hostile.dicom_with(samples_per_pixel=3, photometric="RGB",
                                          arr=np.zeros((32, 32, 3), np.uint8)), tmp_path, redact_sources=True)
    assert "RGB" not in dead[0]["reason"]


def test_hostile_raster_images_in_a_nih_build(tmp_path, capsys):
    """Bombs, lying headers, garbage, truncated and colour files among good ones: one dead letter each;
    patient ids planted in the label table never reach an output."""
    import csv

    from cxr_tfp.datasets.synthetic import generate

    root = generate(tmp_path / "root", n_patients=4, image_size=32, seed=4)
    images = sorted((root / "images").glob("*.png"))
    table = root / "Data_Entry_2017.csv"
    rows = list(csv.reader(table.read_text().splitlines()))
    col = rows[0].index("Patient ID")
    planted = []
    for r in rows[1:]:
        r[col] = f"SECRETPAT{r[col]}"
        planted.append(r[col])
    rows.append([images[-1].name, "Mass", "SECRETROW-Jane-Doe"])  # malformed, with a name in it
    with open(table, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    cases = {"png_bomb": (hostile.png_bomb(20000, 20000), "above the limit"),
             "jpeg_header": (hostile.jpeg_with_size(30000, 30000), "above the limit"),
             "big_black": (hostile.png_bomb(12000, 12000), "above the limit"),
             "garbage": (hostile.garbage(), "not an image"),
             "truncated": (hostile.truncated(images[4].read_bytes()), "truncated"),
             "colour": (hostile.small_png(32, colour=True), "colour")}
    victims = {}
    for img, (kind, (data, words)) in zip(images, cases.items()):
        img.write_bytes(data)
        victims[img.name] = words
    s = B.build("nih", root, tmp_path / "o", image_size=16, workers=1, progress=False, max_rejected_fraction=1.0)
    dead = [json.loads(x) for x in (tmp_path / "o" / "dead_letters.jsonl").read_text().splitlines()]
    assert s["examples"]["written"] == len(images) - len(cases)
    for name, words in victims.items():
        mine = [d for d in dead if d["source"].endswith(name) and d["kind"] == "example"]
        assert len(mine) == 1 and words in mine[0]["reason"], (name, mine)
    text = every_output_text(tmp_path / "o", capsys.readouterr().err)
    assert b"SECRET" not in text


def test_max_pixels_is_configurable(tmp_path):
    from cxr_tfp.io import decode_image
    from cxr_tfp.io.limits import TooLargeError

    png = hostile.small_png(64)
    assert decode_image(png).pixels.shape == (64, 64)
    with pytest.raises(TooLargeError, match="64x64 = 4096 pixels, above the limit of 4000"):
        decode_image(png, max_pixels=4000)


def test_work_shards_are_sealed_encrypted_and_owner_only(tmp_path, monkeypatch):
    """The files handed to Beam workers hold no identifier or source path, and only the owner can read them."""
    from cxr_tfp import workfiles
    from cxr_tfp.datasets.synthetic import generate

    root = generate(tmp_path / "root", n_patients=3, image_size=32, seed=6)
    kept = []
    real_write = workfiles.write_shard

    def spy(path, records, key):
        real_write(path, records, key)
        p = Path(path)
        kept.append((p.read_bytes(), stat.S_IMODE(p.stat().st_mode), stat.S_IMODE(p.parent.stat().st_mode),
                     records))

    monkeypatch.setattr(workfiles, "write_shard", spy)
    B.build("nih", root, tmp_path / "o", image_size=16, workers=1, progress=False)
    assert kept
    for blob, mode, dmode, records in kept:
        assert mode == 0o600 and dmode == 0o700
        assert all(r.patient_id is None and r.image_id is None and r.patient_key and r.example_key
                   for r in records)
        for r in records:  # the patient number is in the NIH file name: no path may be readable
            assert Path(r.image_path).name.encode() not in blob and r.source.encode() not in blob
        assert b"images/" not in blob
    # the build cleaned them up
    assert not list((tmp_path).rglob("*.bin"))


@pytest.mark.slow
def test_killed_build_leaves_no_readable_identifier(tmp_path):
    """kill -9 while Beam runs: whatever stays in the staging folder is owner-only and holds no id/path."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from cxr_tfp import staging as S
    from cxr_tfp.datasets.synthetic import generate

    repo = Path(__file__).resolve().parents[2]
    root = generate(tmp_path / "root", n_patients=40, image_size=48, seed=8)
    out = tmp_path / "o"
    env = dict(os.environ, PYTHONPATH=str(repo), TF_CPP_MIN_LOG_LEVEL="3")
    p = subprocess.Popen([sys.executable, "-m", "cxr_tfp.records.build", "--dataset", "nih", "--root", str(root),
                          "--out", str(out), "--image-size", "16", "--workers", "1", "--quiet"], cwd=repo, env=env)
    stage = S.staging_path(out)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 240 and p.poll() is None and not list(stage.glob(".work/*.bin")):
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    files = [f for f in stage.rglob("*") if f.is_file()]
    assert files, "the kill came too late"
    names = [f.name.encode() for f in (root / "images").glob("*.png")]
    pids = [ln.split(",")[3].encode() for ln in (root / "Data_Entry_2017.csv").read_text().splitlines()[1:]]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f
        blob = f.read_bytes()
        assert not any(n in blob for n in names), f
    assert stat.S_IMODE(stage.stat().st_mode) == 0o700
    assert pids  # (patient numbers are 5+ digits inside file names, covered by the names check)
