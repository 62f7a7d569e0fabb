#!/usr/bin/env bash
# The whole test suite on a fresh machine: install what is missing, build,
# then the C++ tests (CTest) and the Python end-to-end tests (pytest).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$(date +%s)
scripts/install_deps.sh
scripts/build.sh
export PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
status=0
ctest --test-dir build --output-on-failure -j "$(nproc)" || status=1
python3 -m pytest -q -p no:cacheprovider tests/python "$@" || status=1
echo "terra: test suite finished in $(( $(date +%s) - start )) s ($([ $status = 0 ] && echo passed || echo FAILED))"
exit $status
