#!/usr/bin/env bash
# One command for a new machine: install the locked environment, provision the
# pose models and sample videos, then validate the machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

make install
make download-models
make fetch-samples
make validate
echo
echo "ready: 'make run-all' starts both services, 'make test' runs the tests"
