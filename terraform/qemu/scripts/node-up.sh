#!/usr/bin/env bash
# Boot one throwaway QEMU guest: the run's kernel and initramfs (IMAGE_DIR), an emulated NVMe controller at
# NVME_ADDR backed by a sparse raw file, its sshd forwarded to a free port on 127.0.0.1 (QEMU user networking),
# its own host key and the run's client key through fw_cfg. Waits until the guest answers SSH with that host key
# and reports `ready` (hugepages reserved, NVMe bound to NVME_DRIVER).
# Inputs (environment): NAME NODE_DIR IMAGE_DIR PUBKEY [QEMU] [PYTHON] [ACCEL tcg|kvm] [NICE 0-19] [MEMORY_MB]
#                       [HUGEPAGES 2 MiB pages] [NVME_SIZE_MB] [NVME_DRIVER] [NVME_ADDR 0000:00:SS.0]
#                       [BOOT_TIMEOUT seconds] [PORT_TRIES]
# Leaves NODE_DIR/port and NODE_DIR/known_hosts ([127.0.0.1]:<port> <host key>). node-down.sh undoes all of it.
set -euo pipefail
: "${NAME:?}" "${NODE_DIR:?}" "${IMAGE_DIR:?}" "${PUBKEY:?}"
QEMU=${QEMU:-qemu-system-x86_64}
PYTHON=${PYTHON:-python3}
ACCEL=${ACCEL:-tcg}
NICE=${NICE:-0}
MEMORY_MB=${MEMORY_MB:-1024}
HUGEPAGES=${HUGEPAGES:-64}
NVME_SIZE_MB=${NVME_SIZE_MB:-256}
NVME_DRIVER=${NVME_DRIVER:-uio_pci_generic}
NVME_ADDR=${NVME_ADDR:-0000:00:04.0}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-180}
PORT_TRIES=${PORT_TRIES:-10}

fail() { echo "node-up $NAME: $*" >&2; exit 1; }

command -v "$QEMU" >/dev/null || fail "$QEMU not found; install QEMU (apt-get install -y qemu-system-x86)"
command -v "$PYTHON" >/dev/null || fail "$PYTHON not found; install python3"
command -v ssh >/dev/null && command -v ssh-keygen >/dev/null || fail "ssh/ssh-keygen not found; install openssh-client"
[ -r "$IMAGE_DIR/vmlinuz" ] && [ -r "$IMAGE_DIR/initrd.img" ] || fail "no guest image in $IMAGE_DIR (image.sh did not run?)"
[ -r "$PUBKEY" ] || fail "public key $PUBKEY not found"
[[ $NVME_ADDR =~ ^0000:00:([0-9a-f]{2})\.0$ ]] || fail "NVME_ADDR must be a slot on the root bus like 0000:00:04.0, got $NVME_ADDR"
slot=0x${BASH_REMATCH[1]}
case $ACCEL in
  tcg) accel=(-accel tcg -cpu max) ;;
  kvm) [ -w /dev/kvm ] || fail "accel=kvm needs a writable /dev/kvm; use accel=tcg"; accel=(-accel kvm -cpu host) ;;
  *) fail "ACCEL must be tcg or kvm, got $ACCEL" ;;
esac
if [ -s "$NODE_DIR/qemu.pid" ] && kill -0 "$(cat "$NODE_DIR/qemu.pid")" 2>/dev/null; then
  fail "a QEMU for $NAME is already running (pid $(cat "$NODE_DIR/qemu.pid")); remove it with: NAME=$NAME NODE_DIR=$NODE_DIR $(dirname "$0")/node-down.sh"
fi

# From here on a failure removes whatever was made, so a re-apply starts clean.
trap 'rc=$?; [ $rc -eq 0 ] || "$(dirname "$0")/node-down.sh"; exit $rc' EXIT
mkdir -p "$NODE_DIR"
chmod 700 "$NODE_DIR"
rm -f "$NODE_DIR/ssh_host_ed25519_key" "$NODE_DIR/ssh_host_ed25519_key.pub"
ssh-keygen -q -t ed25519 -N '' -C "$NAME" -f "$NODE_DIR/ssh_host_ed25519_key"
rm -f "$NODE_DIR/nvme.img"
truncate -s "${NVME_SIZE_MB}M" "$NODE_DIR/nvme.img"

