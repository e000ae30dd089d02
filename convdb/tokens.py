"""Token counters for the per-message ``token_count`` stored at save time.

The default is ``convdb.estimate_tokens`` (about four characters per token, no dependency). For
counts that match a model's tokenizer install the ``tiktoken`` extra
(``pip install 'convdb[tiktoken]'``) and pass ``count_tokens=tiktoken_counter()`` to
``ConversationStore.connect``. A caller can always give ``token_count=`` per message instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .validation import TokenCounter

if TYPE_CHECKING:
    import tiktoken


def tiktoken_counter(encoding: str | tiktoken.Encoding = "o200k_base") -> TokenCounter:
    """A counter backed by a tiktoken encoding (a name such as ``"o200k_base"``, or an Encoding).

    The encoding is loaded once, here (tiktoken downloads and caches a named encoding's ranks on
    first use). Special-token text in messages is counted as ordinary text, never refused.
    """
    try:
        import tiktoken
    except ImportError as exc:
        raise ImportError("tiktoken_counter needs tiktoken: pip install 'convdb[tiktoken]'") from exc
    enc = tiktoken.get_encoding(encoding) if isinstance(encoding, str) else encoding

    def count(text: str) -> int:
        return len(enc.encode(text, disallowed_special=()))

    return count
