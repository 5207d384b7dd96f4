#!/usr/bin/env bash
# The main job: build the sessa CLI (Release) and run the tiny decoder shipped in examples/models.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/deps.sh
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DSESSA_BUILD_TESTS=OFF >/dev/null
cmake --build build/release --target sessa_cli -j"$(nproc)"
cli=build/release/tools/cli/sessa
model=examples/models/tiny_decoder.safetensors
echo
echo "== sessa info --model $model"
"$cli" info --model "$model"
echo
echo "== sessa generate --model $model --prompt 'THE SEA ' --tokens 160"
"$cli" generate --model "$model" --prompt "THE SEA " --tokens 160
