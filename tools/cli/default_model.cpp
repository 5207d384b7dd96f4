// The shipped model's weight file, linked into the CLI byte for byte, so that `sessa generate`, `eval` and `info`
// run it when no --model is given: the binary works anywhere, with no data files beside it. The assembler's
// .incbin reads the file at build time (CMake names it in SESSA_CLI_DEFAULT_MODEL and rebuilds this file when
// it changes); the CLI parses the bytes like any weight file, so a damaged build is reported, never trusted.
#include <cstddef>
#include <span>

#ifndef SESSA_CLI_DEFAULT_MODEL
#error "SESSA_CLI_DEFAULT_MODEL must name the weight file to link in (tools/cli/CMakeLists.txt sets it)"
#endif

__asm__(".pushsection .rodata\n"
        ".balign 64\n"
        "sessa_cli_default_model_begin:\n"
        ".incbin \"" SESSA_CLI_DEFAULT_MODEL "\"\n"
        "sessa_cli_default_model_end:\n"
        ".byte 0\n"
        ".popsection\n");

extern "C" const unsigned char sessa_cli_default_model_begin[] __asm__("sessa_cli_default_model_begin");
extern "C" const unsigned char sessa_cli_default_model_end[] __asm__("sessa_cli_default_model_end");

namespace sessa_cli {
std::span<const std::byte> default_model() {
  return {reinterpret_cast<const std::byte*>(sessa_cli_default_model_begin),
          static_cast<std::size_t>(sessa_cli_default_model_end - sessa_cli_default_model_begin)};
}
}  // namespace sessa_cli
