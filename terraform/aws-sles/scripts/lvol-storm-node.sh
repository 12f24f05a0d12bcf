#!/usr/bin/env bash
# lvol-storm node preparation on SLES/EC2, installed by cloud-init as /usr/local/bin/lvol-storm-node.
#   lvol-storm-node first-boot   once, from cloud-init: hugepages on the kernel command line, the boot unit on
#                                (cloud-init reboots into that command line afterwards)
#   lvol-storm-node boot         every boot, from lvol-storm-node.service: check the hugepages the kernel
#                                reserved at boot, bind the instance-store NVMe for SPDK, write the status
#   lvol-storm-node status       what wait-ready.sh reads: `ready: ...`, `failed: <reason and fix>`, `pending: ...`
# Settings: /etc/lvol-storm/node.conf (NR_HUGEPAGES, NVME_PCI_ADDRS, NVME_DRIVER, INSTANCE_TYPE).
# The LVS_* variables move every path it touches, so tests can run it against a made-up /sys.
set -euo pipefail
CONF=${LVS_CONF:-/etc/lvol-storm/node.conf}
SYS=${LVS_SYSFS:-/sys}
CMDLINE=${LVS_CMDLINE:-/proc/cmdline}
STATE=${LVS_STATE:-/run/lvol-storm}
GRUB_DEFAULT=${LVS_GRUB_DEFAULT:-/etc/default/grub}
TOOLS=${LVS_TOOLS-spdk_tgt socat gdb}
MODPROBE=${LVS_MODPROBE:-modprobe}
# The model an EC2 instance-store NVMe controller reports; EBS volumes say "Amazon Elastic Block Store".
INSTANCE_STORE_MODEL="Amazon EC2 NVMe Instance Storage"

fail() {
  mkdir -p -- "$STATE"
  echo "failed: $*" > "$STATE/status"
  echo "lvol-storm-node: $*" >&2
  exit 1
}

load_conf() {
  [ -r "$CONF" ] || fail "$CONF is missing: cloud-init did not write it (see /var/log/cloud-init-output.log)"
  # shellcheck source=/dev/null
  . "$CONF"
  : "${NR_HUGEPAGES:?}" "${NVME_DRIVER:?}" "${INSTANCE_TYPE:?}"
  NVME_PCI_ADDRS=${NVME_PCI_ADDRS-}
}

driver_of() {  # the driver a PCI device is bound to now, or nothing
  local link
  link=$(readlink -- "$SYS/bus/pci/devices/$1/driver" 2>/dev/null) || return 0
  echo "${link##*/}"
}

instance_store_nvme() {  # this instance's instance-store NVMe controllers by PCI address, one a line, sorted
  local dev addr model
  for dev in "$SYS"/bus/pci/devices/*; do
    [ -r "$dev/class" ] || continue
    [ "$(cat -- "$dev/class")" = 0x010802 ] || continue  # NVMe controllers only
    addr=${dev##*/}
    if [ -e "$STATE/bound-$addr" ]; then  # bound for SPDK earlier this boot: no nvme/ entry any more
      echo "$addr"
      continue
    fi
    for model in "$dev"/nvme/nvme*/model; do
      if [ -r "$model" ] && [ "$(sed 's/[[:space:]]*$//' -- "$model")" = "$INSTANCE_STORE_MODEL" ]; then
        echo "$addr"
      fi
    done
  done | sort -u
}

bind() {  # bind PCI device $1 to driver $2; true once the kernel reports it bound there
  local addr=$1 drv=$2 dev="$SYS/bus/pci/devices/$1"
  "$MODPROBE" "$drv" 2>/dev/null || return 1
  echo "$drv" > "$dev/driver_override"
  if [ -e "$dev/driver" ] && [ "$(driver_of "$addr")" != "$drv" ]; then
    echo "$addr" > "$dev/driver/unbind"
  fi
  echo "$addr" > "$SYS/bus/pci/drivers_probe" 2>/dev/null || true
  local i
  for i in 1 2 3 4 5 6 7 8 9 10; do  # the kernel binds as it probes; a slow probe gets two seconds
    [ "$(driver_of "$addr")" = "$drv" ] && return 0
    sleep 0.2
  done
  return 1
}

