#!/usr/bin/env bash
# The GPU check, one go, sized for a short lease (under 8 minutes on one H100 / H200):
# the Triton kernels' tests on CUDA tensors, then `pydebias bench --gpu` writing the
# fractions of copy bandwidth (statistics) and of cuBLAS (masked linear) to a JSON.
# Usage: bash bench/gpu.sh [OUT.json]   (run from the repository root, package installed)
set -euo pipefail
out="${1:-gpu_bench.json}"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu.sh: no CUDA device visible')"
export TRITON_INTERPRET=0  # real kernels, not the CPU interpreter the test suite defaults to
timeout 300 python -m pytest -q -x tests/test_gpu.py
timeout 240 pydebias bench --gpu --json "$out"
echo "wrote $out"
