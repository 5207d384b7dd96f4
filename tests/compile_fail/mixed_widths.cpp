// Must not compile: the layers of a decoder must share d_model.
#include <sessa/model/embedded.hpp>
using bad = sessa::embedded::decoder_spec<10, true, sessa::embedded::layer_spec<32, 4>, sessa::embedded::layer_spec<64, 4>>;
static_assert(bad::n_layers == 2);
int main() {}
