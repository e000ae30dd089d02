"""What every system is asked to do: the same conversations, users and messages for all.

Conversations are named by integer keys in disjoint ranges. Each system maps a key to its own id
format (most use the decimal string; langchain-postgres needs a UUID). Decimal-string ids let the
pgbench scripts pass ``\\set`` random integers straight into convdb's unchanged SQL as text
parameters, so pgbench runs exactly the statements convdb sends.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from dataclasses import dataclass, field
from typing import Any, Final

# Key ranges; a key's user is key % USERS, so the owner follows from the key in SQL and in pgbench.
HISTORY_BASE: Final = 1_000_000  # read-only conversations of HISTORY_LENGTH messages
WORK_BASE: Final = 2_000_000  # conversations that appends, batches and turns write to
SCALING_BASE: Final = 3_000_000  # read-only conversations of the scaling sweep, per length
TURN_BASE: Final = 4_000_000  # conversations of the turn ops, kept apart from the append ops' ones
USERS: Final = 97

HISTORY_LENGTH: Final = 1_000
WORK_SEED_LENGTH: Final = 100  # so a turn on a work conversation returns a full 50-message window
HISTORY_LIMIT: Final = 50

OPS: Final = ("append", "append_batch_10", "append_batch_100", "history_50", "get_or_create", "turn")
# convdb and asyncpg-raw also measure the two-call turn (save_message + get_history) that the
# one-round-trip save_and_get_history replaces (issue 4).
EXTRA_OPS: Final = ("turn_two_calls",)
BATCH_SIZES: Final = {"append_batch_10": 10, "append_batch_100": 100}


def user_of(key: int) -> str:
    return str(key % USERS)


def conversation_id(key: int) -> str:
    return str(key)


def uuid_of(key: int) -> str:
    """A stable UUID per key, for stores whose session id column is a UUID."""
    return str(uuid.UUID(int=key))


def text_of(n: int) -> str:
    """Deterministic message text of a realistic size (about 250 characters), different per n."""
    digest = hashlib.md5(str(n).encode(), usedforsecurity=False).hexdigest()
    return f"message {n}: " + " ".join(digest[i : i + 8] for i in range(0, 32, 8)) * 6


# The same SQL expression, used when seeding convdb's tables in bulk, so seeded rows look like the
# ones the benchmark writes (md5(n) in PostgreSQL equals hashlib.md5(str(n)) here).
TEXT_OF_SQL: Final = (
    "'message ' || {n} || ': ' || repeat(substr(md5({n}::text), 1, 8) || ' ' || substr(md5({n}::text), 9, 8)"
    " || ' ' || substr(md5({n}::text), 17, 8) || ' ' || substr(md5({n}::text), 25, 8), 6)"
)

USER_TEXT: Final = text_of(0)


def role_of(n: int) -> str:
    return "user" if n % 2 == 0 else "assistant"


def message_dicts(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"role": role_of(start + i), "content": text_of(start + i)} for i in range(count)]


@dataclass(frozen=True)
class Layout:
    """How much data a run seeds, and which keys each op draws from."""

    history_conversations: int
    work_conversations: int
    scaling_lengths: tuple[int, ...]
    scaling_conversations: int  # per length
    peer_scaling_max: int  # peers seed and sweep only up to this length (their seeding is slow)
    table_sizes: tuple[int, ...] = ()  # --full: total messages in the table for the size sweep

    def history_keys(self) -> list[int]:
        return [HISTORY_BASE + i for i in range(self.history_conversations)]

    def work_keys(self) -> list[int]:
        return [WORK_BASE + i for i in range(self.work_conversations)]

    def turn_keys(self) -> list[int]:
        # Turns read what they write: on their own conversations, a turn's window does not depend
        # on how much the batch ops wrote before (which differs per system).
        return [TURN_BASE + i for i in range(self.work_conversations)]

    def scaling_keys(self, length: int) -> list[int]:
        index = self.scaling_lengths.index(length)
        first = SCALING_BASE + index * 1_000
        return [first + i for i in range(self.scaling_conversations)]


@dataclass
class Picker:
    """Random conversation per call, from this worker's own slice of the keys.

    Workers never share a conversation, for every system alike: the stale-session check of some
    peers (google-adk) would otherwise fail concurrent appends to one session, and pgbench draws
    the same slices (client_id + clients * random), so the ceiling sees the same contention.
    """

    keys: list[int]
    worker: int
    workers: int
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        # Fewer conversations than workers (read-only sweeps): every worker draws from all of them.
        mine = self.keys[self.worker :: self.workers] if len(self.keys) >= self.workers else self.keys
        if not mine:
            raise ValueError("no conversations to draw from")
        self._mine = mine

    def __call__(self) -> int:
        return self._mine[self.rng.randrange(len(self._mine))]
