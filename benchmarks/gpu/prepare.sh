#!/usr/bin/env bash
# Run here (a machine that reaches PyPI), from the repository root: downloads into .whl/ (git-ignored) the wheels
# the GPU machine lacks for `tokenprune bench --quick`. That machine has Python 3.12, torch with CUDA and most
# of tokenprune's dependencies, but an older transformers (5.17) and no pydantic, and it reaches no network.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
rm -rf .whl && mkdir .whl
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    transformers==5.23.0 pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 \
    typing-inspection==0.4.2 typing-extensions==4.15.0
ls .whl
