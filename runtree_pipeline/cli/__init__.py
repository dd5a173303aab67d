"""The two commands: `python -m runtree_pipeline` (Hydra composes, we plan, run and report) and `runtree`."""

from runtree_pipeline.cli.main import main

__all__ = ["main"]
