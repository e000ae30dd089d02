"""Branches: fork a conversation (a copy of its history up to a seq), in one statement."""

from __future__ import annotations

from typing import Final

from ..errors import ConversationExists, ConversationNotFound, InvalidInput
from ..records import Conversation
from ..sql import QUERIES
from . import Conn

_FORK: Final = QUERIES["fork_conversation"]
_OWNER_CHECK: Final = QUERIES["import_owner_check"]


async def fork(
    conn: Conn, cid: str, uid: str, new_cid: str, at_seq: int, title: str | None, metadata_json: str | None
) -> Conversation:
    row = await conn.fetchrow(_FORK, cid, uid, new_cid, title, at_seq, metadata_json)
    if row is None:
        raise ConversationNotFound()
    if row["id"] is None:
        if at_seq >= row["source_next_seq"]:
            # Known only once the source is read; the statement wrote nothing.
            raise InvalidInput("at_seq", f"is {at_seq}, past the source's newest seq "
                                         f"{row['source_next_seq'] - 1}")
        if await conn.fetchval(_OWNER_CHECK, new_cid, uid):
            raise ConversationExists(new_cid)
        raise ConversationNotFound()
    return Conversation.from_record(row)
