"""Helpers of the write interactions: the timestamps written and the HTTP dates sent."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from hypothesis import given
from hypothesis import strategies as st

from fhir_server.interactions import resources as res

_TIMES = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999)
)


@given(_TIMES)
def test_instants_are_formatted_like_strftime(moment: datetime) -> None:
    moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    ns = (delta // timedelta(microseconds=1)) * 1000 + 999  # sub-microseconds truncated
    assert res.instant_of_ns(ns) == moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_now_instant_is_now() -> None:
    before = datetime.now(UTC)
    stamp = datetime.fromisoformat(res.now_instant())
    assert before - timedelta(seconds=1) <= stamp <= datetime.now(UTC) + timedelta(seconds=1)
    assert time.time() - stamp.timestamp() < 1


@given(_TIMES)
def test_http_dates_are_rfc_9110_dates(moment: datetime) -> None:
    moment = moment.replace(tzinfo=UTC)
    instant = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert res.http_date(instant) == format_datetime(moment.replace(microsecond=0), usegmt=True)


def test_other_instant_forms_still_give_http_dates() -> None:
    assert res.http_date("2024-02-29T23:59:59+02:00") == "Thu, 29 Feb 2024 21:59:59 GMT"
    assert res.http_date("2024-03-01T10:00:00Z") == "Fri, 01 Mar 2024 10:00:00 GMT"
