// Must not compile: d_model 30 is not divisible by 4 heads.
#include <sessa/model/embedded.hpp>
using bad = sessa::embedded::layer_spec<30, 4>;
static_assert(bad::d_model == 30);
int main() {}
