#!/usr/bin/env bash
# Bring up one throwaway test node on this machine: a network namespace joined to the root namespace by a
# veth pair (a /30 of its own), running its own sshd with its own host key; root logs in with the run's key.
# Inputs (environment): NS VETH_HOST VETH_NODE HOST_ADDR NODE_ADDR NODE_DIR PUBKEY [SSHD] [SSHD_WAIT seconds]
#                       [MAX_SESSIONS per connection, default 64]
# Leaves NODE_DIR/known_hosts (one line for this node). node-down.sh undoes all of it.
set -euo pipefail
: "${NS:?}" "${VETH_HOST:?}" "${VETH_NODE:?}" "${HOST_ADDR:?}" "${NODE_ADDR:?}" "${NODE_DIR:?}" "${PUBKEY:?}"
SSHD=${SSHD:-/usr/sbin/sshd}
SSHD_WAIT=${SSHD_WAIT:-10}

fail() { echo "node-up $NS: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "must run as root (it creates network namespaces)"
command -v ip >/dev/null || fail "ip not found; install iproute2"
command -v ssh-keygen >/dev/null || fail "ssh-keygen not found; install openssh-client"
[ -x "$SSHD" ] || fail "$SSHD not found; install openssh-server (apt-get install -y openssh-server)"
[ -r "$PUBKEY" ] || fail "public key $PUBKEY not found"
if ip netns list | awk '{print $1}' | grep -qxF "$NS"; then
  fail "namespace $NS already exists (left by an earlier run?); remove it with: ip netns del $NS"
fi
if ip -o -4 addr show | grep -qF " ${HOST_ADDR}/"; then
  fail "address $HOST_ADDR is already in use on this machine (another run?); pick another run_id"
fi

# From here on a failure removes whatever was made, so a re-apply starts clean.
trap 'rc=$?; [ $rc -eq 0 ] || "$(dirname "$0")/node-down.sh"; exit $rc' EXIT
mkdir -p "$NODE_DIR"
rm -f "$NODE_DIR/ssh_host_ed25519_key" "$NODE_DIR/ssh_host_ed25519_key.pub"
ssh-keygen -q -t ed25519 -N '' -C "$NS" -f "$NODE_DIR/ssh_host_ed25519_key"
cp "$PUBKEY" "$NODE_DIR/authorized_keys"
cat > "$NODE_DIR/sshd_config" <<CONF
# sshd for test node $NS: key login only, nothing outside the namespace listens.
Port 22
ListenAddress $NODE_ADDR
HostKey $NODE_DIR/ssh_host_ed25519_key
PidFile $NODE_DIR/sshd.pid
AuthorizedKeysFile $NODE_DIR/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
StrictModes no
AllowTcpForwarding no
AllowStreamLocalForwarding yes
X11Forwarding no
MaxSessions ${MAX_SESSIONS:-64}
MaxStartups 64:30:128
Subsystem sftp internal-sftp
CONF
mkdir -p /run/sshd  # sshd's privilege separation directory
"$SSHD" -t -f "$NODE_DIR/sshd_config" || fail "sshd rejected $NODE_DIR/sshd_config"

ip netns add "$NS"
ip link add "$VETH_HOST" type veth peer name "$VETH_NODE"
ip link set "$VETH_NODE" netns "$NS"
ip addr add "$HOST_ADDR/30" dev "$VETH_HOST"
ip link set "$VETH_HOST" up
ip -n "$NS" link set lo up
ip -n "$NS" addr add "$NODE_ADDR/30" dev "$VETH_NODE"
ip -n "$NS" link set "$VETH_NODE" up

ip netns exec "$NS" "$SSHD" -f "$NODE_DIR/sshd_config" -E "$NODE_DIR/sshd.log"
for _ in $(seq $((SSHD_WAIT * 10))); do
  if timeout 1 bash -c "exec 3<>/dev/tcp/$NODE_ADDR/22" 2>/dev/null; then
    echo "$NODE_ADDR $(cut -d' ' -f1,2 "$NODE_DIR/ssh_host_ed25519_key.pub")" > "$NODE_DIR/known_hosts"
    exit 0
  fi
  sleep 0.1
done
fail "sshd did not listen on $NODE_ADDR:22 within $SSHD_WAIT s; see $NODE_DIR/sshd.log"
