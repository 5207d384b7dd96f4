// Must not compile: head width 3 is odd while RoPE is on.
#include <sessa/model/embedded.hpp>
using bad = sessa::embedded::layer_spec<12, 4, 4, true>;
static_assert(bad::d_model == 12);
int main() {}
