// sessa/version.hpp: the library's version, as macros.
//
// The one place the version is written. The CMake project version (top-level CMakeLists.txt) must agree;
// the CTest test `version_matches_cmake` checks that they do. config.hpp includes this header, so every
// sessa header sees the macros. The single header (single_include/sessa/sessa.hpp) states this version in
// its first line.
#pragma once

#define SESSA_VERSION_MAJOR 0
#define SESSA_VERSION_MINOR 1
#define SESSA_VERSION_PATCH 0
#define SESSA_VERSION_STRING "0.1.0"

/// One integer that orders versions: MAJOR * 10000 + MINOR * 100 + PATCH (0.1.0 -> 100).
#define SESSA_VERSION (SESSA_VERSION_MAJOR * 10000 + SESSA_VERSION_MINOR * 100 + SESSA_VERSION_PATCH)
