"""Adapters from other frameworks' history interfaces to a ``ConversationStore``.

Each adapter is an optional extra and is imported explicitly, never from here, so that
``import convdb`` works without the frameworks installed:

- ``convdb.integrations.openai_agents.ConvDBSession``: the OpenAI Agents SDK ``Session`` protocol
  (``pip install 'convdb[openai-agents]'``).
- ``convdb.integrations.langchain.ConvDBChatMessageHistory``: LangChain's
  ``BaseChatMessageHistory`` (``pip install 'convdb[langchain]'``).
"""

__all__: list[str] = []
