// Must not compile: a decoder is made of layer_spec types.
#include <sessa/model/embedded.hpp>
using bad = sessa::embedded::decoder_spec<10, true, int>;
static_assert(bad::n_layers == 1);
int main() {}
