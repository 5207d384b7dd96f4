# sessa_embed_model(<target> NAME <name> MODEL <file.safetensors> [DTYPE f32|bf16|f16|q8_0])
#
# Turns a decoder weight file into <name>_model.hpp at build time (`sessa embed`) and puts it on the
# include path of <target>: the file's shapes become template arguments and its weights constexpr arrays,
# for sessa::embedded::static_decoder (no file I/O and no heap at run time). DTYPE bf16 or f16 stores the
# weights in half the bytes, q8_0 in about a quarter (int8 blocks of 32 with a float16 scale; float32 vectors,
# arithmetic and cache); the header's <name>::policy names the numeric policy.
function(sessa_embed_model target)
  cmake_parse_arguments(ARG "" "NAME;MODEL;DTYPE" "" ${ARGN})
  if(NOT ARG_NAME OR NOT ARG_MODEL)
    message(FATAL_ERROR "sessa_embed_model(${target} NAME <name> MODEL <file>): NAME and MODEL are required")
  endif()
  if(NOT ARG_DTYPE)
    set(ARG_DTYPE f32)
  endif()
  if(NOT ARG_DTYPE MATCHES "^(f32|bf16|f16|q8_0)$")
    message(FATAL_ERROR "sessa_embed_model(${target} ... DTYPE ${ARG_DTYPE}): DTYPE must be f32, bf16, f16 or q8_0")
  endif()
  get_filename_component(model "${ARG_MODEL}" ABSOLUTE)
  set(out_dir "${CMAKE_CURRENT_BINARY_DIR}/sessa_embedded/${target}")
  set(out "${out_dir}/${ARG_NAME}_model.hpp")
  if(TARGET sessa_cli)
    set(cli "$<TARGET_FILE:sessa_cli>")
    set(cli_dep sessa_cli)
  else()
    find_program(SESSA_EXECUTABLE sessa HINTS ${SESSA_EMBED_CLI_HINT} REQUIRED)
    set(cli "${SESSA_EXECUTABLE}")
    set(cli_dep "${SESSA_EXECUTABLE}")
  endif()
  add_custom_command(
    OUTPUT "${out}"
    COMMAND "${CMAKE_COMMAND}" -E make_directory "${out_dir}"
    COMMAND "${cli}" embed --model "${model}" --name "${ARG_NAME}" --out "${out}" --dtype "${ARG_DTYPE}"
    DEPENDS "${model}" ${cli_dep}
    COMMENT "Embedding ${ARG_MODEL} as ${ARG_NAME}_model.hpp (${ARG_DTYPE})"
    VERBATIM)
  target_sources(${target} PRIVATE "${out}")
  target_include_directories(${target} PRIVATE "${out_dir}")
endfunction()
