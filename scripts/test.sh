#!/usr/bin/env bash
# The test command (README, .ci/run): set up .venv if needed, then run the pytest suite.
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
"$PY" -m pytest -q tests "$@"
