"""The test suite's own machinery: folder markers and the asyncio-error fixture (no database)."""

from __future__ import annotations

import asyncio
import gc

from tests.conftest import TESTS, markers_for
from tests.support.fix_asyncio import AsyncioErrors


def test_markers_come_from_the_folder() -> None:
    assert markers_for(TESTS / "unit" / "test_validation.py") == set()
    assert markers_for(TESTS / "core" / "test_core_store.py") == {"db"}
    assert markers_for(TESTS / "faults" / "test_reliability_faults.py") == {"db", "faults"}
    assert markers_for(TESTS / "property" / "test_property_store.py") == {"db", "property"}
    # A new file in a folder without a rule still gets the database marker, and the file-name
    # rules (the old path-based selection) hold anywhere.
    assert markers_for(TESTS / "integration" / "test_hardening_x.py") == {"db"}
    assert markers_for(TESTS / "integration" / "test_reliability_x.py") == {"db", "faults"}
    assert markers_for(TESTS / "integration" / "test_property_x.py") == {"db", "property"}


def test_asyncio_errors_sees_a_future_exception_nobody_retrieved(asyncio_errors: AsyncioErrors) -> None:
    async def leave_one_behind() -> None:
        future = asyncio.get_running_loop().create_future()
        future.set_exception(ConnectionError("unexpected connection_lost() call"))

    asyncio.run(leave_one_behind())
    gc.collect()
    found = asyncio_errors.unretrieved()
    assert len(found) == 1
    assert "Future exception was never retrieved" in found[0]
    assert "connection_lost" in found[0]


def test_asyncio_errors_ignores_a_retrieved_exception(asyncio_errors: AsyncioErrors) -> None:
    async def retrieve() -> None:
        future = asyncio.get_running_loop().create_future()
        future.set_exception(ConnectionError("seen"))
        assert isinstance(future.exception(), ConnectionError)

    asyncio.run(retrieve())
    gc.collect()
    assert asyncio_errors.unretrieved() == []
