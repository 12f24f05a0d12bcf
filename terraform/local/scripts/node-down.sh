#!/usr/bin/env bash
# Remove one test node made by node-up.sh: every process in its namespace (sshd and whatever it started),
# the namespace, the veth pair and the node's files. Safe to run twice or after a half-finished node-up.sh.
# Inputs (environment): NS VETH_HOST NODE_DIR
set -uo pipefail
: "${NS:?}" "${VETH_HOST:?}" "${NODE_DIR:?}"

if ip netns list | awk '{print $1}' | grep -qxF "$NS"; then
  pids=$(ip netns pids "$NS")
  if [ -n "$pids" ]; then
    kill -TERM $pids 2>/dev/null
    for _ in $(seq 30); do
      pids=$(ip netns pids "$NS")
      [ -z "$pids" ] && break
      sleep 0.1
    done
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
  fi
  ip netns del "$NS" || echo "node-down $NS: could not delete namespace $NS" >&2
fi
# Deleting the namespace takes the veth pair with it, asynchronously; only what is still there needs removing.
if ip link show "$VETH_HOST" >/dev/null 2>&1; then
  ip link del "$VETH_HOST" 2>/dev/null || ! ip link show "$VETH_HOST" >/dev/null 2>&1 \
    || echo "node-down $NS: could not delete link $VETH_HOST" >&2
fi
rm -rf -- "$NODE_DIR"
exit 0
