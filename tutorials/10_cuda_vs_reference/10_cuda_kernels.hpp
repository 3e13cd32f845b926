// The two attention kernels of tutorial 10, as the host part sees them: plain C++, so that
// 10_cuda_vs_reference.cpp compiles with the project's C++ flags (and without CUDA at all).
// Defined in 10_cuda_kernels.cu.
#pragma once

#include <string>
#include <vector>

namespace tut10 {

/// Whether a CUDA GPU can be used, and if not why.
struct GpuInfo {
  bool available = false;
  std::string reason;  ///< why not (cudaGetDeviceCount's error, or no device)
  std::string name;    ///< device 0's name
  int major = 0;       ///< compute capability
  int minor = 0;
  double memory_gib = 0;
  int multiprocessors = 0;
};

/// Asks the CUDA runtime for device 0; never throws for "no GPU".
GpuInfo probe_gpu();

/// The two versions of the kernel.
enum class Kernel {
  RowPerThread,  ///< v1: one thread per query row, streaming over every key in global memory
  SharedTiles,   ///< v2: Br rows per block, K/V tiles of Bc rows staged in shared memory
};

/// Sizes of one attention call; tensors are row-major BSHD float32 (DESIGN.md).
struct Problem {
  int batch = 1;
  int seq_q = 0;
  int seq_kv = 0;
  int heads_q = 0;
  int heads_kv = 0;
  int head_dim = 0;
  bool causal = false;  ///< query i sits at key position seq_kv - seq_q + i and sees keys <= it
  float scale = 0;      ///< softmax scale, 1/sqrt(D)
};

/// What one kernel gave: O (B, S_q, H_q, D), LSE (B, H_q, S_q), and its time.
struct KernelRun {
  std::vector<float> out;
  std::vector<float> lse;
  double ms_per_launch = 0;  ///< CUDA events around `timed_launches` launches, divided by them
};

/// Runs @p kernel once on NaN-filled outputs (the result returned), then @p timed_launches more
/// between two CUDA events. Throws std::runtime_error naming the CUDA call that failed.
KernelRun run_attention(Kernel kernel, const Problem& problem, const std::vector<float>& q,
                        const std::vector<float>& k, const std::vector<float>& v, int timed_launches);

/// The head dimension the kernels are compiled for.
int compiled_head_dim();
/// Br and Bc of the shared-memory kernel.
int tile_rows();
int tile_cols();

}  // namespace tut10
