// The CPU variants each architecture is built in (mirrors CMakeLists.txt and CPU_VARIANTS in src/native.ts) and
// where each build goes, shared by build-native.mjs, prebuild.mjs and prebuild-node-gyp.mjs.
import { spawnSync } from "node:child_process";
import { join } from "node:path";

/** Variants per Node architecture, baseline first. Architectures without a table build "native" (GGML_NATIVE). */
export const VARIANTS = { x64: ["avx2", "avx512"], arm64: ["dotprod", "i8mm"] };

export function variantsOf(arch) {
  return VARIANTS[arch] ?? ["native"];
}

/** Cross builds this host can make: arch → CMake toolchain file (relative to the package root) and the compiler it needs. */
export const CROSS = {
  "linux-x64": {
    arm64: {
      toolchain: join("cmake", "aarch64-linux-gnu.cmake"),
      compiler: "aarch64-linux-gnu-g++",
      strip: "aarch64-linux-gnu-strip",
      install: "apt-get install g++-aarch64-linux-gnu libc6-arm64-cross libstdc++6-arm64-cross",
    },
  },
};

export function crossTarget(arch) {
  return CROSS[`${process.platform}-${process.arch}`]?.[arch];
}

export function hasCompiler(cmd) {
  return spawnSync(cmd, ["--version"], { stdio: "ignore" }).status === 0;
}

/**
 * CMake's output folder (relative to the package root). Native builds: build/<variant>, where src/native.ts looks for
 * a local build. Cross builds: build/<platform>-<arch>/<variant>, so they never overwrite the host's build/<variant>.
 */
export function buildDir(arch, variant) {
  return arch === process.arch ? join("build", variant) : join("build", `${process.platform}-${arch}`, variant);
}
