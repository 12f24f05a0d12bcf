"""RPC failures as values the storm and the model can compare: a JSON-RPC error reply, a deadline, a lost socket.

SPDK's error codes are not consistent (the same errno comes back as -17, -32602 or -32603 depending on the
RPC), but the message usually is `strerror(errno)`. So the errno is decided from the message first, over the
whole errno table, and from a negative-errno code second; the storm and the model then compare errno names.
"""

from __future__ import annotations

import errno as _errno
import os

from harness.errors import HarnessError, TargetError


def _errno_by_message() -> dict[str, int]:
    """`strerror(n) -> n` for every errno this platform knows ("Device or resource busy" -> EBUSY)."""
    table: dict[str, int] = {}
    for number in sorted(_errno.errorcode):
        # Aliases (EWOULDBLOCK/EAGAIN) share a number; errorcode already names the canonical one.
        table.setdefault(os.strerror(number), number)
        table.setdefault(os.strerror(number).lower(), number)
    return table


_ERRNO_BY_MESSAGE = _errno_by_message()

# JSON-RPC's own codes (-32700..-32600) and SPDK's generic ones are not errnos; real errnos are small.
_MAX_ERRNO = 4095


def errno_of(code: int | None, message: str | None) -> int | None:
    """The errno an SPDK error reply stands for, or None (e.g. `spdk_json_decode_object failed`).

    The message wins over the code: `-32603 "Operation not permitted"` is EPERM. A code that is a negative
    errno (`-19`, `-2 "Lvol store nope not found"`) is used when the message is not a strerror text.
    """
    if message:
        text = message.strip()
        number = _ERRNO_BY_MESSAGE.get(text)
        if number is None:
            number = _ERRNO_BY_MESSAGE.get(text.lower())
        if number is not None:
            return number
    if code is not None and -_MAX_ERRNO <= code < 0 and -code in _errno.errorcode:
        return -code
    return None


def errno_name_of(code: int | None, message: str | None) -> str | None:
    """`EBUSY`, `ENODEV`, ... or None; see `errno_of`."""
    number = errno_of(code, message)
    return _errno.errorcode[number] if number is not None else None


class RpcError(HarnessError):
    """The target answered `method` with a JSON-RPC error (`code`, `message`), or the call failed on the way.

    `errno`/`errno_name` say which errno the reply stands for (None when it is not an errno, e.g. -32601).
    Subclasses mark failures without a reply; their `code` is None.
    """

    def __init__(self, method: str, code: int | None, message: str) -> None:
        self.method = method
        self.code = code
        self.message = message
        self.errno: int | None = errno_of(code, message)
        self.errno_name: str | None = _errno.errorcode[self.errno] if self.errno is not None else None
        # No Exception.__init__ with the text: it is made when printed (a storm at depth 64 meets ~10,000
        # error replies a second and prints none of them).

    def __str__(self) -> str:
        return self._describe()

    def _describe(self) -> str:
        code = f" {self.code}" if self.code is not None else ""
        name = f" ({self.errno_name})" if self.errno_name else ""
        return f"{self.method}:{code} {self.message}{name}"

    def as_record(self) -> dict[str, object]:
        """The `error` object of a history line."""
        return {"code": self.code, "message": self.message, "errno": self.errno_name}

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.method, self.code, self.message))


class RpcTimeout(RpcError):
    """No reply within the call's deadline. The target may still execute the request: its effect is unknown."""

    def __init__(self, method: str, code: int | None = None, message: str = "no reply before the deadline") -> None:
        super().__init__(method, code, message)
        self.errno = _errno.ETIMEDOUT
        self.errno_name = "ETIMEDOUT"


class RpcAbandoned(RpcError):
    """The caller stopped waiting because the target is known dead or hung (the watchdog said so): the call's
    effect is unknown, and it is never retried."""

    def __init__(self, method: str, code: int | None = None,
                 message: str = "abandoned: the watchdog saw the target die or hang") -> None:
        super().__init__(method, code, message)
        self.errno = _errno.ECANCELED
        self.errno_name = "ECANCELED"


class RpcConnectionLost(RpcError):
    """The socket closed (the target died or closed us) before the reply came; the effect is unknown."""

    def __init__(self, method: str, code: int | None = None, message: str = "connection lost") -> None:
        super().__init__(method, code, message)
        self.errno = _errno.ECONNRESET
        self.errno_name = "ECONNRESET"


class RpcConnectError(RpcError, TargetError):
    """Could not connect to the target's RPC socket within the connect timeout (nothing was sent)."""

    def __init__(self, method: str, code: int | None = None, message: str = "cannot connect") -> None:
        super().__init__(method, code, message)
        self.errno = _errno.ECONNREFUSED
        self.errno_name = "ECONNREFUSED"

    def _describe(self) -> str:
        return self.message
