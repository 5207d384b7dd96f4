# Runs the embedded example and `sessa generate` on the same prompt with the same (reference) backend and
# float32 arithmetic, and fails unless both print the same text. -DWEIGHTS=bf16 runs the runtime model with the
# weights rounded to bf16 as they load, the rounding `sessa embed --dtype bf16` applies; -DWEIGHTS=q8_0 quantizes
# them as they load, as `sessa embed --dtype q8_0` does.
if(NOT WEIGHTS)
  set(WEIGHTS f32)
endif()
execute_process(COMMAND "${EMBEDDED}" "In the beginning " 120 OUTPUT_VARIABLE embedded RESULT_VARIABLE rc1)
execute_process(COMMAND "${CLI}" generate --model "${MODEL}" --prompt "In the beginning " --tokens 120 --backend reference
                        --weights ${WEIGHTS}
                OUTPUT_VARIABLE runtime ERROR_QUIET RESULT_VARIABLE rc2)
if(NOT rc1 EQUAL 0 OR NOT rc2 EQUAL 0)
  message(FATAL_ERROR "a run failed: embedded ${rc1}, runtime ${rc2}")
endif()
string(REGEX MATCH "text: [^\n]*" embedded_text "${embedded}")
string(REPLACE "text: " "" embedded_text "${embedded_text}")
string(STRIP "${runtime}" runtime)
string(STRIP "${embedded_text}" embedded_text)
if(NOT embedded_text STREQUAL runtime)
  message(FATAL_ERROR "embedded model and runtime path differ:\n  embedded: '${embedded_text}'\n  runtime:  '${runtime}'")
endif()
message(STATUS "identical: ${runtime}")
