#!/usr/bin/env bash
# Wait, from the runner, until a node says it is ready: cloud-init done, rebooted into the hugepage kernel
# command line, instance-store NVMe bound for SPDK, spdk_tgt/socat/gdb installed. Over SSH with the node's
# pinned host key; connection failures (booting, rebooting) are retried, a node that reports a failure ends
# the wait at once with its one-line reason.
# Inputs (environment): NAME ADDRESS USER KEY HOST_PUBKEY [TIMEOUT seconds, default 1200] [POLL seconds, 10]
set -euo pipefail
: "${NAME:?}" "${ADDRESS:?}" "${USER:?}" "${KEY:?}" "${HOST_PUBKEY:?}"
TIMEOUT=${TIMEOUT:-1200}
POLL=${POLL:-10}
command -v ssh >/dev/null || { echo "wait-ready $NAME: ssh not found; install openssh-client" >&2; exit 1; }
known=$(mktemp)
trap 'rm -f -- "$known"' EXIT
printf '%s %s\n' "$ADDRESS" "$HOST_PUBKEY" > "$known"
deadline=$(( $(date +%s) + TIMEOUT ))
last="no answer yet"
while :; do
  if out=$(ssh -n -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$known" \
      -o ConnectTimeout=10 -o ServerAliveInterval=10 -i "$KEY" "$USER@$ADDRESS" \
      /usr/local/bin/lvol-storm-node status 2>&1); then
    case $out in
      ready*) echo "wait-ready $NAME: $out"; exit 0 ;;
      failed*) echo "wait-ready $NAME ($ADDRESS): $out" >&2; exit 1 ;;
    esac
  fi
  last=$(printf '%s' "$out" | tail -n 1)
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "wait-ready $NAME ($ADDRESS): not ready after ${TIMEOUT}s; last answer: $last" >&2
    exit 1
  fi
  sleep "$POLL"
done
