// sessa/concepts.hpp: the three policy axes of the library, as C++20 concepts.
//
//   scalar             the working type of weights, activations and caches: float or double.
//   backend_tag        where and how kernels run: an empty tag type naming itself (backend/tags.hpp); its
//                      kernels are the specialization backend::kernels<Tag> (backend/kernels.hpp).
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

namespace sessa {

template <class T>
concept scalar = std::same_as<T, float> || std::same_as<T, double>;

template <class B>
concept backend_tag = std::is_empty_v<B> && std::default_initializable<B> && requires {
  { B::name } -> std::convertible_to<std::string_view>;
};

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
