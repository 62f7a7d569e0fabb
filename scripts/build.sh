#!/usr/bin/env bash
# Builds Terra (C++ libraries, terrarun, the terra._C module and the C++ tests)
# in ./build through CMake, and installs the terra package and terrarun into
# the current Python environment. Incremental: ccache and the persistent build
# tree make a rebuild cost only what changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-python3}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
start=$(date +%s)
"$python" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps . \
  || { echo "terra: build failed (see the compiler output above)" >&2; exit 1; }
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
echo "terra: built and installed in $(( $(date +%s) - start )) s ($(command -v terrarun || echo 'terrarun not on PATH'))"
