"""What convdb needs of the server's settings, checked by ``verify_schema``."""

from __future__ import annotations

from typing import Final

from ..errors import UnsupportedIsolation
from ..sql import QUERIES
from . import Conn

_DEFAULT_ISOLATION: Final = QUERIES["default_isolation"]


async def check_isolation(conn: Conn) -> None:
    """Raise ``UnsupportedIsolation`` unless single statements run at READ COMMITTED.

    Checked rather than set per connection: a session-level ``SET`` (or a startup parameter) is
    not kept behind PgBouncer in transaction mode, where each transaction may run on another
    server connection, and wrapping every single statement in ``BEGIN ISOLATION LEVEL READ
    COMMITTED`` ... ``COMMIT`` was measured at 0.60x the throughput of the bare statement for
    save_message and 0.41x for get_history (one connection, sequential, medians of 5 x 500 calls).
    A role or database setting is what every server connection starts with, pooler or not.
    """
    level = await conn.fetchval(_DEFAULT_ISOLATION)
    if level != "read committed":
        raise UnsupportedIsolation(
            f"default_transaction_isolation is {level!r}; convdb's statements rely on READ COMMITTED "
            "(concurrent writes fail with serialization errors otherwise). Set it for convdb's role: "
            "ALTER ROLE <role> SET default_transaction_isolation = 'read committed' (or ALTER DATABASE), "
            "or use row_level_security=True, which runs every call in a READ COMMITTED transaction"
        )
