import { availableParallelism } from "node:os";
import { loadNative } from "./native.js";

/** The llama.cpp commit compiled into the addon, the CPU variant and binary loaded, and the CPU features seen. */
export function versions() {
  const { addon, binary, cpu } = loadNative();
  const v = addon.versions();
  return {
    llamaCpp: v.llamaCppCommit,
    cpuVariant: v.cpuVariant,
    binary: binary.path,
    cpuFeatures: Object.entries(cpu).filter(([, on]) => on).map(([name]) => name),
    ggmlFeatures: v.systemInfo.trim(),
    defaultThreads: availableParallelism(),
  };
}