cmdline="console=ttyS0 panic=-1 default_hugepagesz=2M hugepagesz=2M hugepages=$HUGEPAGES"
cmdline+=" lvs.name=$NAME lvs.nvme=$NVME_ADDR lvs.nvme_driver=$NVME_DRIVER"
iommu=()
if [ "$NVME_DRIVER" = vfio-pci ]; then
  # Debian's kernel has no vfio no-IOMMU mode: give the guest an (emulated) IOMMU instead.
  iommu=(-device intel-iommu)
  cmdline+=" intel_iommu=on"
fi
niceness=()
[ "$NICE" = 0 ] || niceness=(nice -n "$NICE" ionice -c3)

port=""
for _ in $(seq "$PORT_TRIES"); do
  # A port free now; QEMU may still lose it to someone else before it binds, and then we pick another.
  try=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  rm -f "$NODE_DIR/qemu.pid"
  if "${niceness[@]}" "$QEMU" -name "guest=$NAME" -machine q35 "${accel[@]}" -m "$MEMORY_MB" -smp 1 \
      -nodefaults -display none -monitor none -serial "file:$NODE_DIR/console.log" -no-reboot \
      "${iommu[@]}" \
      -kernel "$IMAGE_DIR/vmlinuz" -initrd "$IMAGE_DIR/initrd.img" -append "$cmdline" \
      -netdev "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:$try-:22" \
      -device virtio-net-pci,netdev=net0,addr=0x2 -device virtio-rng-pci,addr=0x3 \
      -drive "file=$NODE_DIR/nvme.img,if=none,id=nvm0,format=raw" -device "nvme,serial=lvs-$NAME,drive=nvm0,addr=$slot" \
      -fw_cfg "name=opt/lvol-storm/host_key,file=$NODE_DIR/ssh_host_ed25519_key" \
      -fw_cfg "name=opt/lvol-storm/authorized_keys,file=$PUBKEY" \
      -daemonize -pidfile "$NODE_DIR/qemu.pid" </dev/null >/dev/null 2>"$NODE_DIR/qemu.err"; then
    port=$try
    break
  fi
  grep -qi "forwarding" "$NODE_DIR/qemu.err" || fail "QEMU did not start: $(tail -n 3 "$NODE_DIR/qemu.err" | tr '\n' ' ')"
done
[ -n "$port" ] || fail "no free loopback port for SSH after $PORT_TRIES tries: $(tail -n 1 "$NODE_DIR/qemu.err")"
pid=$(cat "$NODE_DIR/qemu.pid")
cp "$NODE_DIR/qemu.pid" "$NODE_DIR/qemu.pid.last"  # QEMU removes its pid file when it exits
echo "$port" > "$NODE_DIR/port"
echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$NODE_DIR/ssh_host_ed25519_key.pub")" > "$NODE_DIR/known_hosts"

# Ready when the guest answers SSH with the host key we gave it and says so; a guest that reports a failure
# ends the wait at once with its reason, a QEMU that exits with the console's last lines.
deadline=$(( $(date +%s) + BOOT_TIMEOUT ))
last="no answer yet"
while :; do
  if ! kill -0 "$pid" 2>/dev/null; then
    why=$(grep -m 1 -E 'Kernel panic|Out of memory' "$NODE_DIR/console.log" 2>/dev/null || tail -n 5 "$NODE_DIR/console.log" 2>/dev/null | tr '\n' ' ')
    fail "QEMU (pid $pid) exited while booting; console: $why"
  fi
  if out=$(timeout 30 ssh -n -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$NODE_DIR/known_hosts" \
      -o ConnectTimeout=10 -o LogLevel=ERROR -i "${PUBKEY%.pub}" -p "$port" root@127.0.0.1 \
      cat /run/lvol-storm/status 2>&1); then
    case $out in
      ready*) echo "node-up $NAME: 127.0.0.1:$port $out"; exit 0 ;;
      failed*) fail "$out" ;;
    esac
  fi
  last=$(printf '%s' "$out" | tail -n 1)
  [ "$(date +%s)" -lt "$deadline" ] || fail "not ready after ${BOOT_TIMEOUT}s (last answer: $last); console: $NODE_DIR/console.log"
  sleep 1
done
