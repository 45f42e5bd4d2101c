"""The `ffbench` console script's first step: load cli.py (torch, MLflow, Hydra) fast, then run it.

Those imports allocate millions of objects, and Python's cyclic garbage collector would scan
them over and over while they load: about a fifth of the import time (docs/performance.md).
The collector is off while they load; what they built is then frozen, so that no later
collection scans it again, and the collector is back on for the job itself."""

import gc


def main() -> None:
    gc.disable()
    from ffbench import cli

    gc.freeze()
    gc.enable()
    cli.main()
