#!/usr/bin/env bash
# Remove one guest made by node-up.sh: its QEMU process (SIGTERM, then SIGKILL), which frees its loopback port,
# and the node's files (NVMe image, console log, host key). Safe to run twice or after a half-finished node-up.sh.
# Inputs (environment): NAME NODE_DIR
set -uo pipefail
: "${NAME:?}" "${NODE_DIR:?}"

ours() {  # is pid $1 the QEMU of this node (its command line names the node dir), not a recycled pid?
  [ -r "/proc/$1/cmdline" ] && tr '\0' '\n' < "/proc/$1/cmdline" | grep -qxF -- "file=$NODE_DIR/nvme.img,if=none,id=nvm0,format=raw"
}

pid=$(cat -- "$NODE_DIR/qemu.pid" 2>/dev/null || cat -- "$NODE_DIR/qemu.pid.last" 2>/dev/null || true)
if [ -n "$pid" ] && ours "$pid"; then
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 100); do ours "$pid" || break; sleep 0.1; done
  if ours "$pid"; then
    kill -KILL "$pid" 2>/dev/null
    for _ in $(seq 50); do ours "$pid" || break; sleep 0.1; done
  fi
  ours "$pid" && echo "node-down $NAME: QEMU pid $pid would not die" >&2
fi
rm -rf -- "$NODE_DIR"
exit 0