first_boot() {
  load_conf
  [ -w "$GRUB_DEFAULT" ] || fail "hugepages: $GRUB_DEFAULT is not writable: cannot put hugepages on the kernel command line"
  local want="default_hugepagesz=2M hugepagesz=2M hugepages=$NR_HUGEPAGES"
  # Replace whatever hugepage settings the line had with ours, so a changed hugepages_mb takes effect.
  sed -i -E -e '/^GRUB_CMDLINE_LINUX_DEFAULT=/{s/ ?(default_hugepagesz|hugepagesz|hugepages)=[^ "]*//g' \
    -e "s/^GRUB_CMDLINE_LINUX_DEFAULT=\"/&$want /}" -- "$GRUB_DEFAULT"
  grep -q "^GRUB_CMDLINE_LINUX_DEFAULT=\".*hugepages=$NR_HUGEPAGES" -- "$GRUB_DEFAULT" \
    || fail "hugepages: no GRUB_CMDLINE_LINUX_DEFAULT line in $GRUB_DEFAULT to add '$want' to"
  if [ -z "${LVS_GRUB_DEFAULT:-}" ]; then
    if command -v update-bootloader >/dev/null; then
      update-bootloader --refresh || fail "hugepages: update-bootloader --refresh failed"
    else
      grub2-mkconfig -o /boot/grub2/grub.cfg || fail "hugepages: grub2-mkconfig failed"
    fi
    systemctl enable lvol-storm-node.service
  fi
  mkdir -p -- "$(dirname -- "$CONF")"
  : > "$(dirname -- "$CONF")/first-boot-done"
}

boot() {
  load_conf
  mkdir -p -- "$STATE"
  rm -f -- "$STATE/status"
  local have
  have=$(cat -- "$SYS/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")
  if [ "$have" -lt "$NR_HUGEPAGES" ]; then
    if grep -qw -- "hugepages=$NR_HUGEPAGES" "$CMDLINE"; then
      fail "hugepages: the kernel reserved $have of $NR_HUGEPAGES 2 MiB pages at boot: this $INSTANCE_TYPE has too little memory for hugepages_mb; lower it or pick a bigger instance_type"
    fi
    fail "hugepages: booted without hugepages=$NR_HUGEPAGES on the kernel command line ($(cat -- "$CMDLINE")): first-boot did not update the boot loader; see /var/log/cloud-init-output.log"
  fi
  local found addr drv bound=""
  found=$(instance_store_nvme | tr '\n' ' ')
  found=${found% }
  for addr in $NVME_PCI_ADDRS; do
    case " $found " in
      *" $addr "*) ;;
      *) fail "nvme: $addr is not an instance-store NVMe controller on this $INSTANCE_TYPE (its instance store is at: ${found:-none}): set the module's nvme_pci_addrs to those" ;;
    esac
  done
  for addr in $NVME_PCI_ADDRS; do
    if [ -e "$STATE/bound-$addr" ]; then
      drv=$(cat -- "$STATE/bound-$addr")
    else
      drv=""
      for try in "$NVME_DRIVER" uio_pci_generic; do
        if bind "$addr" "$try"; then drv=$try; break; fi
      done
      [ -n "$drv" ] || fail "nvme: could not bind $addr to $NVME_DRIVER or uio_pci_generic (see dmesg): set nvme_driver"
      echo "$drv" > "$STATE/bound-$addr"
    fi
    bound="$bound $addr=$drv"
  done
  local tool
  for tool in $TOOLS; do
    command -v "$tool" >/dev/null || fail "$tool missing after cloud-init: check spdk_source/spdk_packages (see /var/log/cloud-init-output.log)"
  done
  echo "ready: hugepages=$have nvme=${bound# }" > "$STATE/status"
}

status() {
  if [ -r "$STATE/status" ]; then
    cat -- "$STATE/status"
    return
  fi
  local ci
  ci=$(cloud-init status 2>/dev/null | tr '\n' ' ' || true)
  case $ci in
    *error*) echo "failed: cloud-init: $ci(see /var/log/cloud-init-output.log)" ;;
    *) echo "pending: ${ci:-cloud-init not started}" ;;
  esac
}

case ${1:-} in
  first-boot) first_boot ;;
  boot) boot ;;
  status) status ;;
  *) echo "usage: lvol-storm-node first-boot|boot|status" >&2; exit 2 ;;
esac
