# The library as CMake targets: cargo builds it (cmake/CargoBuild.cmake), and
# reuseport::reuseport links the static library, the generated header and the system
# libraries rustc names for it. Included by the top-level CMakeLists.txt.
#
# Sets, for the rest of the project:
#   REUSEPORT_CARGO_TARGET_DIR, REUSEPORT_CARGO_PROFILE_FLAG, REUSEPORT_STATICLIB,
#   REUSEPORT_HEADER, REUSEPORT_NATIVE_LIBS (a list: gcc_s;util;...), REUSEPORT_ABI_VERSION,
#   REUSEPORT_SHARED_DIR (lib/ in the build tree: the versioned shared library and links)

find_program(CARGO cargo HINTS $ENV{HOME}/.cargo/bin REQUIRED)
find_program(RUSTC rustc HINTS $ENV{HOME}/.cargo/bin REQUIRED)

if(CMAKE_BUILD_TYPE STREQUAL "Debug")
  set(REUSEPORT_CARGO_PROFILE debug)
  set(REUSEPORT_CARGO_PROFILE_FLAG "")
else()
  set(REUSEPORT_CARGO_PROFILE release)
  set(REUSEPORT_CARGO_PROFILE_FLAG "--release")
endif()

# As the top-level project, one cargo target directory for the library, `cargo test` and
# scripts/build-nginx.sh, so the dependencies compile once per profile. As a subproject,
# cargo writes into the parent's build tree only: the sources may be read-only.
if(PROJECT_IS_TOP_LEVEL)
  set(default_target_dir ${PROJECT_SOURCE_DIR}/target)
else()
  set(default_target_dir ${PROJECT_BINARY_DIR}/cargo)
endif()
set(REUSEPORT_CARGO_TARGET_DIR ${default_target_dir} CACHE PATH "cargo's target directory for reuseport")
set(cargo_out ${REUSEPORT_CARGO_TARGET_DIR}/${REUSEPORT_CARGO_PROFILE})
set(REUSEPORT_STATICLIB ${cargo_out}/libreuseport.a)
set(REUSEPORT_HEADER ${PROJECT_BINARY_DIR}/include/reuseport.h)
set(REUSEPORT_SHARED_DIR ${PROJECT_BINARY_DIR}/lib)

# The ABI version in the SONAME (build.rs sets the same): MAJOR from 1.0 on, 0.MINOR before.
if(PROJECT_VERSION_MAJOR EQUAL 0)
  set(REUSEPORT_ABI_VERSION 0.${PROJECT_VERSION_MINOR})
else()
  set(REUSEPORT_ABI_VERSION ${PROJECT_VERSION_MAJOR})
endif()
set(REUSEPORT_SONAME libreuseport.so.${REUSEPORT_ABI_VERSION})
set(REUSEPORT_SHARED_REAL libreuseport.so.${PROJECT_VERSION})

# The system libraries a program linking the static library needs: rustc prints them when
# it links the library (CargoBuild.cmake keeps them in this file). Before the first build,
# rustc's list for an empty static library stands in (the Rust standard library's needs,
# which are the library's: it links nothing else); the build checks the two agree.
set(native_libs_file ${PROJECT_BINARY_DIR}/native-static-libs.txt)
if(NOT EXISTS ${native_libs_file})
  set(probe_dir ${PROJECT_BINARY_DIR}/native-static-libs-probe)
  file(MAKE_DIRECTORY ${probe_dir})
  file(WRITE ${probe_dir}/empty.rs "")
  execute_process(
    COMMAND ${RUSTC} --crate-type staticlib --crate-name empty --print native-static-libs
            -o ${probe_dir}/libempty.a ${probe_dir}/empty.rs
    ERROR_VARIABLE probe_out RESULT_VARIABLE probe_rc)
  if(NOT probe_rc EQUAL 0 OR NOT probe_out MATCHES "native-static-libs: ([^\n]*)")
    message(FATAL_ERROR "rustc --print native-static-libs failed:\n${probe_out}")
  endif()
  string(STRIP "${CMAKE_MATCH_1}" probe_libs)
  file(WRITE ${native_libs_file} "${probe_libs}\n")
endif()
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${native_libs_file})
file(STRINGS ${native_libs_file} REUSEPORT_NATIVE_LIBS_FLAGS LIMIT_COUNT 1)
# "-lgcc_s -lutil ..." -> gcc_s;util;...
separate_arguments(native_flags UNIX_COMMAND "${REUSEPORT_NATIVE_LIBS_FLAGS}")
set(REUSEPORT_NATIVE_LIBS "")
foreach(flag IN LISTS native_flags)
  if(NOT flag MATCHES "^-l(.+)$")
    message(FATAL_ERROR "unexpected item in rustc's native-static-libs: ${flag}")
  endif()
  list(APPEND REUSEPORT_NATIVE_LIBS ${CMAKE_MATCH_1})
endforeach()

# cargo decides what is stale; the target always runs and is a no-op when nothing changed.
add_custom_target(reuseport_cargo ALL
  COMMAND ${CMAKE_COMMAND} -DCARGO=${CARGO} -DSOURCE_DIR=${PROJECT_SOURCE_DIR}
          -DTARGET_DIR=${REUSEPORT_CARGO_TARGET_DIR} -DPROFILE=${REUSEPORT_CARGO_PROFILE}
          -DHEADER_OUT=${REUSEPORT_HEADER} -DNATIVE_LIBS_OUT=${native_libs_file}
          "-DCONFIGURED_NATIVE_LIBS=${REUSEPORT_NATIVE_LIBS_FLAGS}"
          -P ${PROJECT_SOURCE_DIR}/cmake/CargoBuild.cmake
  # The shared library under its versioned name, beside the links a loader and a linker use.
  COMMAND ${CMAKE_COMMAND} -E make_directory ${REUSEPORT_SHARED_DIR}
  COMMAND ${CMAKE_COMMAND} -E copy_if_different ${cargo_out}/libreuseport.so
          ${REUSEPORT_SHARED_DIR}/${REUSEPORT_SHARED_REAL}
  COMMAND ${CMAKE_COMMAND} -E create_symlink ${REUSEPORT_SHARED_REAL} ${REUSEPORT_SHARED_DIR}/${REUSEPORT_SONAME}
  COMMAND ${CMAKE_COMMAND} -E create_symlink ${REUSEPORT_SONAME} ${REUSEPORT_SHARED_DIR}/libreuseport.so
  WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
  BYPRODUCTS ${REUSEPORT_STATICLIB} ${cargo_out}/libreuseport.so ${REUSEPORT_HEADER}
             ${REUSEPORT_SHARED_DIR}/${REUSEPORT_SHARED_REAL}
  COMMENT "cargo rustc (reuseport: static and shared libraries, header)"
  USES_TERMINAL)

add_library(reuseport_static STATIC IMPORTED GLOBAL)
set_target_properties(reuseport_static PROPERTIES IMPORTED_LOCATION ${REUSEPORT_STATICLIB})

# What a C program links: the static library, its header, and the system libraries.
add_library(reuseport INTERFACE)
target_link_libraries(reuseport INTERFACE reuseport_static ${REUSEPORT_NATIVE_LIBS})
target_include_directories(reuseport INTERFACE ${PROJECT_BINARY_DIR}/include)
add_dependencies(reuseport reuseport_cargo)
add_library(reuseport::reuseport ALIAS reuseport)
