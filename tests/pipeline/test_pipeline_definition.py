"""The pipeline's structure, settings, TFMA config, curated schema, gate and Kubeflow spec (no runs)."""
import json
import os

import pytest

import pipeline  # noqa: F401  (Keras 3 pin before tfx)
from cxr_tfp import features as F
from cxr_tfp import model_dir as MD
from cxr_tfp.config import load_config
from cxr_tfp.labels import SYNTHETIC_FINDINGS, indices
from pipeline import configs
from pipeline import dag as P

COMPONENT_IDS = [P.EXAMPLE_GEN, P.STATISTICS_GEN, P.SCHEMA_GEN, P.EXAMPLE_VALIDATOR,
                 P.ANOMALIES_GATE, P.TRAINER, P.RESOLVER, P.EVALUATOR, P.BLESSING_GATE, P.PUSHER]


@pytest.fixture()
def settings(tmp_path):
    return configs.PipelineSettings(output_root=str(tmp_path / "out"),
                                    data_root=str(tmp_path / "data"))


@pytest.fixture()
def train_config():
    return load_config(configs.DEFAULT_TRAIN_CONFIG, {"stage1_epochs": 1}).to_dict()


def _by_id(pipe):
    return {c.id: c for c in pipe.components}


def test_dag_wiring_splits_and_settings(settings, train_config):
    pipe = P.create_pipeline(settings, train_config=train_config)
    comps = _by_id(pipe)
    assert set(comps) == set(COMPONENT_IDS)
    order = list(comps)  # TFX sorts topologically
    assert order.index(P.EXAMPLE_VALIDATOR) < order.index(P.ANOMALIES_GATE) < order.index(P.TRAINER)
    assert order.index(P.TRAINER) < order.index(P.EVALUATOR) < order.index(P.PUSHER)
    assert order.index(P.RESOLVER) < order.index(P.EVALUATOR)
    assert pipe.pipeline_info.pipeline_root == settings.resolved_pipeline_root
    # The default pipeline starts from the raw folder: the chest X-ray ExampleGen over the latest
    # {SPAN} sub-folder, building the three splits at the training image size.
    from pipeline.example_gen import Executor, read_params

    gen = comps[P.EXAMPLE_GEN]
    assert gen.executor_spec.executor_class is Executor
    assert gen.exec_properties["input_base"] == settings.raw_root
    splits = json.loads(gen.exec_properties["input_config"])["splits"]
    assert [(s["name"], s["pattern"]) for s in splits] == [
        ("train", "{SPAN}/*"), ("eval", "{SPAN}/*"), ("test", "{SPAN}/*")]
    params = read_params(gen.exec_properties)
    assert params["dataset"] == "synthetic" and params["image_size"] == train_config["image_size"]
    assert "salt" not in params["options"]
    trainer = comps[P.TRAINER]
    # Training cannot start before the anomalies gate passed.
    assert P.ANOMALIES_GATE in {n.id for n in trainer.upstream_nodes}
    assert trainer.exec_properties["run_fn"] == "pipeline.trainer_module.run_fn"
    assert json.loads(trainer.exec_properties["train_args"])["splits"] == ["train"]
    assert json.loads(trainer.exec_properties["eval_args"])["splits"] == ["eval"]
    assert json.loads(trainer.exec_properties["custom_config"])["train_config"] == train_config
    assert json.loads(comps[P.EVALUATOR].exec_properties["example_splits"]) == ["test"]
    push = json.loads(comps[P.PUSHER].exec_properties["push_destination"])
    assert push["filesystem"]["base_directory"] == settings.push_base
    assert settings.push_base.endswith(os.path.join("serving", configs.SERVING_MODEL_NAME))
    assert pipe.enable_cache is True


def test_import_example_gen_stays_an_option_for_finished_tfrecords(settings, train_config):
    settings.input = "tfrecords"
    gen = _by_id(P.create_pipeline(settings, train_config=train_config))[P.EXAMPLE_GEN]
    assert type(gen).__name__ == "ImportExampleGen"
    assert gen.exec_properties["input_base"] == settings.data_root
    splits = json.loads(gen.exec_properties["input_config"])["splits"]
    assert [(s["name"], s["pattern"]) for s in splits] == [
        ("train", "train/*"), ("eval", "eval/*"), ("test", "test/*")]


def test_beam_args_from_the_environment_reach_every_beam_component(monkeypatch, tmp_path, train_config):
    monkeypatch.setenv("CXR_TFP_BEAM_ARGS", "--runner=DataflowRunner --project=p --region=europe-west4 "
                                            "--temp_location=gs://b/tmp")
    monkeypatch.setenv("CXR_TFP_OUTPUT_ROOT", str(tmp_path))
    s = configs.PipelineSettings.from_env()
    pipe = P.create_pipeline(s, train_config=train_config)
    assert pipe.beam_pipeline_args == ["--runner=DataflowRunner", "--project=p", "--region=europe-west4",
                                       "--temp_location=gs://b/tmp"]
    monkeypatch.setenv("CXR_TFP_INPUT", "parquet")
    with pytest.raises(ValueError, match="CXR_TFP_INPUT"):
        configs.PipelineSettings.from_env()


