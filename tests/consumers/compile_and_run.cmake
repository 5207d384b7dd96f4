# cmake -P compile_and_run.cmake: compiles one source with a compiler command line, then runs the program.
# Used by the consumers that need no CMake project: the single header alone, nvcc, pkg-config.
#   -DCOMPILER=<compiler> -DARGS=<arguments, separated by '|'> -DOUTPUT=<executable to write>
#   -DRUN_ARGS=<arguments of the program, separated by '|'>
#   [-DPKG_CONFIG=<pkg-config> -DPKG_CONFIG_PATH=<dir>]: append `pkg-config --cflags --libs sessa` to ARGS
string(REPLACE "|" ";" args "${ARGS}")
string(REPLACE "|" ";" run_args "${RUN_ARGS}")
if(PKG_CONFIG)
  set(ENV{PKG_CONFIG_PATH} "${PKG_CONFIG_PATH}")
  execute_process(COMMAND "${PKG_CONFIG}" --cflags --libs sessa OUTPUT_VARIABLE pc_flags
                  OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "pkg-config --cflags --libs sessa failed with PKG_CONFIG_PATH=${PKG_CONFIG_PATH}")
  endif()
  message(STATUS "pkg-config --cflags --libs sessa: ${pc_flags}")
  separate_arguments(pc_flags UNIX_COMMAND "${pc_flags}")
  list(APPEND args ${pc_flags})
endif()
get_filename_component(out_dir "${OUTPUT}" DIRECTORY)
file(MAKE_DIRECTORY "${out_dir}")
list(JOIN args " " shown)
message(STATUS "${COMPILER} ${shown} -o ${OUTPUT}")
execute_process(COMMAND "${COMPILER}" ${args} -o "${OUTPUT}" RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "compiling the consumer failed (${rc})")
endif()
execute_process(COMMAND "${OUTPUT}" ${run_args} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the consumer exited with ${rc}")
endif()
