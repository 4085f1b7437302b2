#!/usr/bin/env bash
# The GPU checks, as one script for a GPU machine with JAX (CUDA), flax, optax,
# PyTorch, scikit-learn and pytest installed (zarr and pydicom are not needed):
#
#   bash benchmarks/device_check.sh [OUT] [BENCHMARK FLAGS...]
#
# 1. the GPU tests (`pytest -m gpu tests/learning/test_gpu.py`: GPU equals CPU);
# 2. `benchmarks/benchmark.py --scale embed` (50,000 bags, ~150 tiles each, D=1152, bf16
#    embeddings: rows (1), (2), (5) and the full 36-run x 700-epoch sweeps), flags passed on.
# OUT (default: $OUT, else device-check/) gets gpu.txt, gpu_tests.log, benchmark.log,
# benchmark.json, benchmark.md and partial.json (each worker's result as it finished). Runs from
# a checkout without installing the package.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-device-check}}
shift || true
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"
"$python" -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tee -a "$out/gpu.txt"

"$python" -m pytest -m gpu -p no:cacheprovider -q -rs tests/learning/test_gpu.py 2>&1 \
    | tee "$out/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}

# The benchmark stops after BENCH_TIMEOUT_S (default 480 s, inside a 10-minute call): what it
# finished by then is in partial.json, one entry per worker.
bench_dir=$(mktemp -d)
timeout "${BENCH_TIMEOUT_S:-480}" "$python" benchmarks/benchmark.py --scale embed \
    --out "$bench_dir" "$@" 2>&1 | tee "$out/benchmark.log"
bench_rc=${PIPESTATUS[0]}
cp "$bench_dir"/benchmark.json "$bench_dir"/benchmark.md "$bench_dir"/partial.json "$out"/ \
    2>/dev/null
echo "gpu tests: exit $tests_rc; benchmark: exit $bench_rc"
exit $((tests_rc || bench_rc))
