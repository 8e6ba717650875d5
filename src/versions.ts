import { loadNative } from "./native.js";

/** The llama.cpp commit compiled into the addon, the CPU variant and binary loaded, and ggml's CPU features. */
export function versions() {
  const { addon, binary } = loadNative();
  const v = addon.versions();
  return { llamaCpp: v.llamaCppCommit, cpuVariant: v.cpuVariant, binary: binary.path, systemInfo: v.systemInfo.trim() };
}
