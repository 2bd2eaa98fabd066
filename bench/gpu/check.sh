#!/usr/bin/env bash
# The GPU check to run on a lent GPU machine (docs/GPU.md, "On a lent GPU"): every fixture on
# `--backend cuda` against its PyTorch goldens, the original and an optimised folder, with the
# device, NVRTC and timings printed. The machine has no Rust toolchain: build the release binary
# here first and carry it (`target/release/attnopt`). Usage, from the repository root:
#   bash bench/gpu/check.sh [path/to/attnopt]
# Writes its log to $OUT/gpu-check.log when $OUT is set (the device tool's output folder).
set -uo pipefail
bin=${1:-target/release/attnopt}
log=${OUT:-/tmp}/gpu-check.log
exec > >(tee "$log") 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
lscpu | grep -E 'Model name|CPU family' || true
# NVRTC from the PyTorch wheels' nvidia packages (and its builtins library beside it): the
# cuda_nvrtc package torch itself imports, else any libnvrtc under site-packages/nvidia.
dir=$(python3 -c 'import nvidia.cuda_nvrtc as m, os; print(os.path.join(list(m.__path__)[0], "lib"))' 2>/dev/null)
nvrtc=$(ls "$dir"/libnvrtc.so* 2>/dev/null | grep -v builtins | head -1)
if [ -z "$nvrtc" ]; then
  site=$(python3 -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null)
  nvrtc=$(find "$site"/nvidia -name 'libnvrtc.so*' ! -name '*builtins*' 2>/dev/null | head -1)
fi
echo "NVRTC: ${nvrtc:-not found}"
if [ -n "$nvrtc" ]; then
  export ATTNOPT_NVRTC=$nvrtc
  export LD_LIBRARY_PATH=$(dirname "$nvrtc"):${LD_LIBRARY_PATH:-}
fi
export ATTNOPT_CUDA_CACHE=${TMPDIR:-/tmp}/attnopt-nvrtc
status=0
for m in bert gpt2 gpt2-linear gpt2-sparse-ff gpt2-sparse-qkv llama vit vit-hydra; do
  echo "== $m"
  for pass in cold warm; do
    start=$(date +%s%N)
    if ! "$bin" run "fixtures/$m" -i "fixtures/$m/golden.safetensors" \
        --compare "fixtures/$m/golden.safetensors" --all-layers --backend cuda; then
      status=1
    fi
    echo "$m $pass: $(( ($(date +%s%N) - start) / 1000000 )) ms (process, NVRTC cache $pass)"
  done
done
# An exactly optimised folder, and one with every layer converted to Hydra.
tmp=$(mktemp -d)
"$bin" optimize fixtures/gpt2 -o "$tmp/gpt2-opt" >/dev/null && \
  "$bin" run "$tmp/gpt2-opt" -i fixtures/gpt2/golden.safetensors \
    --compare fixtures/gpt2/golden.safetensors --backend cuda || status=1
"$bin" generate fixtures/gpt2 --prompt-ids 1,2,3 --max-new-tokens 8 --greedy --ignore-eos --backend cuda || status=1
"$bin" generate fixtures/gpt2 --prompt-ids 1,2,3 --max-new-tokens 8 --greedy --ignore-eos --backend cpu || status=1
echo "status $status"
exit $status
