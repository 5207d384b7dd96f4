// sessa/sessa.hpp: the CPU umbrella header. Include this to get the whole library on the CPU.
//
// sessa is a header-only C++20 library that runs Sessa decoders (Selective State Space Attention:
// attention placed inside a recurrent feedback path). The pieces:
//   core/        tensors and views, hyperparameters and their checks
//   backend/     backend tags and their kernels (reference: the oracle; cpu: xsimd + OpenMP)
//   attention/   attention variants of the forward branch, RoPE
//   model/       weights, caches, the mixer, the layer, the decoder
//   io/          JSON, safetensors files, model loading and saving (load_layer, load_decoder, save_model)
//   generate/    text generation: tokenizers, samplers, stop conditions, sessions (prefill, then decode),
//                sessions generating together (ragged batches)
//   analysis/    memory of the feedback path: exact influence through the feedback solve and its transpose,
//                end-to-end influence by finite differences, lag profiles and power-law fits, the paper's
//                constructions, log-log plots as SVG
// The device backends have their own umbrellas, sessa/thrust_omp.hpp (Thrust on OpenMP) and sessa/cuda.cuh
// (CUDA); this header never includes Thrust or CUDA.
//
// This header is also the only input of the generated single header single_include/sessa/sessa.hpp
// (tools/amalgamate.py): whatever it includes is what a single-header user gets.
#pragma once

#include "version.hpp"
#include "config.hpp"
#include "error.hpp"
#include "concepts.hpp"
#include "core/memory.hpp"
#include "core/budget.hpp"
#include "core/numeric.hpp"
#include "core/tensor.hpp"
#include "core/hparams.hpp"
#include "backend/tags.hpp"
#include "backend/kernels.hpp"
#include "backend/kernel_set.hpp"
#include "backend/cpu/reference.hpp"
#include "backend/cpu/parallel.hpp"
#include "backend/cpu/simd.hpp"
#include "attention/variants.hpp"
#include "attention/rope.hpp"
#include "model/weights.hpp"
#include "model/cache.hpp"
#include "model/mixer.hpp"
#include "model/layer.hpp"
#include "model/decoder.hpp"
#include "model/init.hpp"
#include "io/json.hpp"
#include "io/safetensors.hpp"
#include "io/model_file.hpp"
#include "model/embedded.hpp"
#include "generate/rng.hpp"
#include "generate/sampler.hpp"
#include "generate/tokenizer.hpp"
#include "generate/stop.hpp"
#include "generate/session.hpp"
#include "generate/batch.hpp"
#include "generate/evaluate.hpp"
#include "analysis/influence.hpp"
#include "analysis/profile.hpp"
#include "analysis/constructions.hpp"
#include "analysis/svg.hpp"
