/// @file heap_tracker.cpp
/// @brief Interposes glibc's allocator to count heap bytes in use and their high-water mark.
///
/// Each function below replaces the libc symbol of the same name for the whole process (the
/// executable's definition comes first in symbol lookup, so libstdc++'s operator new and Eigen's
/// aligned_malloc call these). They forward to glibc's exported __libc_* implementations and
/// count malloc_usable_size() of each block. The counters are lock-free atomics and nothing here
/// allocates, so there is no recursion. See heap_tracker.hpp for what is and is not counted.
#include "heap_tracker.hpp"

#include <malloc.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>

extern "C" {
void* __libc_malloc(std::size_t size);
void __libc_free(void* ptr);
void* __libc_calloc(std::size_t count, std::size_t size);
void* __libc_realloc(void* ptr, std::size_t size);
void* __libc_memalign(std::size_t alignment, std::size_t size);
void* __libc_valloc(std::size_t size);
void* __libc_pvalloc(std::size_t size);
}

namespace {

std::atomic<std::int64_t> g_current{0};
std::atomic<std::int64_t> g_peak{0};
std::atomic<std::int64_t> g_count{0};

std::int64_t usable(void* ptr) {
  return ptr == nullptr ? 0 : static_cast<std::int64_t>(malloc_usable_size(ptr));
}

void raise_peak(std::int64_t now) {
  std::int64_t peak = g_peak.load(std::memory_order_relaxed);
  while (now > peak && !g_peak.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
}

void* on_alloc(void* ptr) {
  if (ptr != nullptr) {
    const std::int64_t bytes = usable(ptr);
    g_count.fetch_add(1, std::memory_order_relaxed);
    raise_peak(g_current.fetch_add(bytes, std::memory_order_relaxed) + bytes);
  }
  return ptr;
}

void on_free(void* ptr) {
  if (ptr != nullptr) g_current.fetch_sub(usable(ptr), std::memory_order_relaxed);
}

}  // namespace

namespace ringattn::bench::heap {

std::int64_t current_bytes() { return g_current.load(std::memory_order_relaxed); }
std::int64_t peak_bytes() { return g_peak.load(std::memory_order_relaxed); }
void reset_peak() {
  g_peak.store(g_current.load(std::memory_order_relaxed), std::memory_order_relaxed);
}
std::int64_t allocation_count() { return g_count.load(std::memory_order_relaxed); }

}  // namespace ringattn::bench::heap

// ---- the interposed C allocator (signatures as glibc declares them) --------------------------

extern "C" {

void* malloc(std::size_t size) noexcept { return on_alloc(__libc_malloc(size)); }

void free(void* ptr) noexcept {
  on_free(ptr);
  __libc_free(ptr);
}

void* calloc(std::size_t count, std::size_t size) noexcept {
  return on_alloc(__libc_calloc(count, size));
}

void* realloc(void* ptr, std::size_t size) noexcept {
  const std::int64_t old_bytes = usable(ptr);
  void* moved = __libc_realloc(ptr, size);
  if (moved != nullptr) {
    // Same block grown or shrunk, or a new block with the old one freed.
    const std::int64_t delta = usable(moved) - old_bytes;
    if (ptr == nullptr) g_count.fetch_add(1, std::memory_order_relaxed);
    raise_peak(g_current.fetch_add(delta, std::memory_order_relaxed) + delta);
  } else if (ptr != nullptr && size == 0) {
    g_current.fetch_sub(old_bytes, std::memory_order_relaxed);  // realloc(p, 0) freed p
  }
  return moved;  // on failure the old block is untouched and still counted
}

void* reallocarray(void* ptr, std::size_t count, std::size_t size) noexcept {
  if (size != 0 && count > SIZE_MAX / size) {
    errno = ENOMEM;
    return nullptr;
  }
  return realloc(ptr, count * size);
}

void* memalign(std::size_t alignment, std::size_t size) noexcept {
  return on_alloc(__libc_memalign(alignment, size));
}

void* aligned_alloc(std::size_t alignment, std::size_t size) noexcept {
  return on_alloc(__libc_memalign(alignment, size));
}

int posix_memalign(void** out, std::size_t alignment, std::size_t size) noexcept {
  // The alignment must be a power of two multiple of sizeof(void*).
  if (alignment % sizeof(void*) != 0 || (alignment & (alignment - 1)) != 0) return EINVAL;
  void* ptr = on_alloc(__libc_memalign(alignment, size));
  if (ptr == nullptr && size != 0) return ENOMEM;
  *out = ptr;
  return 0;
}

void* valloc(std::size_t size) noexcept { return on_alloc(__libc_valloc(size)); }

void* pvalloc(std::size_t size) noexcept { return on_alloc(__libc_pvalloc(size)); }

}  // extern "C"
