// The feedback branch's long memory, measured. With uniform routing (alpha_{t,s} = 1/t) and a constant gain
// gamma, an impulse at token j reaches s_t with weight ~ gamma j^-gamma t^(gamma-1): a power law in the lag
// with exponent beta = 1 - gamma (SPEC.md). This runs the library's feedback solve on an impulse and prints
// the response against the lag next to an exponential (gated-recurrence) decay with the same first step.
//
//   example_feedback_memory
#include <sessa/sessa.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  using T = double;
  const sessa::index_t Tn = 20000, D = 4, j = 10;
  const sessa::layer_config cfg{D, 1, 1, false, 0.999, 1e-5};
  const sessa::index_t lags[] = {1, 10, 100, 1000, 10000};
  std::printf("impulse at token %lld, response s_{j+lag} of the feedback solve (q_b = 0: uniform routing)\n",
              static_cast<long long>(j));
  std::printf("%-7s", "gamma");
  for (auto l : lags) std::printf(" %11s", ("lag " + std::to_string(l)).c_str());
  std::printf("   fitted beta  (theory 1 - gamma)\n");
  for (const T gamma : {0.5, 0.9, 0.99}) {
    sessa::layer_cache<T, sessa::backend::cpu> cache(cfg, 1, Tn);  // k_b = 0 and q_b = 0: every past token weighs 1/t
    sessa::backend::context<sessa::backend::cpu> ctx;
    sessa::tensor<T> qb({Tn, D}, T(0)), f({Tn, D}, T(0)), s({Tn, D});
    for (sessa::index_t t = 0; t < Tn; ++t) cache.kb(0)(t, 0) = T(0);
    f[j * D] = 1;  // the impulse, channel 0
    std::vector<T> g(static_cast<std::size_t>(Tn), gamma);
    sessa::backend::kernels<sessa::backend::cpu>::feedback(ctx, cfg, sessa::cmatrix<T>(qb.as_matrix()), g.data(),
                                                            sessa::cmatrix<T>(f.as_matrix()), cache.view(), 0, Tn,
                                                            s.as_matrix());
    std::printf("%-7.2f", gamma);
    for (auto l : lags) std::printf(" %11.3e", s[(j + l) * D]);
    // Slope of log s against log lag over the last two decades.
    const double beta = -(std::log(s[(j + 10000) * D]) - std::log(s[(j + 100) * D])) / std::log(100.0);
    std::printf("   %.3f        (%.3f)\n", beta, 1 - gamma);
  }
  std::printf("%-7s", "exp");
  for (auto l : lags) std::printf(" %11.3e", 0.5 * std::pow(0.9, static_cast<double>(l)));
  std::printf("   (a gated recurrence with gain 0.9 per step forgets exponentially)\n");
  return 0;
}
