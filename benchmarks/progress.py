"""Progress bars on stderr: tqdm when installed (the bench extra), plain lines otherwise."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any


class Progress:
    def __init__(self, total: int, description: str, unit: str = "it", enabled: bool = True) -> None:
        self._bar: Any = None
        self._done = 0
        self._total = total
        self._description = description
        self._enabled = enabled
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            print(f"{description}: {total} {unit}", file=sys.stderr)
            return
        self._bar = tqdm(
            total=total,
            desc=description,
            unit=unit,
            unit_scale=True,
            file=sys.stderr,
            dynamic_ncols=True,
            leave=True,
        )

    def update(self, n: int = 1, label: str | None = None) -> None:
        self._done += n
        if self._bar is not None:
            if label is not None:
                self._bar.set_postfix_str(label, refresh=False)
            self._bar.update(n)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._enabled:
            print(f"{self._description}: done", file=sys.stderr)
