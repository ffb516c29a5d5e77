# Builds the library with cargo and collects what C builds need from it. Script mode:
#
#   cmake -DCARGO=cargo -DSOURCE_DIR=<crate> -DTARGET_DIR=<cargo target dir>
#         -DPROFILE=release|debug -DHEADER_OUT=<path of reuseport.h to write>
#         -DNATIVE_LIBS_OUT=<file> -P CargoBuild.cmake
#
# - cargo rustc --lib --features capi-header: the static and shared libraries, and the
#   header, which build.rs generates into its OUT_DIR (never into the sources: a read-only
#   copy builds). The OUT_DIR is read from cargo's JSON messages; the header is copied
#   to HEADER_OUT when it changed.
# - `-- --print native-static-libs`: rustc's own list of the system libraries a program
#   linking the static library needs (what the Rust standard library uses), written to
#   NATIVE_LIBS_OUT for the link interface, the CMake package and pkg-config's
#   Libs.private. rustc prints it when it links; cargo replays it when nothing changed.
#
# scripts/build-nginx.sh calls it too, with the same cargo arguments, so the two builds
# share one set of artifacts in target/.
cmake_minimum_required(VERSION 3.19)

foreach(v CARGO SOURCE_DIR TARGET_DIR PROFILE HEADER_OUT NATIVE_LIBS_OUT)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "CargoBuild.cmake: -D${v}=... is required")
  endif()
endforeach()

set(profile_flag "")
if(PROFILE STREQUAL "release")
  set(profile_flag --release)
elseif(NOT PROFILE STREQUAL "debug")
  message(FATAL_ERROR "CargoBuild.cmake: PROFILE is release or debug, not ${PROFILE}")
endif()

execute_process(
  COMMAND ${CMAKE_COMMAND} -E env CARGO_TARGET_DIR=${TARGET_DIR}
          ${CARGO} rustc --lib --locked ${profile_flag} --features capi-header
          --message-format=json -- --print native-static-libs
  WORKING_DIRECTORY ${SOURCE_DIR}
  OUTPUT_VARIABLE json
  RESULT_VARIABLE rc)

# One JSON object per line. Show the compiler's messages as cargo would, and pick out the
# build script's OUT_DIR and the native-static-libs note.
string(REPLACE ";" "\\;" json "${json}")
string(REPLACE "\n" ";" lines "${json}")
set(out_dir "")
set(native_libs "")
foreach(line IN LISTS lines)
  if(line STREQUAL "")
    continue()
  endif()
  string(JSON reason ERROR_VARIABLE err GET "${line}" reason)
  if(err)
    continue()
  endif()
  if(reason STREQUAL "build-script-executed")
    string(JSON package GET "${line}" package_id)
    if(package MATCHES "(^|[/#])reuseport[@#]" OR package MATCHES "^reuseport ")
      string(JSON out_dir GET "${line}" out_dir)
    endif()
  elseif(reason STREQUAL "compiler-message")
    string(JSON rendered ERROR_VARIABLE err GET "${line}" message rendered)
    if(NOT err AND NOT rendered STREQUAL "")
      if(rendered MATCHES "native-static-libs: ([^\n]*)")
        set(native_libs "${CMAKE_MATCH_1}")
      elseif(rendered MATCHES "^note: link against the following native artifacts")
        # The preamble of that note.
      else()
        message(NOTICE "${rendered}")
      endif()
    endif()
  endif()
endforeach()

if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cargo rustc failed (exit ${rc})")
endif()
if(out_dir STREQUAL "" OR NOT EXISTS "${out_dir}/reuseport.h")
  message(FATAL_ERROR "CargoBuild.cmake: cargo reported no OUT_DIR with reuseport.h for the build script")
endif()
if(native_libs STREQUAL "")
  message(FATAL_ERROR "CargoBuild.cmake: rustc printed no native-static-libs line")
endif()

get_filename_component(header_dir "${HEADER_OUT}" DIRECTORY)
file(MAKE_DIRECTORY "${header_dir}")
file(COPY_FILE "${out_dir}/reuseport.h" "${HEADER_OUT}" ONLY_IF_DIFFERENT)

# Write only on change, so what depends on it is not rebuilt for nothing. The CMake build
# configured its link interface from this file (or, before the first build, from rustc's
# list for an empty static library): when the real list differs, the file changes, and
# CMake configures again on the next build (the file is a configure dependency).
string(STRIP "${native_libs}" native_libs)
set(old "")
if(EXISTS "${NATIVE_LIBS_OUT}")
  file(READ "${NATIVE_LIBS_OUT}" old)
  string(STRIP "${old}" old)
endif()
if(NOT old STREQUAL native_libs)
  file(WRITE "${NATIVE_LIBS_OUT}" "${native_libs}\n")
  if(DEFINED CONFIGURED_NATIVE_LIBS AND NOT CONFIGURED_NATIVE_LIBS STREQUAL native_libs)
    message(FATAL_ERROR "the static library needs the system libraries \"${native_libs}\", "
      "not the \"${CONFIGURED_NATIVE_LIBS}\" this build was configured with: build again "
      "(CMake configures again with the new list)")
  endif()
endif()
