"""The TFX DAG: build examples from the raw dataset, validate, train in two stages, evaluate, push.

ExampleGen (the chest X-ray ExampleGen over the raw folder's latest span, or ImportExampleGen over
finished train/eval/test TFRecords) -> StatisticsGen -> ImportSchemaGen (curated, or
SchemaGen) -> ExampleValidator -> AnomaliesGate (fails the run on anomalies) -> Trainer
(``pipeline.trainer_module.run_fn``) -> Resolver(LatestBlessedModelStrategy) -> Evaluator (TFMA
macro / per-finding AUROC, sliced by view and dataset: reported, not gated) and BlessingGate (the
decision: patient-bootstrap interval over the findings with enough positives, see
``pipeline.blessing_gate``) -> Pusher (reads the gate's blessing; filesystem, TF Serving layout;
never pushes a model that is already there, see ``pipeline.pusher``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from tensorflow_model_analysis.proto import config_pb2 as tfma
from tfx import v1 as tfx
from tfx.dsl.components.base import executor_spec

from cxr_tfp import features as F
from cxr_tfp import model_dir as MD
from cxr_tfp.labels import indices
from pipeline import configs
from pipeline.anomalies_gate import AnomaliesGate
from pipeline.blessing_gate import BlessingGate, GateOptions
from pipeline.example_gen import chest_xray_example_gen
from pipeline.pusher import NoRepushExecutor
from pipeline.trainer_module import TRAIN_CONFIG_KEY

RUN_FN = "pipeline.trainer_module.run_fn"
MACRO_AUC = "auc"  # TFMA metric name of tf.keras.metrics.AUC; the macro key carries aggregation
_AUC_CONFIG = '{"name": "%s", "curve": "ROC", "num_thresholds": 1000}' % MACRO_AUC

# Component ids (stable: tests and the demo look executions up by them).
EXAMPLE_GEN = "ExampleGen"
STATISTICS_GEN = "StatisticsGen"
SCHEMA_GEN = "SchemaGen"
EXAMPLE_VALIDATOR = "ExampleValidator"
ANOMALIES_GATE = "AnomaliesGate"
TRAINER = "Trainer"
RESOLVER = "latest_blessed_model_resolver"
EVALUATOR = "Evaluator"
BLESSING_GATE = "BlessingGate"
PUSHER = "Pusher"


def eval_config(findings: Sequence[str],
                slice_features: Sequence[str] = configs.SLICE_FEATURES) -> tfma.EvalConfig:
    """TFMA config: AUROC per finding, macro AUROC (and its change against the baseline), counts.

    The model's ``PROBABILITIES_FULL`` output lines up with the stored ``LABELS`` vector over all
    ``FINDINGS``; each predicted finding is a class id of that vector. No thresholds: TFMA's macro
    counts a finding without positives as AUROC 0 and has no interval, so the blessing is decided
    by ``pipeline.blessing_gate`` (and TFMA, without thresholds, never blesses, which keeps
    ``LatestBlessedModelStrategy`` on the gate's blessings). The macro spec names its classes
    through ``class_weights`` (equal weights).
    """
    class_ids = indices(findings)
    macro = tfma.MetricsSpec(
        metrics=[tfma.MetricConfig(class_name="AUC", config=_AUC_CONFIG)],
        aggregate=tfma.AggregationOptions(macro_average=True,
                                          class_weights={c: 1.0 for c in class_ids}))
    per_finding = tfma.MetricsSpec(
        metrics=[tfma.MetricConfig(class_name="AUC", config=_AUC_CONFIG),
                 tfma.MetricConfig(class_name="ExampleCount")],
        binarize=tfma.BinarizationOptions(class_ids={"values": class_ids}))
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name=MD.SERVING_SIGNATURE, label_key=F.LABELS,
                                    prediction_key=MD.PROBABILITIES_FULL,
                                    preprocessing_function_names=[])],
        metrics_specs=[macro, per_finding],
        slicing_specs=[tfma.SlicingSpec()] + [tfma.SlicingSpec(feature_keys=[k])
                                              for k in slice_features])


def gate_options(settings: configs.PipelineSettings) -> GateOptions:
    """The blessing gate's rule, from the settings."""
    return GateOptions(lower_bound=settings.macro_auc_lower_bound, max_drop=settings.macro_auc_max_drop,
                       min_positives=settings.gate_min_positives,
                       min_negatives=settings.gate_min_negatives,
                       min_findings_fraction=settings.gate_min_findings_fraction,
                       n_resamples=settings.gate_bootstrap, split=settings.evaluator_split)


def vertex_trainer_config(vertex: Dict[str, Any], train_config: Dict[str, Any]) -> Dict[str, Any]:
    """The Trainer's custom_config for a Vertex AI Training job: a chief (worker pool 0) and
    ``workers`` worker replicas (pool 1), each with ``accelerator_count`` accelerators, all in the
    project image. Vertex sets TF_CONFIG; with workers the training runs ``distribute:
    multi_worker`` (only the chief writes the model)."""
    from tfx.v1.extensions import google_cloud_ai_platform as gcp

    workers = int(vertex.get("workers", 0))
    machine = {"machine_type": vertex.get("machine_type", "n1-standard-8")}
    if vertex.get("accelerator_type"):
        machine.update(accelerator_type=vertex["accelerator_type"],
                       accelerator_count=int(vertex.get("accelerator_count", 1)))
    container = {"image_uri": vertex.get("image", configs.PIPELINE_IMAGE)}
    pools = [{"machine_spec": machine, "replica_count": 1, "container_spec": container}]
    if workers:
        pools.append({"machine_spec": machine, "replica_count": workers, "container_spec": container})
    config = dict(train_config)
    if workers:
        config["distribute"] = "multi_worker"
    elif vertex.get("accelerator_count", 0) and int(vertex["accelerator_count"]) > 1:
        config["distribute"] = "mirrored"
    return {TRAIN_CONFIG_KEY: config, gcp.ENABLE_VERTEX_KEY: True,
            gcp.VERTEX_REGION_KEY: vertex["region"],
            gcp.TRAINING_ARGS_KEY: {"project": vertex["project"], "worker_pool_specs": pools}}


def make_example_gen(settings: configs.PipelineSettings, image_size: int):
    """The pipeline's first component (id ``EXAMPLE_GEN``): raw folder or finished TFRecords."""
    if settings.input == "tfrecords":
        return tfx.components.ImportExampleGen(
            input_base=settings.data_root,
            input_config=tfx.proto.Input(splits=[
                tfx.proto.Input.Split(name=s, pattern=f"{s}/*") for s in configs.SPLITS])
        ).with_id(EXAMPLE_GEN)
    # The records are built at the training image size: one number, in the training config.
    return chest_xray_example_gen(settings.dataset, settings.raw_root, image_size,
                                  span_folder=settings.span_folder,
                                  adapter_options=settings.adapter_options,
                                  salt_fingerprint=settings.salt_fingerprint).with_id(EXAMPLE_GEN)


def create_pipeline(settings: configs.PipelineSettings, *,
                    train_config: Optional[Dict[str, Any]] = None,
                    schema_file: Optional[str] = None,
                    beam_args: Optional[List[str]] = None,
                    local_metadata: bool = True) -> tfx.dsl.Pipeline:
    """Build the pipeline from ``settings``.

    ``train_config`` (a ``TrainConfig`` dict) defaults to the settings' config file + overrides;
    ``schema_file`` defaults to the committed curated schema (the Kubeflow runner passes the path
    inside the image). ``local_metadata=False`` leaves the ML Metadata connection to the
    orchestrator (Kubeflow / Vertex run their own store).
    """
    if train_config is None:
        train_config = settings.train_config_dict()
    from cxr_tfp.labels import resolve_vocabulary

    findings = resolve_vocabulary(train_config["findings"])

    example_gen = make_example_gen(settings, int(train_config["image_size"]))
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    if settings.use_curated_schema:
        from pipeline.schema_tools import SCHEMA_FILE

        schema_gen = tfx.components.ImportSchemaGen(
            schema_file=schema_file or SCHEMA_FILE).with_id(SCHEMA_GEN)
    else:
        schema_gen = tfx.components.SchemaGen(
            statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    anomalies_gate = AnomaliesGate(
        anomalies=example_validator.outputs["anomalies"]).with_id(ANOMALIES_GATE)

    trainer_kwargs = dict(
        run_fn=RUN_FN,
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(splits=[configs.TRAIN_SPLIT]),
        eval_args=tfx.proto.EvalArgs(splits=[configs.EVAL_SPLIT]))
    if settings.vertex_training:
        trainer = tfx.extensions.google_cloud_ai_platform.Trainer(
            custom_config=vertex_trainer_config(settings.vertex_training, train_config),
            **trainer_kwargs).with_id(TRAINER)
    else:
        trainer = tfx.components.Trainer(custom_config={TRAIN_CONFIG_KEY: train_config},
                                         **trainer_kwargs)
    trainer.add_upstream_node(anomalies_gate)

    resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id(RESOLVER)

    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=resolver.outputs["model"],
        example_splits=[settings.evaluator_split],
        eval_config=eval_config(findings, settings.slice_features))

    import dataclasses
    import json

    gate = BlessingGate(examples=example_gen.outputs["examples"], model=trainer.outputs["model"],
                        baseline_model=resolver.outputs["model"],
                        options=json.dumps(dataclasses.asdict(gate_options(settings)))
                        ).with_id(BLESSING_GATE)

    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        model_blessing=gate.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=settings.push_base)),
        custom_executor_spec=executor_spec.ExecutorClassSpec(NoRepushExecutor))

    return tfx.dsl.Pipeline(
        pipeline_name=settings.pipeline_name,
        pipeline_root=settings.resolved_pipeline_root,
        components=[example_gen, statistics_gen, schema_gen, example_validator, anomalies_gate,
                    trainer, resolver, evaluator, gate, pusher],
        enable_cache=settings.enable_cache,
        metadata_connection_config=(
            tfx.orchestration.metadata.sqlite_metadata_connection_config(
                settings.resolved_metadata_path) if local_metadata else None),
        beam_pipeline_args=list(settings.beam_args if beam_args is None else beam_args))
