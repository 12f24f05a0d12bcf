"""Connecting to a target's RPC socket through a `Host`, retried for a bounded time (the only thing we retry
besides idempotent reads): the target may still be creating its socket when the harness starts talking."""

from __future__ import annotations

import asyncio
import socket

from tenacity import AsyncRetrying, Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from harness.errors import HostError
from harness.hosts.base import Host
from harness.rpc.errors import RpcConnectError

_RETRIED = (OSError, HostError)
MAX_CONNECTIONS = 64
"""SPDK_JSONRPC_MAX_CONNS (lib/jsonrpc/jsonrpc_internal.h): spdk_tgt serves this many connections at once; one
more waits in the listen backlog, connected but never answered, until another closes."""


def _wait() -> wait_exponential:
    return wait_exponential(multiplier=0.02, min=0.02, max=0.5)


def _failed(host: Host, sock_path: str, connect_timeout: float, exc: BaseException) -> RpcConnectError:
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return RpcConnectError(
        "connect", None,
        f"cannot connect to RPC socket {sock_path} on {host.name} within {connect_timeout:g} s "
        f"(last error: {detail}); is the target running and is the socket path right?",
    )


def connect_unix_retrying(host: Host, sock_path: str, connect_timeout: float) -> socket.socket:
    """`host.connect_unix`, retried with backoff for up to `connect_timeout` s; RpcConnectError after that."""
    per_try = max(0.1, min(5.0, connect_timeout))
    try:
        for attempt in Retrying(stop=stop_after_delay(connect_timeout), wait=_wait(),
                                retry=retry_if_exception_type(_RETRIED), reraise=True):
            with attempt:
                return host.connect_unix(sock_path, timeout=per_try)
    except _RETRIED as exc:
        raise _failed(host, sock_path, connect_timeout, exc) from exc
    raise AssertionError("unreachable")  # pragma: no cover


async def connect_unix_retrying_async(host: Host, sock_path: str, connect_timeout: float) -> socket.socket:
    """The same from asyncio: each attempt runs in a thread (an SSH host may block for a round trip)."""
    loop = asyncio.get_running_loop()
    per_try = max(0.1, min(5.0, connect_timeout))
    try:
        async for attempt in AsyncRetrying(stop=stop_after_delay(connect_timeout), wait=_wait(),
                                           retry=retry_if_exception_type(_RETRIED), reraise=True):
            with attempt:
                return await loop.run_in_executor(None, lambda: host.connect_unix(sock_path, timeout=per_try))
    except _RETRIED as exc:
        raise _failed(host, sock_path, connect_timeout, exc) from exc
    raise AssertionError("unreachable")  # pragma: no cover
