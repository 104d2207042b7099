"""AnomaliesGate: stop the run before training when ExampleValidator found anomalies.

TFX 1.21's ExampleValidator only *records* anomalies (a ``blessed`` custom property per split);
the downstream Trainer would still run. This small function component reads the anomalies of
every split and raises, naming split, feature and anomaly, so the orchestrator fails the run and
the Trainer (which depends on the gate) never starts.
"""


import os
from typing import Dict, List

from tfx import v1 as tfx

ANOMALIES_FILE = "SchemaDiff.pb"


class DataAnomaliesError(RuntimeError):
    """Raised when the validated data breaks the schema."""


def read_anomalies(uri: str, split_names: List[str]) -> Dict[str, List[str]]:
    """``{split: ["feature: SHORT_DESCRIPTION (description)", ...]}`` for splits with anomalies."""
    import tensorflow as tf
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    found: Dict[str, List[str]] = {}
    for split in split_names:
        path = os.path.join(uri, f"Split-{split}", ANOMALIES_FILE)
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"ExampleValidator output {path} is missing")
        anomalies = anomalies_pb2.Anomalies()
        anomalies.ParseFromString(tf.io.gfile.GFile(path, "rb").read())
        lines = []
        for feature, info in sorted(anomalies.anomaly_info.items()):
            lines.append(f"{feature}: {info.short_description} ({info.description})")
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            lines.append(f"<dataset>: {info.short_description} ({info.description})")
        if lines:
            found[split] = lines
    return found


def format_anomalies(found: Dict[str, List[str]]) -> str:
    """A readable multi-line report of :func:`read_anomalies`."""
    out = []
    for split, lines in found.items():
        out.append(f"split {split!r}:")
        out.extend(f"  - {line}" for line in lines)
    return "\n".join(out)


@tfx.dsl.components.component
def AnomaliesGate(  # noqa: N802 (TFX component naming)
    anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
) -> None:
    """Fail the pipeline run when any split has schema anomalies."""
    import json

    splits = json.loads(anomalies.split_names) if anomalies.split_names else []
    found = read_anomalies(anomalies.uri, splits)
    if found:
        raise DataAnomaliesError(
            "ExampleValidator found data anomalies; the run stops before training.\n"
            + format_anomalies(found)
            + f"\nanomalies artifact: {anomalies.uri}")
