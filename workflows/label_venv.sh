#!/usr/bin/env bash
# The MONAI Label venv of `medseg serve`, from a source checkout: the recipe ships inside the package
# (medseg/serve/label/recipe/label_venv.sh; same options: --check, --path) so that an installed
# medseg builds it too. This wrapper keeps the old entry point for CI and the Makefile.
set -euo pipefail
exec bash "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/medseg/serve/label/recipe/label_venv.sh" "$@"
