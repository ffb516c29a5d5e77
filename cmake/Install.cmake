# Installation, split the way a distribution packages a C library:
#   Runtime      the shared library under its versioned name and its SONAME link
#                (Debian: libreuseport0.1)
#   Development  the header, the static library, the libreuseport.so link, the CMake
#                package and reuseport.pc (Debian: libreuseport-dev)
# `cmake --install build` installs both; `--component Development` one of them.
include(CMakePackageConfigHelpers)

set(REUSEPORT_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/reuseport)

install(FILES ${REUSEPORT_SHARED_DIR}/${REUSEPORT_SHARED_REAL} ${REUSEPORT_SHARED_DIR}/${REUSEPORT_SONAME}
  DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT Runtime)
install(FILES ${REUSEPORT_SHARED_DIR}/libreuseport.so ${REUSEPORT_STATICLIB}
  DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT Development)
install(FILES ${REUSEPORT_HEADER}
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT Development)

# find_package(reuseport): relocatable (paths relative to the config file).
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/reuseportConfig.cmake.in
  ${PROJECT_BINARY_DIR}/reuseportConfig.cmake
  INSTALL_DESTINATION ${REUSEPORT_CMAKE_DIR}
  PATH_VARS CMAKE_INSTALL_INCLUDEDIR CMAKE_INSTALL_LIBDIR)
# 0.x: only the same 0.MINOR is compatible (Cargo's rule); from 1.0, the same MAJOR.
if(PROJECT_VERSION_MAJOR EQUAL 0)
  set(compatibility SameMinorVersion)
else()
  set(compatibility SameMajorVersion)
endif()
write_basic_package_version_file(${PROJECT_BINARY_DIR}/reuseportConfigVersion.cmake
  COMPATIBILITY ${compatibility})
install(FILES ${PROJECT_BINARY_DIR}/reuseportConfig.cmake ${PROJECT_BINARY_DIR}/reuseportConfigVersion.cmake
  DESTINATION ${REUSEPORT_CMAKE_DIR} COMPONENT Development)

# reuseport.pc: `pkg-config --libs reuseport` links the shared library; with --static,
# Libs.private adds the system libraries rustc names for the static library.
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}")
  set(REUSEPORT_PC_LIBDIR "${CMAKE_INSTALL_LIBDIR}")
else()
  set(REUSEPORT_PC_LIBDIR "\${prefix}/${CMAKE_INSTALL_LIBDIR}")
endif()
if(IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(REUSEPORT_PC_INCLUDEDIR "${CMAKE_INSTALL_INCLUDEDIR}")
else()
  set(REUSEPORT_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()
configure_file(${PROJECT_SOURCE_DIR}/cmake/reuseport.pc.in ${PROJECT_BINARY_DIR}/reuseport.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/reuseport.pc
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig COMPONENT Development)
