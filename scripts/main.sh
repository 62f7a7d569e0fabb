#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, build, and train
# the default example data-parallel on 2 CPU ranks under terrarun.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install_deps.sh
scripts/build.sh
export PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
exec terrarun -np 2 examples/ddp_train.py "$@"
