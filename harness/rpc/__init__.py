"""SPDK's JSON-RPC, typed: `client.RpcConnection` (asyncio, pipelined, the storm's), `sync.SyncRpc` (blocking,
setup's), `errors.RpcError` and its subclasses, and the lvol methods with SPDK's own names
(`methods.RpcMethods`, `methods.SyncRpcMethods`). This package imports none of its modules (importing one
must not pull in the rest): import them by their own names."""
