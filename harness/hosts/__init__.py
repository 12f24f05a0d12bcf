"""One `Host` API, many backends (testinfra's idea): everything SPDK-specific is written on top of it."""

from harness.hosts.base import CommandResult, Host, HostProcess, LineStream
from harness.hosts.local import LocalHost
from harness.hosts.ssh import SshHost

__all__ = ["CommandResult", "Host", "HostProcess", "LineStream", "LocalHost", "SshHost"]
