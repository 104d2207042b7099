"""Run the pipeline locally with LocalDagRunner (SQLite ML Metadata).

    python pipeline/local_runner.py
    tfx pipeline create --engine local --pipeline_path pipeline/local_runner.py
    tfx run create --engine local --pipeline_name cxr-tfp

Settings come from :mod:`pipeline.configs` and ``CXR_TFP_*`` environment variables (the tfx CLI
passes no arguments), e.g. ``CXR_TFP_RAW_ROOT=demo_out/raw CXR_TFP_OUTPUT_ROOT=tfx_out`` (or
``CXR_TFP_INPUT=tfrecords CXR_TFP_DATA_ROOT=...`` to start from finished TFRecords).
"""
import os
import sys

# Run as a script (by the tfx CLI) this folder is searched first; no module in it is named like a
# package, so `pipeline` resolves to the repo's package (editable install, or PYTHONPATH=repo root).
from pipeline import configs  # sets TF_USE_LEGACY_KERAS before tfx loads
from pipeline.dag import create_pipeline


def run(settings: "configs.PipelineSettings | None" = None, **create_kwargs) -> None:
    """Build the pipeline from ``settings`` (default: environment) and run it to completion."""
    from absl import logging
    from tfx import v1 as tfx

    settings = settings or configs.PipelineSettings.from_env()
    logging.set_verbosity(logging.INFO)
    for line in configs.summary_lines(settings):
        logging.info(line)
    if settings.input == "raw" and not os.path.isdir(settings.raw_root):
        logging.warning("no raw dataset folder %s: run make demo (it generates the synthetic one) "
                        "or set CXR_TFP_RAW_ROOT (span sub-folders 1/, 2/, ...)", settings.raw_root)
    if settings.input == "tfrecords" and not os.path.isdir(
            os.path.join(settings.data_root, configs.TRAIN_SPLIT)):
        logging.warning("no %s split under %s: build TFRecords first (python -m cxr_tfp.records.build "
                        "...) or set CXR_TFP_DATA_ROOT", configs.TRAIN_SPLIT, settings.data_root)
    tfx.orchestration.LocalDagRunner().run(create_pipeline(settings, **create_kwargs))


if __name__ == "__main__":
    from cxr_tfp.cli import run as _run_cli  # one-line errors, exit 1/2 (--debug: traceback)

    sys.exit(_run_cli(lambda _argv: run() or 0))
