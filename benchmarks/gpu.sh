#!/usr/bin/env bash
# Every GPU measurement of the project in one prepared run (about 6-8 minutes on an H100/H200),
# for a session that is lent a device: each script rewrites its own section of RESULTS.md,
# titled with the device it ran on.
#
#   bash benchmarks/gpu.sh           # on the GPU machine (jax with CUDA installed)
#   bash benchmarks/gpu.sh --quick   # a smoke run of the same commands, anywhere (writes nothing)
#
# 1. GPT-2 small, bfloat16, the Trainer's precision policy, blocks under lax.scan, cuDNN flash
#    attention (jax.nn.dot_product_attention(implementation="cudnn"), model.attention=cudnn):
#    tokens/s and MFU against raw JAX doing the same (goal: >= 45% MFU, >= raw JAX's tokens/s);
#    then unscanned, then with XLA's attention (JAX's default, implementation=None).
# 2. The MLP train step: the Trainer's default step and the lean one against raw JAX (goal:
#    <= 1.10x; Equinox and Flax NNX rows when installed).
# 3. Host overhead per call, including a train step that returns the state.
# 4. `paxtrain summary`'s memory estimate against the measured peak of GPT-2 small's step
#    (goal: within 10%); perf/mfu of the Trainer's logs uses the same FLOPs and peak as 1.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=()
[ "${1:-}" = "--quick" ] && quick=(--quick)
python -c 'import jax; print("devices:", jax.devices())'
attention=cudnn
[ "${1:-}" = "--quick" ] && attention=xla  # cuDNN needs an NVIDIA GPU
python benchmarks/transformer_mfu.py --precision bfloat16 --scan-layers --attention "$attention" "${quick[@]}"
python benchmarks/transformer_mfu.py --precision bfloat16 --attention "$attention" "${quick[@]}"
python benchmarks/transformer_mfu.py --precision bfloat16 --scan-layers --attention xla "${quick[@]}"
python benchmarks/train_step.py "${quick[@]}"
python benchmarks/overhead.py "${quick[@]}"
# Freed CPU temporaries go back to the system, so that --quick's RSS measurement sees them.
MALLOC_MMAP_THRESHOLD_=65536 python benchmarks/memory_estimate.py --precision bfloat16 \
  --scan-layers "${quick[@]}"
