// sessa/backend/kernels.hpp: the primary templates every backend specializes.
//
// backend::kernels<Tag> is a class of static member function templates, one per kernel the model needs
// (linear, layer_norm, gelu, rope, attention, feedback, the cache append, ...; the list and the contracts are
// in backend/kernel_set.hpp). backend::context<Tag> is the backend's execution context: what every kernel
// receives first (CPU: the thread count; CUDA: the stream and library handles) and the backend's scratch
// arena (core/tensor.hpp). A workspace (model/cache.hpp) owns one context, so each sequence or call site has
// its own scratch.
// Using a tag with no specialization fails the build with a message that says so (verify_kernel_set in
// backend/kernel_set.hpp: the primary templates below are empty markers, so the check can tell them apart).
#pragma once

#include "../concepts.hpp"

namespace sessa::backend {

/// Unspecialized: no kernels. A backend specializes it.
template <class Tag>
struct kernels {
  static constexpr bool unspecialized = true;
};

/// Unspecialized: no context. A backend specializes it next to its kernels.
template <class Tag>
struct context {
  static constexpr bool unspecialized = true;
};

}  // namespace sessa::backend
