#!/usr/bin/env bash
# The main job: build the sessa CLI (Release) and run the tiny decoder shipped in examples/models.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/deps.sh
# Its own build folder: the test script's (build/release) is configured with everything, this one with the CLI
# only, and neither run may inherit the other's cached options.
cmake -S . -B build/demo -DCMAKE_BUILD_TYPE=Release -DSESSA_BUILD_TESTS=OFF -DSESSA_BUILD_BENCH=OFF \
      -DSESSA_BUILD_EXAMPLES=OFF -DSESSA_CUDA=OFF >/dev/null
cmake --build build/demo --target sessa_cli -j"$(nproc)"
cli=build/demo/tools/cli/sessa
model=examples/models/tiny_decoder.safetensors
echo
echo "== sessa info --model $model"
"$cli" info --model "$model"
echo
echo "== sessa generate --model $model --prompt 'And God said' --tokens 200 --temperature 0.7 --top-k 20 --seed 1"
"$cli" generate --model "$model" --prompt "And God said" --tokens 200 --temperature 0.7 --top-k 20 --seed 1
