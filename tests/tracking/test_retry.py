"""What the store retries: real MLflow, requests and SQLAlchemy exceptions, chained the way MLflow 3.17 raises them."""

from __future__ import annotations

import pytest
import requests
import sqlalchemy.exc
from mlflow.exceptions import MlflowException

from runtree_pipeline.errors import TrackingFailed
from runtree_pipeline.interrupts import Signalled
from runtree_pipeline.tracking.retry import RETRY_SECONDS, is_transient, retrying


def raised(error: BaseException, *, during: BaseException | None = None) -> BaseException:
    """`error` as Python leaves it when raised while handling `during` (MLflow wraps without `from`)."""
    try:
        try:
            if during is not None:
                raise during
        finally:
            raise error
    except BaseException as e:  # noqa: BLE001 - returned for inspection
        return e


def api_error(cause: BaseException) -> BaseException:
    return raised(MlflowException("API request to http://127.0.0.1:5000/api failed with exception"), during=cause)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        pytest.param(api_error(requests.ConnectionError("refused")), True, id="server-down"),
        pytest.param(api_error(requests.exceptions.RetryError("too many 503")), True, id="5xx-after-mlflow-retries"),
        pytest.param(
            raised(
                MlflowException("database is locked", error_code="TEMPORARILY_UNAVAILABLE"),
                during=sqlalchemy.exc.OperationalError("INSERT", {}, Exception("database is locked")),
            ),
            True,
            id="sqlite-locked",
        ),
        pytest.param(MlflowException("bad param", error_code="INVALID_PARAMETER_VALUE"), False, id="bad-request"),
        pytest.param(MlflowException("no such run", error_code="RESOURCE_DOES_NOT_EXIST"), False, id="missing-run"),
        pytest.param(raised(Signalled(15), during=api_error(requests.ConnectionError())), False, id="interrupt"),
    ],
)
def test_only_a_busy_or_unreachable_store_is_worth_retrying(error, transient):
    assert is_transient(error) is transient


def test_a_failure_that_outlives_the_budget_names_what_could_not_be_done(monkeypatch):
    monkeypatch.setenv(RETRY_SECONDS, "0.6")
    calls = []

    def down() -> None:
        calls.append(1)
        raise api_error(requests.ConnectionError("refused"))

    with pytest.raises(TrackingFailed, match=r"^could not end run fit/x=1: API request to .* failed"):
        retrying("end run fit/x=1", down)
    assert 1 < len(calls) < 6


def test_a_permanent_error_is_not_retried():
    calls = []

    def wrong() -> None:
        calls.append(1)
        raise MlflowException("bad param", error_code="INVALID_PARAMETER_VALUE")

    with pytest.raises(TrackingFailed, match="^could not tag run a: bad param$"):
        retrying("tag run a", wrong)
    assert len(calls) == 1
