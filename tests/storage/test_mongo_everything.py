"""``$everything`` (``tests/operations/test_everything.py``) on the MongoDB store.

The same mechanism as ``test_mongo_api``: every test function of that module is
re-exported here with the ``store`` fixture replaced by a MongoDB store (the ``client``
fixture of ``tests/conftest.py`` and the module's own fixtures then run on it), unless it
is listed in ``LEFT_OUT`` with the reason.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from tests.operations import test_everything
from tests.operations.test_everything import demo, env, small
from tests.storage.mongo_support import mongodb_uri, store

LEFT_OUT: dict[str, str] = {
    "test_a_thousand_resources_in_well_under_a_second": (
        "a timing of the SQLite store; the stand-in evaluates every query in Python"
    ),
    "test_care_dates_are_date_parameters": "checks the definitions, uses no store",
}

REUSED: dict[str, Callable[..., Any]] = {
    name: obj
    for name, obj in vars(test_everything).items()
    if name.startswith("test_")
    and inspect.isfunction(obj)
    and obj.__module__ == test_everything.__name__
    and name not in LEFT_OUT
}
globals().update(REUSED)


def test_every_everything_test_runs_here_or_is_left_out() -> None:
    every = {
        name
        for name, obj in vars(test_everything).items()
        if name.startswith("test_") and inspect.isfunction(obj)
    }
    assert set(LEFT_OUT) <= every
    assert every == set(REUSED) | set(LEFT_OUT)


__all__ = ["demo", "env", "mongodb_uri", "small", "store", *REUSED]
