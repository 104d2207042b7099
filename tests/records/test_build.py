"""End to end: the Beam build on the synthetic set with injected bad inputs, the real NIH sample, DICOMs, the CLI."""
import gzip
import io
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_tfp import features as F
from cxr_tfp.records.build import RejectedFractionError, build, main
from cxr_tfp.datasets.base import DatasetLayoutError
from cxr_tfp.datasets.synthetic import generate

REPO = Path(__file__).resolve().parents[2]


def read_records(out: Path):
    """{split: [tf.train.Example]} from OUT/{split}/*.tfrecord.gz (plain Python TFRecord framing)."""
    import tensorflow as tf

    got = defaultdict(list)
    for sp in ("train", "eval", "test"):
        for f in sorted((out / sp).glob("*.tfrecord.gz")):
            for raw in tf.data.TFRecordDataset(str(f), compression_type="GZIP"):
                got[sp].append(tf.train.Example.FromString(raw.numpy()))
    return got


def feat(ex, key):
    f = ex.features.feature[key]
    return (list(f.bytes_list.value) or list(f.int64_list.value) or list(f.float_list.value))


def inject_bad_inputs(root: Path) -> dict:
    """Break a generated synthetic set in the ways the issue lists; return what was injected."""
    imgs = sorted((root / "images").glob("*.png"))
    # 1. a truncated PNG
    data = imgs[0].read_bytes()
    imgs[0].write_bytes(data[: len(data) // 2])
    # 2. a file that is not an image, with a label row
    (root / "images" / "00009001_000.png").write_text("this is not a png")
    # 3. a row with an unknown finding (its image exists)
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(root / "images" / "00009002_000.png")
    # 4. a malformed row (too few fields; its image exists)
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(root / "images" / "00009003_000.png")
    with open(root / "Data_Entry_2017.csv", "a") as fh:
        fh.write("00009001_000.png,Mass,0,9001,40,F,PA,64,64,0.143,0.143,\n")
        fh.write("00009002_000.png,Mass|Dragonpox,0,9002,40,F,PA,64,64,0.143,0.143,\n")
        fh.write("00009003_000.png,Mass\n")
    # 5. a box outside the image (for a good image)
    good = imgs[1].name
    with open(root / "BBox_List_2017.csv", "a") as fh:
        fh.write(f"{good},Mass,500,500,40,40\n")
    # 6. fixations for an image that is not there
    with open(root / "egd" / "fixations.csv", "a") as fh:
        fh.write("99,0,00009999_000,1,0.5,0.5,0.5,0.1,0.5,1,1,30,30\n")
    return {"truncated": imgs[0].name, "boxed": good}


@pytest.fixture(scope="module")
def injected(tmp_path_factory):
    base = tmp_path_factory.mktemp("build")
    root = generate(base / "root", n_patients=24, image_size=64, seed=1)
    info = inject_bad_inputs(root)
    out = base / "out"
    summary = build("synthetic", root, out, image_size=32, workers=1, max_rejected_fraction=0.5, progress=False)
    return root, out, summary, info


def test_every_input_is_accounted_for(injected):
    _, out, s, _ = injected
    assert s["status"] == "ok"
    assert s["in"] == s["written"] + s["rejected"]
    for kind in ("examples", "annotations"):
        assert s[kind]["in"] == s[kind]["written"] + s[kind]["rejected"]
    dead = [json.loads(l) for l in (out / "dead_letters.jsonl").read_text().splitlines()]
    assert len(dead) == s["rejected"]
    assert sum(s["written_per_split"].values()) == s["examples"]["written"] == 48 - 1
    # 48 generated images + 3 injected image rows; one generated PNG truncated
    assert s["examples"]["in"] == 51 and s["examples"]["rejected"] == 4


def test_each_injected_problem_is_a_dead_letter_with_its_reason(injected):
    _, out, _, info = injected
    dead = [json.loads(l) for l in (out / "dead_letters.jsonl").read_text().splitlines()]
    by_reason = {d["reason"]: d for d in dead}
    assert any(d["source"] == f"images/{info['truncated']}" and d["stage"] == "decode" and "truncated" in d["reason"]
               for d in dead)
    assert any(d["source"] == "images/00009001_000.png" and "not an image" in d["reason"] for d in dead)
    assert "unknown finding 'Dragonpox'" in by_reason
    assert any("malformed row" in r for r in by_reason)
    outside = [d for d in dead if "lies outside" in d["reason"]]
    assert len(outside) == 1 and outside[0]["source"].startswith("BBox_List_2017.csv:")
    assert outside[0]["kind"] == "annotation"
    assert any(d["reason"] == "fixations for an image that is not in the label table" for d in dead)
    for d in dead:
        assert set(d) == {"source", "stage", "reason", "kind", "dataset"}


def test_records_follow_the_contract_and_splits_never_share_a_patient(injected):
    _, out, s, _ = injected
    got = read_records(out)
    assert {sp: len(v) for sp, v in got.items()} == s["written_per_split"]
    split_of = {}
    for sp, exs in got.items():
        for ex in exs:
            pk = feat(ex, F.PATIENT_KEY)[0]
            assert split_of.setdefault(pk, sp) == sp, "patient in two splits"
            img = np.array(Image.open(io.BytesIO(feat(ex, F.IMAGE)[0])))
            assert img.shape == (32, 32) and feat(ex, F.IMAGE_SIZE) == [32]
            assert len(feat(ex, F.LABELS)) == F.NUM_FINDINGS
            assert feat(ex, F.DATASET) == [b"synthetic"]
            if feat(ex, F.HAS_GAZE)[0]:
                assert np.array(Image.open(io.BytesIO(feat(ex, F.GAZE)[0]))).max() == 255
    ann = s["annotated"]
    assert ann["train"]["any"] > 0 and ann["eval"]["any"] + ann["test"]["any"] > 0
    assert ann["train"]["gaze"] > 0 and ann["train"]["boxes"] > 0


def test_records_parse_with_the_contract_spec(injected):
    import tensorflow as tf

    _, out, _, _ = injected
    f = sorted((out / "train").glob("*.tfrecord.gz"))[0]
    batch = next(iter(tf.data.TFRecordDataset(str(f), compression_type="GZIP").batch(4)))
    parsed = F.parse_examples(batch)
    assert parsed[F.LABELS].shape == (4, F.NUM_FINDINGS)


def test_no_source_identifiers_in_records(injected):
    root, out, _, _ = injected
    blob = b"".join(gzip.open(f).read() for f in out.rglob("*.tfrecord.gz"))
    names = [p.stem for p in (root / "images").glob("*.png")]
    assert names and not any(n.encode() in blob for n in names)
    assert b"00000001" not in blob


def test_summary_counts_labels_and_skips(injected):
    _, _, s, _ = injected
    tr = s["positives"]["train"]
    assert set(tr) >= {"Cardiomegaly", "Effusion", "Mass", "Nodule"} and sum(tr.values()) > 0
    assert s["labelled"]["train"]["Mass"] == s["written_per_split"]["train"]
    assert s["rejected_by_stage"]["decode"] == 2


def test_rejected_fraction_over_threshold_fails_with_the_cause(injected, tmp_path):
    root, _, _, _ = injected
    with pytest.raises(RejectedFractionError, match="max-rejected-fraction"):
        build("synthetic", root, tmp_path / "o", image_size=32, workers=1, max_rejected_fraction=0.01, progress=False)
    # A failed build leaves --out alone; its summary and dead letters (no images) go to OUT.failed/.
    assert not (tmp_path / "o").exists()
    s = json.loads((tmp_path / "o.failed" / "summary.json").read_text())
    assert s["status"] == "failed" and "rejected" in s["error"]
    assert (tmp_path / "o.failed" / "dead_letters.jsonl").stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "o.failed").iterdir()) == ["dead_letters.jsonl", "summary.json"]
    rc = main(["--dataset", "synthetic", "--root", str(root), "--out", str(tmp_path / "o2"), "--image-size", "32",
               "--workers", "1", "--max-rejected-fraction", "0.01", "--quiet"])
    assert rc == 1
    # Under the threshold from the tables alone, over it once the images are decoded: fails after writing.
    with pytest.raises(RejectedFractionError, match="most common") as e:
        build("synthetic", root, tmp_path / "o3", image_size=32, workers=1, max_rejected_fraction=0.05,
              progress=False)
    s3 = e.value.summary
    assert s3["status"] == "failed" and s3["in"] == s3["written"] + s3["rejected"]
    assert 0.05 < s3["rejected_fraction"] and "error" in json.loads((tmp_path / "o3.failed" / "summary.json").read_text())
    assert "o3.failed/dead_letters.jsonl" in str(e.value)


