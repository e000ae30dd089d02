"""Run langchain-core's own chat-history tests with ``InMemoryChatMessageHistory`` replaced by
convdb's ``ConvDBChatMessageHistory``.

The tests import ``InMemoryChatMessageHistory`` from ``langchain_core.chat_history`` (their
``RunnableWithMessageHistory`` tests build one per session id); this plugin puts a
``ConvDBChatMessageHistory`` subclass under that name before the test modules are collected. It
keeps only what the in-memory class offers on top of the interface: the ``messages=`` constructor
argument (stored through convdb at construction) and value equality (two histories are equal when
their stored messages are). Test files and assertions are untouched.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from convdb_conformance_common import close, key, on_store_loop, store
from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import BaseMessage

from convdb.integrations.langchain import ConvDBChatMessageHistory

USER = "conformance-user"


class ConvDBInMemoryChatMessageHistory(ConvDBChatMessageHistory):
    """``InMemoryChatMessageHistory(messages=...)`` with its messages stored in convdb."""

    def __init__(self, messages: Sequence[BaseMessage] | None = None, **_: Any) -> None:
        super().__init__(store(), key("langchain-core", uuid.uuid4().hex), USER)
        if messages:
            on_store_loop(self.aadd_messages(list(messages)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, BaseChatMessageHistory):
            return bool(self.messages == other.messages)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ConvDBInMemoryChatMessageHistory(messages={self.messages!r})"


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    import langchain_core.chat_history

    langchain_core.chat_history.InMemoryChatMessageHistory = ConvDBInMemoryChatMessageHistory  # type: ignore[misc]


def pytest_unconfigure(config: pytest.Config) -> None:
    close()
