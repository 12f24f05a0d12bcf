"""The reference target: a test double of `spdk_tgt`'s lvol RPCs, served over SPDK's JSON-RPC wire format.

It is a stand-in for CI and a checker, never a silent substitute: every run against it says so loudly.
"""
