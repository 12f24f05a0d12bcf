#!/usr/bin/env bash
# The run's SSH keys, made on the runner before any instance exists: the client key every node authorizes and
# one host key per node (cloud-init installs it), so known_hosts is exact from the first connection.
# Inputs (environment): KEY_DIR NODE_COUNT COMMENT. Leaves KEY_DIR/id_ed25519{,.pub} and KEY_DIR/host-<i>{,.pub}.
set -euo pipefail
: "${KEY_DIR:?}" "${NODE_COUNT:?}" "${COMMENT:?}"
command -v ssh-keygen >/dev/null || { echo "keys.sh: ssh-keygen not found; install openssh-client" >&2; exit 1; }
mkdir -p -- "$KEY_DIR"
chmod 700 -- "$KEY_DIR"
rm -f -- "$KEY_DIR"/id_ed25519 "$KEY_DIR"/id_ed25519.pub "$KEY_DIR"/host-*
ssh-keygen -q -t ed25519 -N '' -C "$COMMENT" -f "$KEY_DIR/id_ed25519"
for ((i = 0; i < NODE_COUNT; i++)); do
  ssh-keygen -q -t ed25519 -N '' -C "$COMMENT-$i" -f "$KEY_DIR/host-$i"
done
