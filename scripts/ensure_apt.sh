#!/usr/bin/env bash
# Install a Debian package with apt-get unless the file it provides exists.
#   scripts/ensure_apt.sh PACKAGE PATH        e.g. scripts/ensure_apt.sh chromium /usr/bin/chromium
# Uses `sudo -n` when not root; retries once after `apt-get update`; when apt cannot be used,
# says what to do and exits 1.
set -euo pipefail
pkg=$1 want=$2
[ -e "$want" ] && exit 0
fail() { echo "$pkg: $want is missing and $1; install it yourself (e.g. apt-get install -y $pkg)" >&2; exit 1; }
command -v apt-get >/dev/null 2>&1 || fail "apt-get is not available"
if [ "$(id -u)" -eq 0 ]; then SUDO=(); elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n); else fail "installing needs root (no password-less sudo)"; fi
echo "== $pkg: apt-get install -y $pkg"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get install -y -q "$pkg" >/dev/null || { "${SUDO[@]}" apt-get update -q >/dev/null; "${SUDO[@]}" apt-get install -y -q "$pkg" >/dev/null; }
[ -e "$want" ] || fail "apt-get install $pkg did not provide it"
echo "$pkg: installed ($want)"
