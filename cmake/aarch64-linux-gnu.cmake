# Cross-compiling the linux-arm64 (glibc) addon on an x86-64 Debian/Ubuntu host with the distribution's cross toolchain:
#   apt-get install g++-aarch64-linux-gnu libc6-arm64-cross libstdc++6-arm64-cross
# Used by scripts/build-native.mjs --arch arm64 (and so by `npm run prebuild -- --arch arm64`).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(QWEN_GGUF_CROSS_PREFIX "aarch64-linux-gnu-" CACHE STRING "prefix of the cross tools")
set(CMAKE_C_COMPILER ${QWEN_GGUF_CROSS_PREFIX}gcc)
set(CMAKE_CXX_COMPILER ${QWEN_GGUF_CROSS_PREFIX}g++)
set(CMAKE_STRIP ${QWEN_GGUF_CROSS_PREFIX}strip CACHE FILEPATH "")

# Headers and libraries from the arm64 sysroot only; programs (ccache, node for node-addon-api's path) from the host.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
