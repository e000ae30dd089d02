"""Run langchain-postgres's own chat-history tests with ``PostgresChatMessageHistory`` replaced by
convdb's ``ConvDBChatMessageHistory``.

The tests construct ``PostgresChatMessageHistory(table_name, session_id, sync_connection=...)`` (or
``async_connection=``) and create or drop its table with the class methods ``create_tables`` /
``drop_table`` (and their async twins). The replacement stores each (table, session id) history
as one convdb conversation of a user named after the table; dropping the table erases that user's
conversations (``delete_user_data``), creating it is a no-op (convdb never runs DDL). The
psycopg connections the tests open are accepted and left unused. Test files and assertions are
untouched.
"""

from __future__ import annotations

from typing import Any

import pytest
from convdb_conformance_common import close, key, on_store_loop, store

from convdb.integrations.langchain import ConvDBChatMessageHistory


def _user(table_name: str) -> str:
    return key("langchain-postgres-table", table_name)


class ConvDBPostgresChatMessageHistory(ConvDBChatMessageHistory):
    def __init__(
        self,
        table_name: str,
        session_id: str,
        /,
        *,
        sync_connection: Any = None,
        async_connection: Any = None,
    ) -> None:
        super().__init__(store(), key("langchain-postgres", table_name, session_id), _user(table_name))

    @staticmethod
    def create_tables(connection: Any, table_name: str, /) -> None:
        """convdb's tables are created by schema.sql, applied by a DBA."""

    @staticmethod
    async def acreate_tables(connection: Any, table_name: str, /) -> None:
        """convdb's tables are created by schema.sql, applied by a DBA."""

    @staticmethod
    def drop_table(connection: Any, table_name: str, /) -> None:
        on_store_loop(store().delete_user_data(_user(table_name)))

    @staticmethod
    async def adrop_table(connection: Any, table_name: str, /) -> None:
        await store().delete_user_data(_user(table_name))


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    import langchain_postgres
    import langchain_postgres.chat_message_histories

    langchain_postgres.chat_message_histories.PostgresChatMessageHistory = ConvDBPostgresChatMessageHistory  # type: ignore[misc]
    langchain_postgres.PostgresChatMessageHistory = ConvDBPostgresChatMessageHistory  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    close()
