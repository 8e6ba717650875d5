# A thin entry point for the tools that call node-gyp (npm rebuild, electron-rebuild, node-gyp-build's source fallback,
# prebuildify's default): its one action runs the CMake build (CMakeLists.txt, driven by cmake-js through
# scripts/build-native.mjs) for the CPU variant the loader will pick on this machine. There is no second build
# description: nothing is compiled by gyp itself.
{
  "variables": {
    "qwen_gguf_variant%": "<!(node scripts/cpu-variant.mjs)",
  },
  "targets": [
    {
      "target_name": "qwen_gguf",
      "type": "none",
      "actions": [
        {
          "action_name": "cmake_js_build",
          "inputs": ["CMakeLists.txt", "scripts/build-native.mjs"],
          "outputs": ["build/<(qwen_gguf_variant)/Release/qwen_gguf-<(qwen_gguf_variant).node"],
          "action": ["node", "scripts/build-native.mjs", "--variant", "<(qwen_gguf_variant)"],
          "message": "Building the <(qwen_gguf_variant) addon with cmake-js (CMakeLists.txt)",
        },
      ],
    },
  ],
}
