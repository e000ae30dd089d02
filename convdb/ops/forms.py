"""Which text of the statements that have two: the single statement, or the delegated call.

On Citus a statement that writes twice (an ``UPDATE`` feeding an ``INSERT``) is planned as steps
pulled through the coordinator and committed with two-phase commit; the same work as a function
that Citus sends whole to the conversation's worker is one call (docs/citus.md, "The hot write
path"). A batch (a reservation, then one insert per message, each a hop from the coordinator to
the worker) is one call too. ``schema_citus.sql`` creates those functions; the store picks
``DELEGATED`` when ``verify_schema`` finds them with the bodies this package expects, and
``STATEMENTS`` otherwise (every other database, and a Citus one distributed by an older
``schema_citus.sql``). The texts of a pair take the same parameters and return the same columns,
so the operations read them alike; the batch's call takes one array per column instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ..sql import QUERIES


@dataclass(frozen=True, slots=True)
class Forms:
    """The texts a store sends for its multi-step hot paths."""

    save_message: str
    save_message_guarded: str
    get_or_create_conversation: str
    save_and_get_history: str
    #: The batch as one call; None: the statements of ``ops.messages.save_batch`` (reserve, then
    #: ``executemany`` of the inserts, in one transaction).
    save_messages: str | None

    @property
    def delegated(self) -> bool:
        """True for the delegated calls (what ``ConversationStore.delegated`` reports): only they
        have the batch as one call."""
        return self.save_messages is not None


STATEMENTS: Final = Forms(
    QUERIES["save_message"],
    QUERIES["save_message_guarded"],
    QUERIES["get_or_create_conversation"],
    QUERIES["save_and_get_history"],
    None,
)
DELEGATED: Final = Forms(
    QUERIES["save_message_delegated"],
    QUERIES["save_message_guarded_delegated"],
    QUERIES["get_or_create_conversation_delegated"],
    QUERIES["save_and_get_history_delegated"],
    QUERIES["save_messages_delegated"],
)

__all__ = ["DELEGATED", "STATEMENTS", "Forms"]
