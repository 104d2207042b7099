"""The Pusher's executor, minus one behaviour: it never pushes a model that is already pushed.

TFX's filesystem Pusher copies every blessed model to a new ``<base>/<unix time>/`` version. On the
first unchanged re-run of the pipeline, every component up to the Trainer comes from the cache, but
the Evaluator runs again (its baseline is now the blessed model itself) and blesses the same model:
the stock Pusher would then serve the same SavedModel under a second version. This executor
compares the candidate with the versions already under the push base (``saved_model.pb`` and the
variables index, which holds each tensor's checksum) and records ``pushed = 0`` with
``already_pushed_version`` instead.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from absl import logging
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from cxr_tfp.model_dir import SAVED_MODEL_FILE

ALREADY_PUSHED_KEY = "already_pushed_version"
_IDENTITY_FILES = (SAVED_MODEL_FILE, os.path.join("variables", "variables.index"))


def _identity(model_dir: str) -> Optional[tuple]:
    parts = []
    for name in _IDENTITY_FILES:
        path = os.path.join(model_dir, name)
        if not fileio.exists(path):
            return None
        with fileio.open(path, "rb") as fh:
            parts.append(fh.read())
    return tuple(parts)


def already_pushed(model_dir: str, base_directory: str) -> Optional[str]:
    """The version under ``base_directory`` holding the same SavedModel as ``model_dir``, if any."""
    mine = _identity(model_dir)
    if mine is None or not fileio.exists(base_directory):
        return None
    for version in sorted(fileio.listdir(base_directory)):
        version = version.rstrip("/")
        if _identity(os.path.join(base_directory, version)) == mine:
            return version
    return None


class NoRepushExecutor(pusher_executor.Executor):
    """TFX's Pusher executor that skips a blessed model already present under the push base."""

    def Do(self, input_dict: Dict[str, List[Any]], output_dict: Dict[str, List[Any]],  # noqa: N802
           exec_properties: Dict[str, Any]) -> None:
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY],
                                  destination)
        if destination.WhichOneof("destination") == "filesystem" and self.CheckBlessing(input_dict):
            version = already_pushed(self.GetModelPath(input_dict), destination.filesystem.base_directory)
            if version is not None:
                model_push = artifact_utils.get_single_instance(
                    output_dict[standard_component_specs.PUSHED_MODEL_KEY])
                logging.info("The blessed model is already served as version %s: not pushed again.",
                             version)
                self._MarkNotPushed(model_push)
                model_push.set_string_custom_property(ALREADY_PUSHED_KEY, version)
                return
        super().Do(input_dict, output_dict, exec_properties)
