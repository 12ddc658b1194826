#!/usr/bin/env bash
# Run on the GPU machine, from the repository root, with .whl/ (from prepare.sh) beside it: installs those
# wheels and tokenprune into /tmp/site without any network, then runs `tokenprune bench --quick`, which
# measures within 8 minutes and writes bench-quick-<device>.json / .md into the folder given (default
# benchmarks/results).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out="$(realpath -m "${1:-benchmarks/results}")"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site .
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
cd /tmp  # not the repository root: its tokenprune/ source folder would shadow the installed package
python3 -c "import torch, transformers, tokenprune; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
python3 -m tokenprune.cli bench --quick --out "$out"
