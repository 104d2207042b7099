"""Run the pipeline locally with LocalDagRunner (SQLite ML Metadata).

    python pipeline/local_runner.py
    CXR_TFP_RAW_ROOT=... CXR_TFP_DATASET=nih tfx pipeline create --engine local --pipeline_path pipeline/local_runner.py
    tfx run create --engine local --pipeline_name cxr-tfp

Settings (:mod:`pipeline.configs`): ``tfx pipeline create`` (or ``update``) saves the ``CXR_TFP_*``
values it is given to ``settings.json`` beside this file, on top of what that file already holds
(a user may write or edit it before ``create``); every run reads that file, so ``tfx run create``
needs no environment. A ``CXR_TFP_*`` variable cannot move a saved value at run
time (it is ignored and listed in the settings block); one for a setting the file does not hold
applies to that run only. Every run prints its settings, refuses in one line
when the raw folder is missing, empty or has no span folder, keeps TFX's log in
``<pipeline root>/logs/`` (one console line per component), and ends with the outcome summary
(``python -m pipeline.report``), saved in the pipeline root.
"""
import os
import sys

# Run as a script (by the tfx CLI) this folder is searched first; no module in it is named like a
# package, so `pipeline` resolves to the repo's package (editable install, or PYTHONPATH=repo root).
from pipeline import configs  # sets TF_USE_LEGACY_KERAS before tfx loads
from pipeline.dag import create_pipeline

SETTINGS_FILE = configs.settings_path(__file__)


def creating_pipeline(argv=None) -> bool:
    """True when the tfx CLI runs this file for ``tfx pipeline create`` / ``update`` (it executes
    the file in its own process with ``sys.argv`` replaced; ``sys.orig_argv`` keeps its own)."""
    argv = list(getattr(sys, "orig_argv", []) if argv is None else argv)
    for i, arg in enumerate(argv):
        if os.path.basename(arg) == "tfx" and argv[i + 1:i + 3] in (["pipeline", "create"],
                                                                    ["pipeline", "update"]):
            return True
    return False


def _settings_block(settings: "configs.PipelineSettings") -> str:
    return "\n".join("  " + line for line in configs.summary_lines(settings))


def run(settings: "configs.PipelineSettings | None" = None, **create_kwargs) -> None:
    """Build the pipeline from ``settings`` (default: the settings file, then the environment) and
    run it to completion; under ``tfx pipeline create`` save the settings instead."""
    from tfx import v1 as tfx

    from cxr_tfp.cli import UsageError

    creating = settings is None and creating_pipeline()
    settings = settings or configs.PipelineSettings.load(SETTINGS_FILE, saving=creating)
    problem = configs.check_raw_root(settings)
    if problem:
        raise UsageError(problem)
    if creating:
        settings.save(SETTINGS_FILE)
        print(f"cxr-tfp settings saved to {SETTINGS_FILE}; every `tfx run create` of this pipeline "
              f"uses them (edit the file, or `tfx pipeline update` with other CXR_TFP_* values):\n"
              f"{_settings_block(settings)}", flush=True)
        # the CLI's patched runner records the pipeline without running it
        tfx.orchestration.LocalDagRunner().run(create_pipeline(settings, **create_kwargs))
        return
    import time

    from pipeline.demo import _route_tfx_logs

    log_path = os.path.join(settings.resolved_pipeline_root, "logs",
                            time.strftime("run-%Y%m%d-%H%M%S.log"))
    print(f"cxr-tfp pipeline run\n{_settings_block(settings)}\n  full TFX log    : {log_path}",
          flush=True)
    _route_tfx_logs(log_path)
    try:
        tfx.orchestration.LocalDagRunner().run(create_pipeline(settings, **create_kwargs))
    finally:
        print_outcome(settings)


def print_outcome(settings: "configs.PipelineSettings") -> None:
    """Print the last run's outcome summary and save it in the pipeline root (never raises)."""
    from pipeline import report

    try:
        o = report.outcome(settings.resolved_metadata_path)
        path = report.save_outcome(o, settings.resolved_pipeline_root)
        print("\n" + report.format_outcome(o) + f"\n(saved: {path}; again: python -m pipeline.report)",
              flush=True)
    except Exception as exc:  # noqa: BLE001  the run's own error is the one to report
        print(f"(no outcome summary: {exc})", file=sys.stderr, flush=True)


if __name__ == "__main__":
    from cxr_tfp.cli import run as _run_cli  # one-line errors, exit 1/2 (--debug: traceback)

    sys.exit(_run_cli(lambda _argv: run() or 0))
