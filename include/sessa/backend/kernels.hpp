// sessa/backend/kernels.hpp: the primary template every backend specializes.
//
// backend::kernels<Tag> is a class of static member function templates, one per kernel the model
// needs (linear, layer_norm, gelu, rope, attention, feedback, ...). A backend specializes it, deriving
// from the specialization of the backend it extends, and overrides only what it accelerates.
// Using a tag with no specialization fails the build with a message naming the tag.
#pragma once

#include "../concepts.hpp"

namespace sessa::backend {

template <class Tag>
struct kernels {
  static_assert(dependent_false<Tag>,
                "sessa: no kernels for this backend tag; include the header that specializes "
                "sessa::backend::kernels<Tag> (backend/cpu/reference.hpp, backend/cpu/simd.hpp, sessa/cuda.cuh)");
};

}  // namespace sessa::backend