def test_settings_from_env_and_unknown_override(monkeypatch, tmp_path):
    monkeypatch.setenv("CXR_TFP_DATA_ROOT", str(tmp_path / "d"))
    monkeypatch.setenv("CXR_TFP_OUTPUT_ROOT", str(tmp_path / "o"))
    monkeypatch.setenv("CXR_TFP_MACRO_AUC_LOWER_BOUND", "0.75")
    s = configs.PipelineSettings.from_env(pipeline_name="other")
    assert s.data_root == str(tmp_path / "d")
    assert s.resolved_pipeline_root == str(tmp_path / "o" / "pipelines" / "other")
    assert s.resolved_metadata_path == str(tmp_path / "o" / "metadata" / "other" / "metadata.db")
    assert s.macro_auc_lower_bound == 0.75
    with pytest.raises(AttributeError, match="no_such_setting"):
        configs.PipelineSettings.from_env(no_such_setting=1)


def test_tfma_reports_without_thresholds_and_the_gate_feeds_the_pusher(settings, train_config):
    from tensorflow_model_analysis.metrics import metric_specs

    ec = P.eval_config(SYNTHETIC_FINDINGS)
    spec = ec.model_specs[0]
    assert (spec.label_key, spec.prediction_key, spec.signature_name) == (
        F.LABELS, MD.PROBABILITIES_FULL, MD.SERVING_SIGNATURE)
    # TFMA decides nothing (so its never-blessed ModelBlessing cannot mislead the resolver)
    assert metric_specs.metric_thresholds_from_metrics_specs(ec.metrics_specs, ec) == {}
    settings.gate_min_positives = 7
    comps = _by_id(P.create_pipeline(settings, train_config=train_config))
    gate, pusher = comps[P.BLESSING_GATE], comps[P.PUSHER]
    assert pusher.inputs["model_blessing"].producer_component_id == P.BLESSING_GATE
    assert gate.inputs["baseline_model"].producer_component_id == P.RESOLVER
    assert gate.inputs["model"].producer_component_id == P.TRAINER
    opts = json.loads(gate.exec_properties["options"])
    assert opts["min_positives"] == 7 and opts["lower_bound"] == settings.macro_auc_lower_bound
    assert opts["split"] == "test"
    macro, per_finding = ec.metrics_specs
    assert sorted(macro.aggregate.class_weights) == sorted(indices(SYNTHETIC_FINDINGS))
    assert list(per_finding.binarize.class_ids.values) == indices(SYNTHETIC_FINDINGS)
    assert {m.class_name for m in per_finding.metrics} == {"AUC", "ExampleCount"}
    sliced = [list(s.feature_keys) for s in ec.slicing_specs]
    assert [] in sliced and ["view"] in sliced and ["dataset"] in sliced


def test_committed_schema_matches_the_feature_contract():
    from pipeline import schema_tools

    with open(schema_tools.SCHEMA_FILE) as fh:
        committed = fh.read()
    assert committed == schema_tools.schema_text(), "run `python -m pipeline.schema_tools`"
    schema = schema_tools.build_schema()
    names = {f.name for f in schema.feature}
    assert names == set(F.feature_spec())
    labels = next(f for f in schema.feature if f.name == F.LABELS)
    assert (labels.value_count.min, labels.value_count.max) == (F.NUM_FINDINGS, F.NUM_FINDINGS)
    views = next(d for d in schema.string_domain if d.name == F.VIEW)
    assert tuple(views.value) == F.VIEWS


def test_anomalies_reader_names_split_and_feature(tmp_path):
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    from pipeline.anomalies_gate import ANOMALIES_FILE, format_anomalies, read_anomalies

    for split, bad in (("train", False), ("eval", True)):
        a = anomalies_pb2.Anomalies()
        if bad:
            info = a.anomaly_info["view"]
            info.short_description = "Unexpected string values"
            info.description = "Examples contain values missing from the schema: SIDEWAYS (~100%)."
        (tmp_path / f"Split-{split}").mkdir()
        (tmp_path / f"Split-{split}" / ANOMALIES_FILE).write_bytes(a.SerializeToString())
    found = read_anomalies(str(tmp_path), ["train", "eval"])
    assert list(found) == ["eval"]
    text = format_anomalies(found)
    assert "split 'eval'" in text and "view: Unexpected string values" in text and "SIDEWAYS" in text
    with pytest.raises(FileNotFoundError, match="Split-test"):
        read_anomalies(str(tmp_path), ["test"])


