#!/usr/bin/env bash
# Installs what Terra needs and is missing: Debian packages (compilers, CMake,
# Open MPI, Boost.Asio, GoogleTest, ccache) and the pinned Python packages
# (scripts/requirements.txt). Safe to run again: it installs only what is
# missing. Runs as root or through sudo.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

debs=(build-essential cmake ninja-build ccache libboost-dev libopenmpi-dev openmpi-bin
      libgtest-dev googletest procps)
missing=()
for pkg in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "terra: installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if ! "$python" -m pip install --disable-pip-version-check -r "$here/requirements.txt" --dry-run 2>/dev/null \
     | grep -q "Would install"; then
  echo "terra: Python packages already satisfy scripts/requirements.txt"
else
  echo "terra: installing Python packages from scripts/requirements.txt (torch is several GB the first time)"
  "$python" -m pip install -q --disable-pip-version-check -r "$here/requirements.txt"
fi
