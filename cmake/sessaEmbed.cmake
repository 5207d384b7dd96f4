# sessa_embed_model(<target> NAME <name> MODEL <file.safetensors>)
#
# Turns a decoder weight file into <name>_model.hpp at build time (`sessa embed`) and puts it on the
# include path of <target>: the file's shapes become template arguments and its weights constexpr arrays,
# for sessa::embedded::static_decoder (no file I/O and no heap at run time).
function(sessa_embed_model target)
  cmake_parse_arguments(ARG "" "NAME;MODEL" "" ${ARGN})
  if(NOT ARG_NAME OR NOT ARG_MODEL)
    message(FATAL_ERROR "sessa_embed_model(${target} NAME <name> MODEL <file>): NAME and MODEL are required")
  endif()
  get_filename_component(model "${ARG_MODEL}" ABSOLUTE)
  set(out_dir "${CMAKE_CURRENT_BINARY_DIR}/sessa_embedded")
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
    COMMAND "${cli}" embed --model "${model}" --name "${ARG_NAME}" --out "${out}"
    DEPENDS "${model}" ${cli_dep}
    COMMENT "Embedding ${ARG_MODEL} as ${ARG_NAME}_model.hpp"
    VERBATIM)
  target_sources(${target} PRIVATE "${out}")
  target_include_directories(${target} PRIVATE "${out_dir}")
endfunction()
