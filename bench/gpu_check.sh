#!/usr/bin/env bash
# The first run on a GPU machine, one command: installs what it needs, runs the conformance corpus and the
# benches on CUDA, and writes one Markdown report (bench/reports/gpu-<device>.md). Every option is
# `python -m bench.gpu`'s (see --help); --dry-run runs the same steps on the CPU at small sizes, no installs.
#
#   bash bench/gpu_check.sh                 # on a GPU machine: a venv of its own (.venv-gpu) unless one is active
#   bash bench/gpu_check.sh --dry-run       # anywhere, in the active Python (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
case " $* " in
  *" --dry-run "*|*" --no-install "*|*" --help "*|*" -h "*) ;;
  *)
    if [ -z "${VIRTUAL_ENV:-}" ]; then  # installs go into a venv, never into the system's Python
      [ -d .venv-gpu ] || "$PYTHON" -m venv .venv-gpu
      # shellcheck disable=SC1091
      source .venv-gpu/bin/activate
      PYTHON=python
    fi
    ;;
esac
exec "$PYTHON" -m bench.gpu "$@"
