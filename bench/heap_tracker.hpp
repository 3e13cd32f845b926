/// @file heap_tracker.hpp
/// @brief Counts the heap bytes a benchmark allocates, by interposing the C allocator.
///
/// heap_tracker.cpp defines malloc, free, calloc, realloc, reallocarray, aligned_alloc,
/// posix_memalign, memalign, valloc and pvalloc in the benchmark executable; each forwards to
/// glibc's __libc_* function and adds (or subtracts) malloc_usable_size() of the block to an atomic
/// "bytes in use" count, keeping the high-water mark. operator new (std::vector, Tensor) and
/// Eigen's aligned allocator both end in malloc, so they are counted; the stack (Eigen's
/// alloca'd temporaries under EIGEN_STACK_ALLOCATION_LIMIT = 128 KiB) and memory the program
/// maps itself are not. Sizes are the usable size of each block (the request rounded up to
/// glibc's chunk size), not resident pages: a 1 GiB block counts 1 GiB as soon as it is
/// allocated, whether or not it has been touched.
///
/// Use: `auto before = heap::current_bytes(); heap::reset_peak(); f(); auto peak =
/// heap::peak_bytes()
/// - before;` gives what f allocated at most at any moment (outputs it returns + workspace).
/// Linux/glibc only.
#pragma once

#include <cstdint>

namespace ringattn::bench::heap {

/// Bytes currently allocated through the interposed functions.
[[nodiscard]] std::int64_t current_bytes();
/// High-water mark of current_bytes() since the last reset_peak() (or program start).
[[nodiscard]] std::int64_t peak_bytes();
/// Sets the high-water mark to the bytes in use now.
void reset_peak();
/// Number of allocation calls so far (to check the interposition is live).
[[nodiscard]] std::int64_t allocation_count();

}  // namespace ringattn::bench::heap