def test_wrong_root_and_missing_label_table_fail_at_once(tmp_path, capsys):
    assert main(["--dataset", "nih", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "images").mkdir()
    assert main(["--dataset", "nih", "--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "Data_Entry_2017" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    with pytest.raises(DatasetLayoutError):
        build("mimic", tmp_path, tmp_path / "o", progress=False)


def test_real_nih_sample(shared_data, tmp_path):
    s = build("nih", shared_data / "nih-sample", tmp_path / "nih", image_size=32, workers=1, progress=False)
    assert s["examples"] == {"in": 24, "written": 24, "rejected": 0}
    assert s["annotations"] == {"in": 12, "written": 12, "rejected": 0}
    assert sum(v["boxes"] for v in s["annotated"].values()) == 12
    from cxr_tfp.records.accounting import annotation_line

    line = annotation_line(s)   # the build's last progress line (and the pipeline's ExampleGen log)
    assert line.startswith("annotated examples: train ") and line.count("boxes") == 3
    assert sum(int(x) for x in __import__("re").findall(r"boxes (\d+)", line)) == 12
    assert s["skipped"]["label row without its image on disk (partial download)"] == 112096
    got = read_records(tmp_path / "nih")
    assert sum(len(v) for v in got.values()) == 24


def test_real_dicoms_monochrome1_inverted(shared_data, tmp_path):
    import pydicom

    # The MONOCHROME1 sample is an edited copy sharing the original's SOPInstanceUID; give it its own.
    root = tmp_path / "dicoms"
    root.mkdir()
    for f in (shared_data / "dicom").iterdir():
        ds = pydicom.dcmread(f)
        if f.name.startswith("Fake"):
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(root / f.name)
    s = build("dicom", root, tmp_path / "d", image_size=32, workers=1, progress=False,
              split_fractions="1,0,0")
    assert s["examples"]["written"] == 2
    imgs = [np.array(Image.open(io.BytesIO(feat(ex, F.IMAGE)[0]))).astype(int) for ex in read_records(tmp_path / "d")["train"]]
    assert np.abs(imgs[0] + imgs[1] - 255).max() <= 2
    assert all(feat(ex, F.VIEW) == [b"PA"] for ex in read_records(tmp_path / "d")["train"])


def test_real_dicoms_sharing_a_sop_instance_uid_are_written_once(shared_data, tmp_path):
    s = build("dicom", shared_data / "dicom", tmp_path / "d", image_size=32, workers=1, progress=False,
              split_fractions="1,0,0", max_rejected_fraction=0.5)
    assert s["examples"] == {"in": 2, "written": 1, "rejected": 1}
    assert s["rejected_by_stage"] == {"dedupe": 1}


def test_dicom_folder_rejects_rgb_and_ct(tmp_path):
    from tests.io.dicom_factory import make_dicom, ramp

    root = tmp_path / "hospital"
    root.mkdir()
    (root / "ok.dcm").write_bytes(make_dicom(ramp(), patient_id="PAT-SECRET-1", patient_name="Secret^Person"))
    (root / "rgb.dcm").write_bytes(make_dicom(np.zeros((32, 32, 3), np.uint8), samples_per_pixel=3, photometric="RGB"))
    (root / "ct.dcm").write_bytes(make_dicom(ramp(), modality="CT"))
    s = build("dicom", root, tmp_path / "o", image_size=32, workers=1, progress=False, max_rejected_fraction=0.9)
    assert s["examples"] == {"in": 3, "written": 1, "rejected": 2}
    text = (tmp_path / "o" / "dead_letters.jsonl").read_text() + (tmp_path / "o" / "summary.json").read_text()
    assert "colour DICOM" in text and "Modality CT" in text and "SECRET" not in text.upper()
    blob = b"".join(gzip.open(f).read() for f in (tmp_path / "o").rglob("*.tfrecord.gz"))
    assert b"SECRET" not in blob and b"Secret" not in blob


def test_redact_sources_hashes_paths(injected, tmp_path):
    root, _, _, _ = injected
    build("synthetic", root, tmp_path / "r", image_size=32, workers=1, max_rejected_fraction=0.5, progress=False,
          redact_sources=True)
    text = (tmp_path / "r" / "dead_letters.jsonl").read_text()
    assert "images/" not in text and "redacted:" in text


@pytest.mark.slow  # starts two Beam worker processes (~14 s); the in-process build is tested above
def test_cli_multiprocessing_two_workers_and_beam_passthrough(tmp_path):
    """The CLI as a user runs it: 2 DirectRunner worker processes, a Beam option passed through unchanged."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, "-m", "cxr_tfp.records.build", "--dataset", "synthetic", "--root", str(tmp_path / "r"),
           "--out", str(tmp_path / "o"), "--image-size", "32", "--workers", "2", "--synthetic-patients", "12",
           "--direct_running_mode=multi_processing"]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "[build] wrote 24 examples" in p.stderr
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["workers"] == 2 and s["in"] == s["written"] + s["rejected"]
    assert sum(s["written_per_split"].values()) == 24


def _tree_bytes(out: Path) -> dict:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_two_builds_of_the_same_inputs_are_byte_identical(injected, tmp_path):
    """Same inputs, salt and options -> identical shards, summary and dead letters, even when the second
    build runs in two worker processes (Beam then bundles and orders the examples differently)."""
    root = injected[0]
    out = tmp_path / "o"
    build("synthetic", root, out, image_size=32, workers=1, max_rejected_fraction=0.5, progress=False,
          salt="repro-salt")
    first = _tree_bytes(out)
    build("synthetic", root, out, image_size=32, workers=1, max_rejected_fraction=0.5, progress=False,
          salt="repro-salt", beam_args=["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    second = _tree_bytes(out)
    assert sorted(first) == sorted(second)
    assert {"summary.json", "dead_letters.jsonl"} <= set(first) and any(k.startswith("train/") for k in first)
    assert [k for k in first if first[k] != second[k]] == []
    # examples inside a shard are in example-key order
    import tensorflow as tf

    for name in (k for k in first if k.endswith(".tfrecord.gz")):
        keys = [feat(tf.train.Example.FromString(r.numpy()), F.EXAMPLE_KEY)[0]
                for r in tf.data.TFRecordDataset(str(out / name), compression_type="GZIP")]
        assert keys == sorted(keys)
    # another salt gives other keys, so other bytes
    build("synthetic", root, tmp_path / "o2", image_size=32, workers=1, max_rejected_fraction=0.5,
          progress=False, salt="another-salt")
    assert (tmp_path / "o2" / "train").is_dir()
    assert _tree_bytes(tmp_path / "o2").get("train/data-00000-of-00001.tfrecord.gz") != \
        first.get("train/data-00000-of-00001.tfrecord.gz")


def test_example_key_read_without_tensorflow_matches_the_parser(injected):
    from cxr_tfp.records.example_codec import bytes_feature

    out = injected[1]
    import tensorflow as tf

    f = sorted((out / "train").glob("*.tfrecord.gz"))[0]
    for raw in list(tf.data.TFRecordDataset(str(f), compression_type="GZIP"))[:5]:
        data = raw.numpy()
        ex = tf.train.Example.FromString(data)
        assert bytes_feature(data, F.EXAMPLE_KEY) == feat(ex, F.EXAMPLE_KEY)[0]
        assert bytes_feature(data, F.PATIENT_KEY) == feat(ex, F.PATIENT_KEY)[0]
    with pytest.raises(KeyError):
        bytes_feature(data, "no/such/feature")
