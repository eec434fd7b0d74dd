#!/bin/sh
# kill -9 at 20 random points of an install's site evaluation (issue 20): the old slot stays
# active every time and the next install works. `make test` runs the same test with 4 kills.
# Usage: sh scripts/eval-kill-test.sh [KILLS]   (after `make all`; about 1 s per kill)
set -e
cd "$(dirname "$0")/.."
FLASHBOX_EVAL_KILLS="${1:-20}" FLASHBOX=build/flashbox build/flashbox-test \
    update_eval_gate_kill9_during_evaluation_keeps_the_old_slot
