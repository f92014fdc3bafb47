#!/usr/bin/env bash
# The GPU campaign: one prepared, time-boxed command for a short GPU lease, run from the project root on a
# machine without a package registry: build, smoke tests, the cost model's sweep, GPT profiles, fit and
# validation, the kernels' A/B variants, the rest of the GPU tests, into --out DIR (at most 8 files).
#
#   bash bench/gpu_campaign.sh [--out DIR] [--budget-s 300] [--only STEPS] [--resume] [--dry-run [--list]]
#                              [--shapes SET]
#
# `--dry-run --list` prints the steps and their budgets; `--dry-run` runs them on a CPU at the quick shapes.
# Exit 2 (one line): no GPU without --dry-run, a non-empty DIR without --resume, a bad option.
# The steps and their logic: bench/campaign.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || PY=python
exec "$PY" bench/campaign.py "$@"
