"""Login throttling: exponential back-off per user name and per client address.

Why: a password check answers as fast as bcrypt allows (a few guesses per second per core); without
a limit an attacker guesses around the clock. After a few failures a name (or an address) must wait
1 s, then 2 s, 4 s ... up to :attr:`LoginThrottle.cap` before the next try; the server answers 429
with ``Retry-After`` meanwhile, for known and unknown names alike (so the answer does not say
whether a user exists), and the right password does not help while the wait lasts.

Attempts are counted when they *start*, not when bcrypt has finished: guesses sent in parallel
cannot all slip through before the first failure is recorded. A successful login clears its user
name and returns the attempt to its address. Memory is bounded (:attr:`LoginThrottle.max_keys`,
oldest forgotten first) and counts are forgotten after :attr:`LoginThrottle.forget` seconds
without a failure. Standard library only.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["LoginThrottle"]


@dataclass
class _Count:
    failures: int = 0
    last: float = 0.0
    blocked_until: float = 0.0


@dataclass
class LoginThrottle:
    """Back-off state of one server.

    Args:
        free_per_user: failed attempts a user name may make before it must wait.
        free_per_address: failed attempts one client address may make (over all names) before it waits.
        base: the first wait in seconds; each further failure doubles it.
        cap: the longest wait in seconds.
        forget: seconds without a failure after which a count is dropped.
        max_keys: most names and addresses remembered at once.
        clock: monotonic time source (tests pass their own).
    """

    free_per_user: int = 5
    free_per_address: int = 20
    base: float = 1.0
    cap: float = 900.0
    forget: float = 3600.0
    max_keys: int = 20000
    clock: Callable[[], float] = time.monotonic
    _counts: OrderedDict[tuple[str, str], _Count] = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @staticmethod
    def _keys(username: str, address: str) -> tuple[tuple[str, str], tuple[str, str]]:
        return ("user", username.strip().lower()[:128]), ("address", address[:64])

    def _free(self, key: tuple[str, str]) -> int:
        return self.free_per_user if key[0] == "user" else self.free_per_address

    def _get(self, key: tuple[str, str], now: float) -> _Count:
        count = self._counts.get(key)
        if count is not None and now - count.last > self.forget and count.blocked_until <= now:
            del self._counts[key]
            count = None
        if count is None:
            count = self._counts[key] = _Count()
            while len(self._counts) > self.max_keys:
                self._counts.popitem(last=False)
        self._counts.move_to_end(key)
        return count

    def begin(self, username: str, address: str) -> float:
        """Start a login attempt: 0.0 when it may go on (it is counted as a failure until
        :meth:`succeeded`), else the seconds to wait (nothing is counted)."""
        now = self.clock()
        with self._lock:
            counts = [(key, self._get(key, now)) for key in self._keys(username, address)]
            wait = max(c.blocked_until - now for _, c in counts)
            if wait > 0:
                return wait
            for key, count in counts:
                count.failures += 1
                count.last = now
                over = count.failures - self._free(key)
                if over >= 0:  # the last free attempt: the next one waits
                    count.blocked_until = now + min(self.cap, self.base * 2 ** min(over, 62))
            return 0.0

    def succeeded(self, username: str, address: str) -> None:
        """The attempt :meth:`begin` counted was a success: forget the name's failures and give the
        address its attempt back."""
        user_key, address_key = self._keys(username, address)
        with self._lock:
            self._counts.pop(user_key, None)
            count = self._counts.get(address_key)
            if count is not None:
                count.failures = max(0, count.failures - 1)
                if count.failures < self._free(address_key):
                    count.blocked_until = 0.0
