# cmake -P single_include_up_to_date.cmake: regenerates the single header into the build tree and compares it
# byte for byte with the committed single_include/sessa/sessa.hpp.
#   -DPYTHON=<python3> -DSOURCE_DIR=<repository> -DOUTPUT=<where to generate>
execute_process(COMMAND "${PYTHON}" "${SOURCE_DIR}/tools/amalgamate.py" --output "${OUTPUT}" RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "tools/amalgamate.py failed (${rc})")
endif()
set(committed "${SOURCE_DIR}/single_include/sessa/sessa.hpp")
execute_process(COMMAND "${CMAKE_COMMAND}" -E compare_files "${OUTPUT}" "${committed}" RESULT_VARIABLE differs)
if(differs)
  message(FATAL_ERROR
          "single_include/sessa/sessa.hpp is out of date with include/sessa/ (or missing).\n"
          "Run `python3 tools/amalgamate.py` in the repository and commit the result.\n"
          "(generated: ${OUTPUT}; `diff ${committed} ${OUTPUT}` shows the difference)")
endif()
message(STATUS "single_include/sessa/sessa.hpp matches tools/amalgamate.py's output")
