import { availableParallelism } from "node:os";
import { featureNames, loadNative } from "./native.js";

/** The llama.cpp commit compiled into the addon, the CPU variant and binary loaded, and the CPU features seen. */
export function versions() {
  const { addon, binary, cpu } = loadNative();
  const v = addon.versions();
  return {
    llamaCpp: v.llamaCppCommit,
    cpuVariant: v.cpuVariant,
    binary: binary.path,
    cpuFeatures: featureNames(cpu),
    ggmlFeatures: v.systemInfo.trim(),
    defaultThreads: availableParallelism(),
  };
}
