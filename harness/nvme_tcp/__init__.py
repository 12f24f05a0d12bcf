"""NVMe over TCP for the storm's I/O: the spec's byte layouts (`spec`), NVMe/TCP PDUs (`pdu`) and a userspace
asyncio initiator (`initiator`). No sockets in `spec` and `pdu`: the reference target serves the same bytes."""
