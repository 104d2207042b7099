"""The chest X-ray ExampleGen's executor against the standalone build (no pipeline run: Beam in-process)."""
import json
import os

import pytest

import pipeline  # noqa: F401  (Keras 3 pin before tfx)
from cxr_tfp.records.build import build
from cxr_tfp.features import SPLITS
from cxr_tfp.privacy import ENV_VAR, FILE_ENV_VAR, salt_fingerprint
from pipeline import example_gen as EG

IMAGE_SIZE = 32
OPTIONS = {"synthetic_patients": 10, "synthetic_images_per_patient": 2}


def _records(files):
    import tensorflow as tf

    return sorted(r.numpy() for r in tf.data.TFRecordDataset(sorted(files), compression_type="GZIP"))


def _run_executor(raw_root, span_dir, uri, tmp_path, salt_fp=None, beam_args=None):
    """Run the component's executor as the TFX launcher would after the driver resolved span 1."""
    from tfx.dsl.components.base.base_beam_executor import BaseBeamExecutor
    from tfx.types import standard_artifacts

    comp = EG.chest_xray_example_gen("synthetic", raw_root, IMAGE_SIZE, adapter_options=OPTIONS,
                                     salt_fingerprint=salt_fp)
    props = dict(comp.exec_properties)
    config = json.loads(props["input_config"])
    for split in config["splits"]:
        split["pattern"] = split["pattern"].replace("{SPAN}", span_dir)   # the driver's resolution
    props["input_config"] = json.dumps(config)
    props["span"] = int(span_dir)
    examples = standard_artifacts.Examples()
    examples.uri = uri
    os.makedirs(uri, exist_ok=True)
    ctx = BaseBeamExecutor.Context(beam_pipeline_args=beam_args or ["--direct_running_mode=in_memory",
                                                                    "--direct_num_workers=1"],
                                   tmp_dir=str(tmp_path / "beam_tmp"), unique_id="test")
    EG.Executor(ctx).Do({}, {"examples": [examples]}, props)
    return examples


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One synthetic span, built once by the standalone build and once by the ExampleGen."""
    root = tmp_path_factory.mktemp("eg")
    raw = root / "raw"
    os.environ.pop(FILE_ENV_VAR, None)
    os.environ[ENV_VAR] = "example-gen-test-salt"
    try:
        summary = build("synthetic", str(raw / "1"), str(root / "standalone"), image_size=IMAGE_SIZE,
                        workers=1, progress=False, **OPTIONS)
        examples = _run_executor(str(raw), "1", str(root / "examples"), root)
    finally:
        os.environ.pop(ENV_VAR, None)
    return root, summary, examples


def test_records_are_byte_identical_to_the_standalone_build(built):
    from tfx.types import artifact_utils

    root, summary, examples = built
    assert artifact_utils.decode_split_names(examples.split_names) == list(SPLITS)
    total = 0
    for sp in SPLITS:
        split_dir = artifact_utils.get_split_uri([examples], sp)
        theirs_dir = os.path.join(root, "standalone", sp)
        # the same shard files, byte for byte (same writer, same example-key sharding and order)
        assert sorted(os.listdir(split_dir)) == sorted(os.listdir(theirs_dir)), sp
        for name in os.listdir(split_dir):
            with open(os.path.join(split_dir, name), "rb") as a, open(os.path.join(theirs_dir, name), "rb") as b:
                assert a.read() == b.read(), (sp, name)
        ours = _records([os.path.join(split_dir, f) for f in os.listdir(split_dir)])
        assert len(ours) == summary["written_per_split"][sp]
        total += len(ours)
    assert total == summary["examples"]["written"] > 0


def test_dead_letters_summary_and_properties_travel_with_the_artifact(built):
    root, summary, examples = built
    ours = json.load(open(os.path.join(examples.uri, EG.SUMMARY)))
    for key in ("in", "written", "rejected", "examples", "annotations", "written_per_split",
                "positives", "salt_fingerprint", "split_fractions", "image_size"):
        assert ours[key] == summary[key], key
    assert open(os.path.join(examples.uri, EG.DEAD_LETTERS)).read() == \
        open(os.path.join(root, "standalone", "dead_letters.jsonl")).read()
    props = examples.custom_properties if hasattr(examples, "custom_properties") else None
    get_s, get_i = examples.get_string_custom_property, examples.get_int_custom_property
    assert get_s("raw_root") == str(root / "raw" / "1")
    assert get_s("dataset") == "synthetic"
    assert get_s("salt_fingerprint") == salt_fingerprint("example-gen-test-salt") == summary["salt_fingerprint"]
    assert get_s("dead_letters_uri") == os.path.join(examples.uri, EG.DEAD_LETTERS)
    assert len(get_s("label_tables_sha256")) == 64
    assert get_s("label_tables_sha256") == EG.tables_checksum(root / "raw" / "1")
    assert get_i("examples_written") == summary["examples"]["written"]
    assert get_i("rejected") == summary["rejected"]
    # how many examples carry each annotation kind (the outcome summary reads the same counts)
    for kind in ("any", "gaze", "boxes"):
        assert get_i(f"annotated_{kind}") == sum(v[kind] for v in summary["annotated"].values())
    assert get_i("annotated_any") > 0 and ours["annotated"] == summary["annotated"]
    assert ours["span"] == 1 and ours["beam_options"] == ["--direct_running_mode=in_memory",
                                                          "--direct_num_workers=1"]
    assert not os.path.exists(os.path.join(examples.uri, ".scratch"))   # no work files left
    del props


def test_the_salt_is_never_a_parameter_and_its_fingerprint_is_checked(built, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="secret"):
        EG.chest_xray_example_gen("synthetic", "/x", IMAGE_SIZE, adapter_options={"salt": "s3cret"})
    comp = EG.chest_xray_example_gen("synthetic", "/x", IMAGE_SIZE, salt_fingerprint="abc")
    assert "abc" in comp.exec_properties["custom_config"]
    root = built[0]
    monkeypatch.delenv(FILE_ENV_VAR, raising=False)
    monkeypatch.setenv(ENV_VAR, "another-salt")
    with pytest.raises(ValueError, match="fingerprint"):
        _run_executor(str(root / "raw"), "1", str(tmp_path / "ex"), tmp_path,
                      salt_fp=salt_fingerprint("example-gen-test-salt"))
    assert not os.path.exists(tmp_path / "ex" / "Split-train")   # refused before writing anything


def test_bad_parameters_fail_when_the_pipeline_is_built():
    with pytest.raises(ValueError, match="unknown dataset"):
        EG.chest_xray_example_gen("chexpert", "/x", IMAGE_SIZE)
    with pytest.raises(ValueError, match="image_size"):
        EG.chest_xray_example_gen("nih", "/x", 8)
