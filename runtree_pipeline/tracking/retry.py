"""Retries for store calls: tenacity, keyed on MLflow's error codes and exception types, never on message text.

Against a server MLflow already retries each HTTP request (connection errors and 429/5xx, with backoff, per
`MLFLOW_HTTP_REQUEST_MAX_RETRIES`); what reaches us is what outlived those. This layer is for what MLflow does not
retry: a locked or briefly unavailable sqlite database, and a request that failed after MLflow gave up, tried again
for at most `RUNTREE_RETRY_SECONDS` (default 15) before the write is reported as failed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Iterator
from typing import Any, TypeVar

from runtree_pipeline.errors import TrackingFailed, first_line
from runtree_pipeline.interrupts import shielded

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_SECONDS = "RUNTREE_RETRY_SECONDS"
_TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "RESOURCE_EXHAUSTED", "REQUEST_LIMIT_EXCEEDED"}


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_transient(error: BaseException) -> bool:
    """Worth trying again: the store was busy or unreachable, not wrong about what we asked."""
    import requests
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    if not isinstance(error, Exception):
        return False  # an interrupt raised at the end of a failed attempt is not a store problem
    for cause in _chain(error):
        if isinstance(cause, MlflowException) and cause.error_code in _TRANSIENT_CODES:
            return True
        if isinstance(cause, (ConnectionError, TimeoutError, requests.ConnectionError, requests.Timeout)):
            return True
        if isinstance(cause, requests.exceptions.RetryError):  # 429/5xx outlived MLflow's own retries
            return True
        if isinstance(cause, sqlalchemy.exc.OperationalError):
            return True
    return False


def answered(codes: Collection[str], call: Callable[..., T], *args: Any, default: Any = None) -> T | Any:
    """`call(*args)`, or `default` when MLflow answers with one of `codes`: an outcome we expected (the run is
    gone, the model exists already), not a failure to retry or report."""
    from mlflow.exceptions import MlflowException

    try:
        return call(*args)
    except MlflowException as e:
        if e.error_code in codes:
            return default
        raise


def retrying(what: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`call` with transient failures retried; a final failure becomes TrackingFailed naming `what`.

    Each attempt runs with signals deferred, so an interrupt never lands between a write and its bookkeeping.
    """
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_exponential

    def attempt() -> T:
        with shielded():
            return call(*args, **kwargs)

    def before_sleep(state: Any) -> None:
        error = state.outcome.exception()
        log.warning("retrying in %.1fs: could not %s (%s)", state.next_action.sleep, what, type(error).__name__)

    budget = float(os.environ.get(RETRY_SECONDS, "15"))
    retryer = Retrying(
        stop=stop_after_delay(budget) | stop_after_attempt(6),
        wait=wait_exponential(multiplier=0.5, min=0.5, max=8),
        retry=retry_if_exception(is_transient),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        return retryer(attempt)
    except Exception as e:  # noqa: BLE001 - any store failure that outlived the retries is reported the same way
        raise TrackingFailed(f"could not {what}: {first_line(e)}") from e
