#!/usr/bin/env bash
# Build the guest image (or take it from the cache) and link it into IMAGE_DIR as vmlinuz and initrd.img.
# Inputs (environment): IMAGE_DIR [PYTHON] [CACHE_DIR] [KERNEL_VERSION] [WITH_PYTHON=1]
set -euo pipefail
: "${IMAGE_DIR:?}"
PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null || { echo "image.sh: $PYTHON not found; install python3" >&2; exit 1; }
args=(build --link-into "$IMAGE_DIR")
[ -z "${CACHE_DIR:-}" ] || args+=(--cache-dir "$CACHE_DIR")
[ -z "${KERNEL_VERSION:-}" ] || args+=(--kernel-version "$KERNEL_VERSION")
[ -z "${WITH_PYTHON:-}" ] || args+=(--python)
exec "$PYTHON" "$(dirname "$0")/guest_image.py" "${args[@]}"
