"""``python -m cxr_tfp.annotate COMMAND ...``: dispatch to the sub-command's own ``main(argv)``."""
from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

# name -> (module with a ``main(argv) -> int``, one-line description). Imported lazily so that
# ``labelstudio`` does not pay for TensorFlow and ``--help`` is instant.
COMMANDS = {
    "study": ("cxr_tfp.annotate.study", "what annotations are worth on your own records (paired gains, 95% intervals)"),
    "requests": ("cxr_tfp.annotate.requests", "rank unannotated images for the radiologists (strategies beside random)"),
    "labelstudio": ("cxr_tfp.annotate.labelstudio", "requests -> Label Studio project; its export -> boxes in the next span"),
}


def _usage() -> str:
    lines = ["usage: python -m cxr_tfp.annotate COMMAND [options]   (COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<12} {desc}" for name, (_, desc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one sub-command; an unknown or missing one is a one-line usage error (exit 2)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r} (choose from {', '.join(COMMANDS)}; see --help)", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
