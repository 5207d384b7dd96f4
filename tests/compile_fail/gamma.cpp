// Must not compile: gamma_max must lie in (0, 1).
#include <sessa/model/embedded.hpp>
using bad = sessa::embedded::layer_spec<16, 2, 2, true, 1.0>;
static_assert(bad::d_model == 16);
int main() {}