def test_run_fn_passes_tfx_args_to_train_model(monkeypatch, tmp_path, train_config):
    import cxr_tfp.train
    from pipeline import trainer_module

    calls = []
    monkeypatch.setattr(cxr_tfp.train, "train_model",
                        lambda *a, **k: calls.append((a, k)) or {})

    class FnArgs:  # the attributes TFX's FnArgs provides
        train_files = [str(tmp_path / "Split-train" / "*")]
        eval_files = [str(tmp_path / "Split-eval" / "*")]
        serving_model_dir = str(tmp_path / "model" / "Format-Serving")
        model_run_dir = str(tmp_path / "model_run")
        custom_config = {"train_config": train_config}

    trainer_module.run_fn(FnArgs())
    (args, kwargs), = calls
    config, train_files, eval_files, out_dir = args
    assert config.to_dict() == train_config
    assert (train_files, eval_files, out_dir) == (FnArgs.train_files, FnArgs.eval_files,
                                                  FnArgs.model_run_dir)
    assert kwargs == {"export_dir": FnArgs.serving_model_dir}


def test_kubeflow_v2_spec_has_every_component_and_the_image(tmp_path, monkeypatch):
    from pipeline import kubeflow_v2_runner

    monkeypatch.setenv("CXR_TFP_OUTPUT_ROOT", "gs://example-bucket/cxr-tfp")
    monkeypatch.setenv("CXR_TFP_RAW_ROOT", "gs://example-bucket/raw")
    path = kubeflow_v2_runner.compile_pipeline(output_dir=str(tmp_path))
    spec = json.load(open(path))["pipelineSpec"]
    tasks = spec["root"]["dag"]["tasks"]
    for cid in COMPONENT_IDS:
        if cid == P.RESOLVER:  # compiled into one resolver task per resolved channel
            assert any(t.startswith(P.RESOLVER) for t in tasks)
        else:
            assert cid in tasks, cid
    assert P.ANOMALIES_GATE in tasks[P.TRAINER].get("dependentTasks", [])
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()
              if "container" in e}
    assert images == {configs.PIPELINE_IMAGE}
    assert len(images) == 1 and configs.PIPELINE_IMAGE.startswith("cxr-tfp-pipeline")
    text = open(path).read()
    assert kubeflow_v2_runner.IMAGE_SCHEMA_FILE in text  # curated schema path inside the image
    assert "gs://example-bucket/raw" in text and "metadata.db" not in text
    # the chest X-ray ExampleGen runs in the image with its own executor and the {SPAN} pattern
    executors = spec["deploymentSpec"]["executors"]
    gen = executors[next(k for k in executors if P.EXAMPLE_GEN in k)]
    assert "pipeline.example_gen.Executor" in json.dumps(gen)
    assert "{SPAN}/*" in text
    assert "--direct_running_mode=multi_processing" in json.dumps(gen)   # the container's cores
    # Dataflow flags from the environment replace them in the spec, for every Beam component
    monkeypatch.setenv("CXR_TFP_BEAM_ARGS", "--runner=DataflowRunner --project=p --region=r")
    dataflow = open(kubeflow_v2_runner.compile_pipeline(output_dir=str(tmp_path / "df"))).read()
    assert "--runner=DataflowRunner" in dataflow and "--direct_running_mode" not in dataflow


def test_vertex_training_asks_for_workers_and_a_gpu_in_the_spec(tmp_path, monkeypatch):
    from pipeline import kubeflow_v2_runner

    monkeypatch.setenv("CXR_TFP_OUTPUT_ROOT", "gs://example-bucket/cxr-tfp")
    monkeypatch.setenv("CXR_TFP_VERTEX_TRAINING", json.dumps(
        {"project": "p", "region": "europe-west4", "machine_type": "n1-standard-8",
         "accelerator_type": "NVIDIA_TESLA_T4", "accelerator_count": 1, "workers": 2}))
    text = open(kubeflow_v2_runner.compile_pipeline(output_dir=str(tmp_path))).read()
    spec = json.loads(text)["pipelineSpec"]
    assert P.TRAINER in spec["root"]["dag"]["tasks"]
    config = configs.PipelineSettings.from_env()
    custom = P.vertex_trainer_config(config.vertex_training, {"distribute": "none"})
    pools = custom["ai_platform_training_args"]["worker_pool_specs"]
    assert [p["replica_count"] for p in pools] == [1, 2]
    assert pools[0]["machine_spec"]["accelerator_type"] == "NVIDIA_TESLA_T4"
    assert custom["train_config"]["distribute"] == "multi_worker"
    # the compiled spec carries the same request (custom_config is a JSON string parameter there)
    assert "worker_pool_specs" in text and "NVIDIA_TESLA_T4" in text and "multi_worker" in text
