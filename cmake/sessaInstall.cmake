# cmake/sessaInstall.cmake: install rules and package files. The top-level CMakeLists.txt includes this file
# last, when SESSA_INSTALL is on (the default when sessa is the top-level project).
#
# What `cmake --install BUILD --prefix P` puts under P:
#   include/sessa/...                                   the headers (`#include <sessa/sessa.hpp>`)
#   share/sessa/single_include/sessa/sessa.hpp          the generated single header, to copy into a project
#   share/cmake/sessa/sessaConfig.cmake                 find_package(sessa) -> the target sessa::sessa
#   share/cmake/sessa/sessaConfigVersion.cmake          SameMajorVersion, architecture independent
#   share/cmake/sessa/sessaTargets.cmake                the exported target
#   share/cmake/sessa/sessaEmbed.cmake                  sessa_embed_model(), using bin/sessa
#   share/pkgconfig/sessa.pc                            pkg-config --cflags --libs sessa
#   bin/sessa                                           the CLI, when it is built (tools/cli/CMakeLists.txt)
# The library is header-only, so its package files go under share/ rather than lib/<arch>/.
#
# Only the `sessa` target is exported. sessa_project_flags (this project's warnings, -march=native and
# sanitizers) is linked by this project's own executables only, never by `sessa`, so it cannot reach the
# export; the CTest fixture `consumer_install` checks the installed sessaTargets.cmake for it.
include(CMakePackageConfigHelpers)

set(SESSA_INSTALL_CMAKEDIR "${CMAKE_INSTALL_DATADIR}/cmake/sessa"
    CACHE STRING "Where sessaConfig.cmake goes, relative to the install prefix")
set(SESSA_INSTALL_PKGCONFIGDIR "${CMAKE_INSTALL_DATADIR}/pkgconfig"
    CACHE STRING "Where sessa.pc goes, relative to the install prefix")
set(SESSA_INSTALL_SINGLE_INCLUDEDIR "${CMAKE_INSTALL_DATADIR}/sessa/single_include"
    CACHE STRING "The folder that receives sessa/sessa.hpp, the single header, relative to the install prefix")
mark_as_advanced(SESSA_INSTALL_CMAKEDIR SESSA_INSTALL_PKGCONFIGDIR SESSA_INSTALL_SINGLE_INCLUDEDIR)

if(NOT CMAKE_INSTALL_INCLUDEDIR STREQUAL "include")
  # The target's $<INSTALL_INTERFACE:include> (top-level CMakeLists.txt) names `include`.
  message(WARNING "sessa: CMAKE_INSTALL_INCLUDEDIR is '${CMAKE_INSTALL_INCLUDEDIR}', but the exported "
                  "sessa::sessa target expects its headers under <prefix>/include")
endif()

# ---------------------------------------------------------------- headers
install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/sessa" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}"
        FILES_MATCHING PATTERN "*.hpp" PATTERN "*.cuh")
install(FILES "${PROJECT_SOURCE_DIR}/single_include/sessa/sessa.hpp"
        DESTINATION "${SESSA_INSTALL_SINGLE_INCLUDEDIR}/sessa")

# ---------------------------------------------------------------- CMake package: find_package(sessa)
install(TARGETS sessa EXPORT sessaTargets)
install(EXPORT sessaTargets NAMESPACE sessa:: DESTINATION "${SESSA_INSTALL_CMAKEDIR}")

# The config file finds what the target links: xsimd always, OpenMP when this build linked it.
if(OpenMP_CXX_FOUND)
  set(SESSA_CONFIG_WITH_OPENMP ON)
else()
  set(SESSA_CONFIG_WITH_OPENMP OFF)
endif()
configure_package_config_file("${PROJECT_SOURCE_DIR}/cmake/sessaConfig.cmake.in"
                              "${PROJECT_BINARY_DIR}/sessaConfig.cmake"
                              INSTALL_DESTINATION "${SESSA_INSTALL_CMAKEDIR}"
                              PATH_VARS SESSA_INSTALL_SINGLE_INCLUDEDIR CMAKE_INSTALL_BINDIR)
write_basic_package_version_file("${PROJECT_BINARY_DIR}/sessaConfigVersion.cmake"
                                 VERSION ${PROJECT_VERSION}
                                 COMPATIBILITY SameMajorVersion
                                 ARCH_INDEPENDENT)
install(FILES "${PROJECT_BINARY_DIR}/sessaConfig.cmake" "${PROJECT_BINARY_DIR}/sessaConfigVersion.cmake"
              "${PROJECT_SOURCE_DIR}/cmake/sessaEmbed.cmake"
        DESTINATION "${SESSA_INSTALL_CMAKEDIR}")

# ---------------------------------------------------------------- pkg-config: sessa.pc
# The prefix is written relative to the .pc file (${pcfiledir}), so the installed tree can be moved.
function(sessa_pc_dir out dir)
  if(IS_ABSOLUTE "${dir}")
    set(${out} "${dir}" PARENT_SCOPE)
  else()
    set(${out} "\${prefix}/${dir}" PARENT_SCOPE)
  endif()
endfunction()
if(IS_ABSOLUTE "${SESSA_INSTALL_PKGCONFIGDIR}")
  set(SESSA_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
else()
  file(RELATIVE_PATH SESSA_PC_PREFIX "/prefix/${SESSA_INSTALL_PKGCONFIGDIR}" "/prefix")
  string(REGEX REPLACE "/$" "" SESSA_PC_PREFIX "\${pcfiledir}/${SESSA_PC_PREFIX}")
endif()
sessa_pc_dir(SESSA_PC_INCLUDEDIR "${CMAKE_INSTALL_INCLUDEDIR}")
set(SESSA_PC_CFLAGS "-std=c++20")  # the CMake target's cxx_std_20
set(SESSA_PC_LIBS "")
if(OpenMP_CXX_FOUND)
  string(APPEND SESSA_PC_CFLAGS " ${OpenMP_CXX_FLAGS}")
  string(APPEND SESSA_PC_LIBS "${OpenMP_CXX_FLAGS}")
endif()
configure_file("${PROJECT_SOURCE_DIR}/cmake/sessa.pc.in" "${PROJECT_BINARY_DIR}/sessa.pc" @ONLY)
install(FILES "${PROJECT_BINARY_DIR}/sessa.pc" DESTINATION "${SESSA_INSTALL_PKGCONFIGDIR}")
