# -DREUSEPORT_SANITIZE=address,undefined (or ON for that pair): the C tests, rpserver and
# the load client are compiled and linked with -fsanitize=..., so the C side of every
# call into the library (the structs, the buffers, the fds the callers manage) is checked.
# The Rust static library is not instrumented (cargo builds it as usual); its own checks
# are the fuzz targets (fuzz/).
#
# In such a build, reuseport_sanitized(test...) labels tests `sanitize` and has them write
# any report into ${REUSEPORT_SANITIZER_REPORTS} (log_path: one file per process, forked
# and exec'ed children included, whose own exit status a test may not look at).
# `sanitizer_reports` runs after them and fails when a report exists, printing it.
#
# Included by the top-level CMakeLists.txt before the C targets.

set(REUSEPORT_SANITIZE "" CACHE STRING
  "Sanitizers for the C tests and examples (e.g. address,undefined; ON means that pair)")

if(REUSEPORT_SANITIZE)
  if(REUSEPORT_SANITIZE STREQUAL "ON")
    set(REUSEPORT_SANITIZE address,undefined CACHE STRING "" FORCE)
  endif()
  # No recovery: a finding aborts the process, so it cannot scroll past unnoticed.
  add_compile_options(-fsanitize=${REUSEPORT_SANITIZE} -fno-sanitize-recover=all -fno-omit-frame-pointer)
  add_link_options(-fsanitize=${REUSEPORT_SANITIZE})
  set(REUSEPORT_SANITIZER_REPORTS ${PROJECT_BINARY_DIR}/sanitizer-reports)
endif()

function(reuseport_sanitized)
  if(NOT REUSEPORT_SANITIZE)
    return()
  endif()
  set(r ${REUSEPORT_SANITIZER_REPORTS})
  # detect_leaks: on. The tests free what they allocate; processes that end by a signal
  # (killed workers) or by _exit() (forked children) are not leak-checked by LSan, which
  # runs at exit() only, so the long-lived servers' exits by signal are not reported.
  # Workers that dropped privileges are not dumpable, and LSan cannot stop their threads
  # at exit: see docs/testing.md (sanitizers) for how that is handled.
  set(env
    "ASAN_OPTIONS=halt_on_error=1:abort_on_error=0:detect_leaks=1:log_path=${r}/asan:log_exe_name=1"
    "UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path=${r}/ubsan:log_exe_name=1"
    "LSAN_OPTIONS=log_path=${r}/lsan:log_exe_name=1")
  foreach(t ${ARGN})
    set_property(TEST ${t} APPEND PROPERTY LABELS sanitize)
    set_property(TEST ${t} APPEND PROPERTY ENVIRONMENT ${env})
    set_property(TEST ${t} APPEND PROPERTY FIXTURES_REQUIRED sanitizer_reports)
  endforeach()
endfunction()

# The fixture around them: an empty report directory before, no report after.
function(reuseport_sanitizer_fixture)
  if(NOT REUSEPORT_SANITIZE)
    return()
  endif()
  set(r ${REUSEPORT_SANITIZER_REPORTS})
  # World-writable (sticky): workers that dropped to nobody write their reports there too.
  add_test(NAME sanitizer_reports_clear
    COMMAND sh -c "rm -rf ${r} && mkdir -m 1777 ${r}")
  add_test(NAME sanitizer_reports
    COMMAND sh -c "if ls ${r}/* >/dev/null 2>&1; then head -n 60 ${r}/*; echo 'FAILED: sanitizer reports above (${r})'; exit 1; fi; echo 'no sanitizer report'")
  set_tests_properties(sanitizer_reports_clear PROPERTIES FIXTURES_SETUP sanitizer_reports LABELS sanitize)
  set_tests_properties(sanitizer_reports PROPERTIES FIXTURES_CLEANUP sanitizer_reports LABELS sanitize)
endfunction()
