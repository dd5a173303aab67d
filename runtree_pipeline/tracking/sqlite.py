"""The embedded store: a sqlite file created whole, in WAL mode so worker processes can log while the driver writes."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from runtree_pipeline.interrupts import shielded


def sqlite_path(uri: str) -> Path | None:
    path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
    return Path(path) if path and path != ":memory:" else None


def create_sqlite_store(uri: str) -> None:
    """Give a new sqlite store MLflow's full schema under a temporary name, then link it into place.

    MLflow migrates a new file in dozens of steps that are not one transaction; a signal between two of them left
    a file MLflow refuses to open ("table ... already exists"). Built aside with signals deferred, the store is
    either absent or complete. Linking, unlike renaming, never replaces a store another process created meanwhile.
    """
    path = sqlite_path(uri)
    if path is None or path.exists():
        return
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables

    path.parent.mkdir(parents=True, exist_ok=True)
    building = path.with_name(f"{path.name}.creating-{os.getpid()}")
    with shielded():
        try:
            engine = sqlalchemy.create_engine(f"sqlite:///{building}")
            try:
                _initialize_tables(engine)
            finally:
                engine.dispose()
            try:
                os.link(building, path)
            except FileExistsError:
                pass
            except OSError:
                if not path.exists():
                    os.replace(building, path)
        finally:
            for leftover in (building, building.with_name(building.name + "-journal")):
                leftover.unlink(missing_ok=True)


def use_wal(uri: str) -> None:
    """SQLite's WAL journal lets worker processes log while the driver writes (measured faster here, too).

    The setting is stored in the file; MLflow and `mlflow ui` work the same with it.
    """
    import sqlite3

    path = sqlite_path(uri)
    if path is None:
        return
    with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(path, timeout=20)) as db:
        db.execute("PRAGMA journal_mode=WAL")


def close_engines() -> None:
    """Close every SQLAlchemy engine this process opened, as the interpreter's teardown would have: closing the last
    connection to a sqlite store folds its write-ahead log into the file and removes it, so the file alone holds
    everything (a copy of it is whole, and a store deleted without its `-wal` leaves nothing stale for the next one).
    For a process that exits without that teardown."""
    import gc
    import sys

    engine_module = sys.modules.get("sqlalchemy.engine")
    if engine_module is None:
        return
    for obj in gc.get_objects():
        # type(), not isinstance(): isinstance also reads `__class__`, which some modules' lazy attributes answer
        # with a deprecation warning (torch.distributed.reduce_op)
        if issubclass(type(obj), engine_module.Engine):
            with contextlib.suppress(Exception):
                obj.dispose()
