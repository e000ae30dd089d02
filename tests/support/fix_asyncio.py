"""Fail a test that leaves asyncio errors in the log (opt-in fixture ``asyncio_errors_fail``).

An embedding server sees what asyncio logs: "Future exception was never retrieved" or "Task
exception was never retrieved" means some future convdb created failed and nobody awaited it. Those
messages are logged when the future is garbage-collected, so the fixture collects before it looks.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator

import pytest

# What asyncio logs for a future or task whose exception nobody retrieved (asyncio/futures.py, tasks.py).
UNRETRIEVED = ("exception was never retrieved", "Task was destroyed but it is pending")


class AsyncioErrors(logging.Handler):
    """Keeps every ERROR record of the ``asyncio`` logger."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def unretrieved(self) -> list[str]:
        return [
            r.getMessage() + (f": {r.exc_info[1]!r}" if r.exc_info else "")
            for r in self.records
            if any(text in r.getMessage() for text in UNRETRIEVED)
        ]


@pytest.fixture
def asyncio_errors() -> Iterator[AsyncioErrors]:
    """The asyncio logger's errors during the test (collected garbage first), for a test to inspect."""
    handler = AsyncioErrors()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        gc.collect()
        logger.removeHandler(handler)


@pytest.fixture
def asyncio_errors_fail(asyncio_errors: AsyncioErrors) -> Iterator[None]:
    """Fails the test, after it ran, if asyncio logged an unretrieved future or task exception."""
    yield
    gc.collect()
    found = asyncio_errors.unretrieved()
    if found:
        pytest.fail(f"asyncio logged {len(found)} unretrieved exception(s); first: {found[0]}", pytrace=False)
