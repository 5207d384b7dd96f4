// sessa/concepts.hpp: the three policy axes of the library, as C++20 concepts.
//
//   scalar             the compute type of activations and accumulations: float or double.
//   numeric            a model's first template parameter: a scalar (weights and caches in that type too), or
//                      precision<Compute, Storage> with weights and caches stored narrower (core/numeric.hpp).
//   backend_tag        where and how kernels run: an empty tag type naming itself and its memory space
//                      (backend/tags.hpp); its kernels are the specialization backend::kernels<Tag> and its
//                      execution context backend::context<Tag> (backend/kernels.hpp).
//   attention_variant  how the forward branch chooses its keys: full causal softmax (the paper's) or a
//                      sliding window (attention/variants.hpp). The feedback branch is always full.
//
// The concepts check these at the API boundary, so a wrong policy fails at compile time with a message
// naming the requirement rather than deep inside a kernel.
#pragma once

#include <concepts>
#include <string_view>
#include <type_traits>

#include "config.hpp"
#include "core/memory.hpp"
#include "core/numeric.hpp"

namespace sessa {

template <class T>
concept scalar = std::same_as<T, float> || std::same_as<T, double>;

/// A model's numeric policy: a scalar (weights and cache in that type), or precision<Compute, Storage>
/// (core/numeric.hpp).
template <class P>
concept numeric = scalar<compute_t<P>> && weight_storage_type<weight_t<P>> && storage_type<cache_t<P>>;

template <class B>
concept backend_tag = std::is_empty_v<B> && std::default_initializable<B> && requires {
  { B::name } -> std::convertible_to<std::string_view>;
  typename B::memory_space;
} && memory_space<typename B::memory_space>;

/// The memory space of a backend's buffers, caches, weights and tensors.
template <backend_tag B>
using space_of = typename B::memory_space;

template <class A>
concept attention_variant = std::copy_constructible<A> && requires(const A& a, index_t t) {
  { A::name } -> std::convertible_to<std::string_view>;
  { a.first_key(t) } -> std::same_as<index_t>;  // first key position a query at position t reads
  a.check();                                       // throws config_error when the variant's parameters are invalid
};

/// For static_assert(dependent_false<X>, "...") in unmatched primary templates.
template <class...>
inline constexpr bool dependent_false = false;

}  // namespace sessa
