#!/usr/bin/env bash
# Every GPU figure of docs/benchmarks.md in one run, from the repository root:
#   bench/gpu_checks.sh OUT_DIR NVIDIA_TACOTRON2_CHECKOUT
# The CUDA-graph parity tests first (tests/test_decoder_fast_path.py on the GPU), then
# the training step at batch 64 (NVIDIA's model and ours, eager and from CUDA graphs),
# inference real-time factors, and batch scaling. Each part writes its own files into
# OUT_DIR as it finishes, so a part that fails or runs out of time loses nothing else.
set -uo pipefail
out=$(realpath -m "${1:?usage: bench/gpu_checks.sh OUT_DIR NVIDIA_TACOTRON2_CHECKOUT}")
nvidia=$(realpath "${2:?usage: bench/gpu_checks.sh OUT_DIR NVIDIA_TACOTRON2_CHECKOUT}")
py=${PYTHON:-python3}
mkdir -p "$out"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $py -c "import torch, platform; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', platform.python_version())"
} > "$out/machine.txt" 2>&1
timeout 240 $py -m pytest -q -p no:cacheprovider tests/test_decoder_fast_path.py > "$out/parity.txt" 2>&1
cd bench
timeout 330 $py gpu_step.py --nvidia-src "$nvidia" --batch-sizes 64 --modes nvidia,fp32,fp32-graphs,bf16,bf16-graphs \
  --steps 5 --warmup 1 --child-timeout 150 --json "$out/gpu_step_64.json" > "$out/gpu_step_64.txt" 2>&1
timeout 120 $py gpu_synth.py --batch-sizes 1,8,32 --json "$out/gpu_synth.json" > "$out/gpu_synth.txt" 2>&1
timeout 300 $py gpu_step.py --nvidia-src "$nvidia" --batch-sizes 128,256 --modes nvidia,fp32-graphs,bf16-graphs \
  --steps 3 --warmup 1 --child-timeout 140 --json "$out/gpu_step_scaling.json" > "$out/gpu_step_scaling.txt" 2>&1
echo done > "$out/finished"
