"""Login for the simulated exchange: an HMAC-SHA256 signature over a documented string.

With credentials configured (``SimExchange(credentials={"my-key": "my-secret"})``)
a login must be::

    {"op": "login", "key": "my-key", "timestamp": 1700000000.0, "nonce": "n-1",
     "signature": sign_login("my-secret", "my-key", 1700000000.0, "n-1"), "id": 1}

where the signature is the lowercase hex HMAC-SHA256, keyed with the secret
(UTF-8), of the UTF-8 string ``"login\\n{key}\\n{timestamp}\\n{nonce}"`` with
``timestamp`` and ``nonce`` exactly as sent (JSON text of the timestamp
number as Python's ``repr``/``str`` renders it, e.g. ``1700000000.0``; a
string timestamp is used as is). A nonce may be used once per key. With
``login_window`` set the timestamp must be within that many seconds of the
exchange's clock (``anyio.current_time()``: on virtual time the client shares
it).

Without credentials (the default) any non-empty ``key`` logs in, as before.
Secrets and signatures are never logged or put into reprs.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Authenticator", "login_payload", "sign_login"]

_NONCES_KEPT = 100_000  # per exchange: enough for any test, bounded for long runs


def login_payload(key: str, timestamp: float | str, nonce: str) -> str:
    """The exact string a login signature covers."""
    return f"login\n{key}\n{timestamp}\n{nonce}"


def sign_login(secret: str, key: str, timestamp: float | str, nonce: str) -> str:
    """The ``signature`` field of a login: hex HMAC-SHA256 of :func:`login_payload` keyed by ``secret``."""
    return hmac.new(secret.encode(), login_payload(key, timestamp, nonce).encode(), hashlib.sha256).hexdigest()


@dataclass(slots=True)
class Authenticator:
    """Checks logins against ``credentials`` (key -> secret); None accepts any non-empty key."""

    credentials: Mapping[str, str] | None = field(default=None, repr=False)
    login_window: float | None = None
    _nonces: set[tuple[str, str]] = field(default_factory=set, repr=False)
    _order: deque[tuple[str, str]] = field(default_factory=deque, repr=False)

    def check(self, key: str, timestamp: object, nonce: object, signature: object, now: float) -> str | None:
        """None when the login is good, else why not (never naming the secret or the signature)."""
        if not key:
            return "empty or missing 'key'"
        if self.credentials is None:
            return None
        secret = self.credentials.get(key)
        if secret is None:
            return "unknown API key"
        if not isinstance(timestamp, (int, float, str)) or isinstance(timestamp, bool):
            return "'timestamp' must be a number or a string"
        if not isinstance(nonce, str) or not nonce:
            return "'nonce' must be a non-empty string"
        if not isinstance(signature, str):
            return "'signature' must be a string"
        if not hmac.compare_digest(sign_login(secret, key, timestamp, nonce), signature):
            return "invalid signature"
        if self.login_window is not None:
            try:
                skew = abs(float(timestamp) - now)
            except ValueError:
                return "'timestamp' is not a number"
            if skew > self.login_window:
                return f"timestamp outside the {self.login_window:g} s window"
        if (key, nonce) in self._nonces:
            return "nonce already used"
        self._nonces.add((key, nonce))
        self._order.append((key, nonce))
        if len(self._order) > _NONCES_KEPT:
            self._nonces.discard(self._order.popleft())
        return None
