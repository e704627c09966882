#!/usr/bin/env bash
# Make sure Fashion-MNIST (the quick profile's dataset) can be found.
#
# Looks in the folders faeval.data searches ($FAEVAL_DATA/fashion-mnist, $FAEVAL_DATA,
# ${XDG_CACHE_HOME:-~/.cache}/faeval/fashion-mnist, /usr/share/datasets/fashion-mnist)
# for the four IDX files, raw or gzipped. When none holds them, installs the Debian
# package dataset-fashion-mnist with apt-get (through `sudo -n` when not root); when
# that is impossible, says what to do and exits 1.
set -euo pipefail

FILES=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)
SYSTEM_DIR=/usr/share/datasets/fashion-mnist
DIRS=()
if [ -n "${FAEVAL_DATA:-}" ]; then DIRS+=("$FAEVAL_DATA/fashion-mnist" "$FAEVAL_DATA"); fi
DIRS+=("${XDG_CACHE_HOME:-$HOME/.cache}/faeval/fashion-mnist" "$SYSTEM_DIR")

has_all() {
    local f
    for f in "${FILES[@]}"; do
        [ -f "$1/$f" ] || [ -f "$1/$f.gz" ] || return 1
    done
}

for d in "${DIRS[@]}"; do
    if has_all "$d"; then
        echo "data: Fashion-MNIST found in $d"
        exit 0
    fi
done

manual() {
    cat >&2 <<EOF
data: Fashion-MNIST not found (searched: ${DIRS[*]}).
  Either install the Debian/Ubuntu package, as root:
      apt-get update && apt-get install -y dataset-fashion-mnist
  or put the four IDX files (${FILES[*]/%/.gz})
  in a folder of your choice and point FAEVAL_DATA at it:
      mkdir -p "\$HOME/faeval-data/fashion-mnist"   # copy the files there, then
      export FAEVAL_DATA="\$HOME/faeval-data"
EOF
    exit 1
}

if ! command -v apt-get >/dev/null 2>&1; then
    echo "data: apt-get is not available on this machine." >&2
    manual
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "data: installing dataset-fashion-mnist needs root, and passwordless sudo is not available." >&2
    manual
fi

export DEBIAN_FRONTEND=noninteractive
echo "data: installing the Debian package dataset-fashion-mnist"
if ! "${SUDO[@]}" apt-get install -y --no-install-recommends dataset-fashion-mnist; then
    echo "data: refreshing the package lists and trying again"
    "${SUDO[@]}" apt-get update
    "${SUDO[@]}" apt-get install -y --no-install-recommends dataset-fashion-mnist || manual
fi
has_all "$SYSTEM_DIR" || { echo "data: the package installed, but $SYSTEM_DIR lacks the IDX files" >&2; manual; }
echo "data: Fashion-MNIST installed in $SYSTEM_DIR"
