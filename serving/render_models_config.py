"""Render serving/models.config from the versions the Pusher wrote under the base path.

    python serving/render_models_config.py --base_path tfx_out/serving/cxr_tfp > serving/models.config

canary = the newest pushed version, stable = the one before it (the newest too when only one
exists); ``--stable V`` / ``--canary V`` override (e.g. to promote the canary: --stable <canary>).
The container path (``--container_base_path``) is what the server sees, not the host path.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from cxr_tfp.cli import UsageError, cli_main
from cxr_tfp.model_dir import MODEL_NAME, pushed_versions

TEMPLATE = """\
# Rendered by serving/render_models_config.py from {source} (versions found: {versions}).
# See the comments in the committed serving/models.config for what each field does.
model_config_list {{
  config {{
    name: "{name}"
    base_path: "{base_path}"
    model_platform: "tensorflow"
    model_version_policy {{
      latest {{
        num_versions: 2
      }}
    }}
    version_labels {{
      key: "stable"
      value: {stable}
    }}
    version_labels {{
      key: "canary"
      value: {canary}
    }}
  }}
}}
"""


def render(base_path: str, model_name: str = MODEL_NAME, container_base_path: Optional[str] = None,
           stable: Optional[int] = None, canary: Optional[int] = None) -> str:
    """The models.config text for the versions under ``base_path``."""
    versions = pushed_versions(base_path)
    if not versions and (stable is None or canary is None):
        raise UsageError(f"no pushed versions under {base_path!r}: push a model first, or give "
                         f"--stable and --canary")
    canary = canary if canary is not None else versions[-1]
    stable = stable if stable is not None else (versions[-2] if len(versions) > 1 else versions[-1])
    return TEMPLATE.format(source=base_path, versions=versions, name=model_name,
                           base_path=container_base_path or f"/models/{model_name}",
                           stable=stable, canary=canary)


@cli_main
def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--base_path", required=True, help="host folder <serving_root>/<model_name>")
    p.add_argument("--model_name", default=MODEL_NAME)
    p.add_argument("--container_base_path", default=None, help="default /models/<model_name>")
    p.add_argument("--stable", type=int, default=None)
    p.add_argument("--canary", type=int, default=None)
    a = p.parse_args(argv)
    sys.stdout.write(render(a.base_path, a.model_name, a.container_base_path, a.stable, a.canary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
