"""The shipped configs, importable as `runtree_pipeline.conf` (pyproject.toml maps this directory there).

Hydra's `pkg://` config source only accepts a package with an `__init__.py`; that is the whole reason for this file.
"""
