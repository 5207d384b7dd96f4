# cmake -P install_tree.cmake: the consumer_install fixture. Installs the current build into a fresh prefix with
# `cmake --install` and checks what the prefix holds, so the find_package and pkg-config consumers start from
# exactly what a user's `cmake --install` gives.
#   -DBUILD_DIR=<build tree> -DPREFIX=<prefix to (re)create> [-DCONFIG=<config>] -DSOURCE_DIR=<repository>
#   -DEXPECT_CLI=ON|OFF
file(REMOVE_RECURSE "${PREFIX}")
set(config_args)
if(CONFIG)
  set(config_args --config "${CONFIG}")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}" ${config_args}
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cmake --install ${BUILD_DIR} --prefix ${PREFIX} failed (${rc})")
endif()

set(expected
  include/sessa/sessa.hpp
  include/sessa/version.hpp
  include/sessa/io/model_file.hpp
  share/sessa/single_include/sessa/sessa.hpp
  share/cmake/sessa/sessaConfig.cmake
  share/cmake/sessa/sessaConfigVersion.cmake
  share/cmake/sessa/sessaTargets.cmake
  share/pkgconfig/sessa.pc)
if(EXPECT_CLI)
  list(APPEND expected bin/sessa)
endif()
foreach(f ${expected})
  if(NOT EXISTS "${PREFIX}/${f}")
    message(FATAL_ERROR "the install tree lacks ${f}")
  endif()
endforeach()

execute_process(COMMAND "${CMAKE_COMMAND}" -E compare_files "${PREFIX}/share/sessa/single_include/sessa/sessa.hpp"
                        "${SOURCE_DIR}/single_include/sessa/sessa.hpp" RESULT_VARIABLE differs)
if(differs)
  message(FATAL_ERROR "the installed single header differs from single_include/sessa/sessa.hpp")
endif()

# The export names sessa::sessa and nothing of this project's own build flags, and it is relocatable: no file
# of the CMake package mentions the source or build tree.
file(GLOB package_files "${PREFIX}/share/cmake/sessa/*.cmake")
foreach(f ${package_files})
  file(READ "${f}" text)
  foreach(bad sessa_project_flags -march= -fsanitize -Werror "${SOURCE_DIR}" "${BUILD_DIR}")
    string(FIND "${text}" "${bad}" at)
    if(NOT at EQUAL -1)
      message(FATAL_ERROR "${f} mentions '${bad}': the export must hold only the library's usage requirements "
                          "and relative paths")
    endif()
  endforeach()
endforeach()
file(READ "${PREFIX}/share/cmake/sessa/sessaTargets.cmake" targets)
if(NOT targets MATCHES "add_library\\(sessa::sessa INTERFACE IMPORTED\\)")
  message(FATAL_ERROR "sessaTargets.cmake does not define sessa::sessa")
endif()
list(JOIN expected ", " listed)
message(STATUS "install tree at ${PREFIX} holds ${listed}; the CMake package is relocatable and exports no "
               "project flags")
