"""The ``walsync`` command that ``pip install walsync`` puts on the PATH:
the same command line as the binary, run by the native module in this
process (it owns the process: its signal handlers replace Python's)."""

from __future__ import annotations

import sys


def main() -> None:
    from ._walsync import main as run

    sys.exit(run(["walsync", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
