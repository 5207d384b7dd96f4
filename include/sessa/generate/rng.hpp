// sessa/generate/rng.hpp: the random number generator of sampling.
//
// xoshiro256** (Blackman and Vigna) seeded through splitmix64: the same seed gives the same stream on every
// platform and compiler (no std:: distribution is involved), and the whole state is four 64-bit words that a
// saved generation state stores and restores exactly.
#pragma once

#include <array>
#include <cstdint>

namespace sessa {

class sampling_rng {
 public:
  using state_type = std::array<std::uint64_t, 4>;

  explicit sampling_rng(std::uint64_t seed = 0) noexcept { reseed(seed); }

  void reseed(std::uint64_t seed) noexcept {
    std::uint64_t x = seed;
    for (auto& w : s_) {  // splitmix64: never all zero
      std::uint64_t z = (x += 0x9E3779B97F4A7C15ull);
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      w = z ^ (z >> 31);
    }
  }

  std::uint64_t next() noexcept {
    const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }

  /// Uniform in [0, 1), 53 random bits.
  double uniform() noexcept { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }

  /// The whole state, to save; set_state restores it (an all-zero state, which xoshiro never reaches from a
  /// seed, is refused by the loaders that call it).
  const state_type& state() const noexcept { return s_; }
  void set_state(const state_type& s) noexcept { s_ = s; }

  friend bool operator==(const sampling_rng&, const sampling_rng&) = default;

 private:
  static constexpr std::uint64_t rotl(std::uint64_t x, int k) noexcept { return (x << k) | (x >> (64 - k)); }
  state_type s_{};
};

}  // namespace sessa
