"""Retries with exponential backoff, for every API the controller calls."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Transient(Exception):  # noqa: N818 (named for what the caller does with it: retry)
    """A failure worth retrying (no answer, 5xx, 429); the message says what failed."""


@dataclasses.dataclass
class Backoff:
    attempts: int = 4
    first: float = 0.5
    factor: float = 2.0
    sleep: Callable[[float], None] = time.sleep

    def run(self, attempt: Callable[[], T]) -> T:
        """`attempt()` until it returns; a Transient it raises is retried, the last one re-raised with the count."""
        delay = self.first
        for number in range(1, self.attempts + 1):
            try:
                return attempt()
            except Transient as error:
                if number == self.attempts:
                    raise Transient(f"{error} (after {number} attempts)") from None
            self.sleep(delay)
            delay *= self.factor
        raise AssertionError("attempts must be at least 1")
