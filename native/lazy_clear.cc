// Zero-filling of large CPU buffers by giving their pages back to the kernel instead of writing zeros.
//
// llama.cpp clears the whole KV cache buffer with memset at context creation (and on llama_memory_clear),
// which makes every page of it resident: a 4B model at context 2048 holds 288 MiB of KV cache in RSS
// before the first token, and 32k of context would hold 4.5 GiB. madvise(MADV_DONTNEED) on private
// anonymous memory has exactly memset(0)'s effect (the next access sees a fresh zero page) but leaves
// the pages unallocated until a token's keys and values are written there, so resident memory grows
// with the context actually used. The CMake link wraps llama's calls (-Wl,--wrap=ggml_backend_buffer_clear) and
// defines QWEN_GGUF_LAZY_CLEAR only where that works: Linux (other kernels' MADV_DONTNEED need not zero, macOS's does
// not) with a linker that has --wrap. Anywhere else this file is empty and llama.cpp's memset runs unchanged.
#if defined(__linux__) && defined(QWEN_GGUF_LAZY_CLEAR)
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>

#include "ggml-backend.h"

extern "C" {

void __real_ggml_backend_buffer_clear(ggml_backend_buffer_t buffer, uint8_t value);

__attribute__((visibility("hidden"))) void __wrap_ggml_backend_buffer_clear(ggml_backend_buffer_t buffer, uint8_t value) {
  constexpr size_t kMinBytes = 1 << 20;  // small buffers: memset is cheaper than a system call
  const size_t size = ggml_backend_buffer_get_size(buffer);
  // Only ggml's own CPU buffers: posix_memalign memory, private and anonymous. Never a "CPU_Mapped"
  // buffer over a model file, where MADV_DONTNEED would bring back the file's bytes, not zeros.
  if (value != 0 || size < kMinBytes || ggml_backend_buffer_get_type(buffer) != ggml_backend_cpu_buffer_type()) {
    __real_ggml_backend_buffer_clear(buffer, value);
    return;
  }
  auto* base = static_cast<uint8_t*>(ggml_backend_buffer_get_base(buffer));
  const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  const uintptr_t begin = ((uintptr_t)base + page - 1) & ~(page - 1);  // whole pages inside the buffer only:
  const uintptr_t end = ((uintptr_t)base + size) & ~(page - 1);        // its edges may share pages with malloc data
  if (end <= begin || madvise((void*)begin, end - begin, MADV_DONTNEED) != 0) {
    __real_ggml_backend_buffer_clear(buffer, value);
    return;
  }
  std::memset(base, 0, begin - (uintptr_t)base);
  std::memset((void*)end, 0, (uintptr_t)base + size - end);
}

}  // extern "C"
#endif  // __linux__ && QWEN_GGUF_LAZY_CLEAR
