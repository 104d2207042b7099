"""Compile the pipeline for Kubeflow Pipelines v2 / Vertex AI Pipelines (KubeflowV2DagRunner).

    CXR_TFP_OUTPUT_ROOT=gs://BUCKET/cxr-tfp CXR_TFP_RAW_ROOT=gs://BUCKET/raw \
        python pipeline/kubeflow_v2_runner.py            # writes cxr-tfp_pipeline.json

Settings: ``pipeline/settings.json`` (see :mod:`pipeline.configs`) then ``CXR_TFP_*`` variables.
Every component runs in the project image (``configs.PIPELINE_IMAGE``, built from the repo's
Dockerfile). See pipeline/README.md for submitting the spec to a KFP v2 cluster or to Vertex.
"""
import os
import sys
from typing import Optional

from pipeline import configs
from pipeline.dag import create_pipeline

# Where the Dockerfile puts the repo (WORKDIR /pipeline): the curated schema's path in the image.
IMAGE_REPO_ROOT = "/pipeline"
IMAGE_SCHEMA_FILE = f"{IMAGE_REPO_ROOT}/pipeline/schema/schema.pbtxt"
# Beam inside one container: use its cores.
KUBEFLOW_BEAM_ARGS = ["--direct_running_mode=multi_processing", "--direct_num_workers=0"]


def kubeflow_beam_args():
    """``CXR_TFP_BEAM_ARGS`` when set (e.g. the Dataflow flags of pipeline/README.md), else every core
    of the component's own container."""
    import shlex

    return shlex.split(os.environ["CXR_TFP_BEAM_ARGS"]) if os.environ.get("CXR_TFP_BEAM_ARGS") \
        else list(KUBEFLOW_BEAM_ARGS)


def spec_filename(settings: configs.PipelineSettings) -> str:
    return f"{settings.pipeline_name}_pipeline.json"


def compile_pipeline(settings: Optional[configs.PipelineSettings] = None,
                     output_dir: str = ".", image: Optional[str] = None) -> str:
    """Write the KFP v2 pipeline spec (JSON) and return its path."""
    from tfx import v1 as tfx

    from pipeline.local_runner import creating_pipeline

    creating = settings is None and creating_pipeline()
    settings = settings or configs.PipelineSettings.load(configs.settings_path(__file__), saving=creating)
    if creating:   # `tfx pipeline create --engine vertex`: the settings persist as for the local runner
        settings.save(configs.settings_path(__file__))
    pipeline = create_pipeline(settings, schema_file=IMAGE_SCHEMA_FILE,
                               beam_args=kubeflow_beam_args(), local_metadata=False)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=image or configs.PIPELINE_IMAGE),
        output_dir=output_dir, output_filename=spec_filename(settings))
    runner.run(pipeline)
    return os.path.join(output_dir, spec_filename(settings))


if __name__ == "__main__":
    import sys

    from cxr_tfp.cli import run as _run_cli  # one-line errors, exit 1/2 (--debug: traceback)

    sys.exit(_run_cli(lambda _argv: print(compile_pipeline(output_dir=os.environ.get("CXR_TFP_SPEC_DIR", "."))) or 0))
