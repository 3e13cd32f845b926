/// @file bench_harness.hpp
/// @brief Host-side pieces both CUDA benchmark harnesses (bench_attention_cuda.cpp,
/// bench_ring_cuda.cpp) use the same way: CUDA error checks, a device buffer and stream, the dtype
/// mapping to bench_cuda_util's Elem, forward/backward argument blocks, the median of timed
/// repetitions, the timing fields of a printed or JSON row, device properties as JSON, whole-file
/// writes and the end-of-run lines.
///
/// C++20 host code on the ringattn::cuda host API and the CUDA runtime; header-only (each harness
/// is one translation unit). The device helpers stay in bench_cuda_util.{hpp,cu} (C++17, no
/// project header).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <cuda_runtime.h>
#include <nlohmann/json.hpp>

#include "bench_cuda_util.hpp"
#include "ringattn/cuda/attention.hpp"

namespace ringattn::bench_cuda {

// ---- CUDA errors and device memory ---------------------------------------------------------------

/// Throws std::runtime_error "@p what: <CUDA error text>" unless @p err is cudaSuccess.
inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

/// A device allocation that failed for lack of memory.
struct OutOfMemory : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// check_cuda(), except that cudaErrorMemoryAllocation is cleared from the runtime's last error
/// and thrown as OutOfMemory (same text), so a caller can tell "does not fit" from a failure.
inline void check_cuda_oom(cudaError_t err, const char* what) {
  if (err == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    throw OutOfMemory(std::string(what) + ": " + cudaGetErrorString(err));
  }
  check_cuda(err, what);
}

/// A device allocation freed on scope exit; @p Check reports a failed cudaMalloc (check_cuda or
/// check_cuda_oom). Zero bytes allocate nothing.
template <void (*Check)(cudaError_t, const char*) = check_cuda>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t bytes) : bytes_(bytes) {
    if (bytes > 0) Check(cudaMalloc(&ptr_, bytes), "cudaMalloc");
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  ~DeviceBuffer() { release(); }
  [[nodiscard]] void* get() const { return ptr_; }
  [[nodiscard]] float* f32() const { return static_cast<float*>(ptr_); }
  [[nodiscard]] std::size_t bytes() const { return bytes_; }

 private:
  void release() {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

/// A non-blocking stream created on @p device (which becomes the current device), destroyed on
/// scope exit; it converts to the cudaStream_t it holds.
class DeviceStream {
 public:
  explicit DeviceStream(int device) {
    check_cuda(cudaSetDevice(device), "cudaSetDevice");
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  }
  DeviceStream(const DeviceStream&) = delete;
  DeviceStream& operator=(const DeviceStream&) = delete;
  ~DeviceStream() {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  operator cudaStream_t() const { return stream_; }  // NOLINT(google-explicit-constructor)

 private:
  cudaStream_t stream_ = nullptr;
};

/// A kernel fault (illegal address, ...) poisons the context: every later call would fail too.
/// Throws when cudaDeviceSynchronize() reports one.
inline void throw_if_context_lost() {
  const cudaError_t err = cudaDeviceSynchronize();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("CUDA context lost (") + cudaGetErrorString(err) + "): later cases cannot run");
  }
}

/// The bench_cuda_util element type of a ringattn::cuda dtype.
inline Elem elem_of(ringattn::cuda::DType d) {
  switch (d) {
    case ringattn::cuda::DType::F32: return Elem::F32;
    case ringattn::cuda::DType::F16: return Elem::F16;
    case ringattn::cuda::DType::BF16: return Elem::BF16;
  }
  return Elem::F32;
}

// ---- inputs ----------------------------------------------------------------------------------------

/// Fills Q (@p nq elements), K and V (@p nkv each) with N(0, 1) from seeds @p seed + 1, + 2, + 3.
inline void fill_qkv(void* q, void* k, void* v, Elem elem, std::int64_t nq, std::int64_t nkv, std::uint64_t seed,
                     Stream stream) {
  fill_normal(q, elem, nq, seed + 1, stream);
  fill_normal(k, elem, nkv, seed + 2, stream);
  fill_normal(v, elem, nkv, seed + 3, stream);
}

/// @p seed, or a fresh one from the clock where it is 0.
inline std::uint64_t seed_or_clock(std::uint64_t seed) {
  return seed != 0 ? seed : static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
}

/// The causal settings --mask selects (both, full or causal): non-causal first.
inline std::vector<bool> masks_of(const std::string& mask) {
  std::vector<bool> masks;
  if (mask != "causal") masks.push_back(false);
  if (mask != "full") masks.push_back(true);
  return masks;
}

/// Whether --dirs names @p dir (fwd or bwd).
inline bool has_dir(const std::vector<std::string>& dirs, const char* dir) {
  return std::find(dirs.begin(), dirs.end(), dir) != dirs.end();
}

/// A forward call on device tensors: Q, K, V in @p dtype; O in @p out_dtype; LSE float32.
inline ringattn::cuda::ForwardArgs forward_args(const AttentionShape& shape, ringattn::cuda::DType dtype, const void* q,
                                                const void* k, const void* v, void* out,
                                                ringattn::cuda::DType out_dtype, float* lse, bool causal) {
  ringattn::cuda::MaskArgs mask;
  mask.causal = causal;
  return {.shape = shape, .dtype = dtype, .q = q, .k = k, .v = v, .out = out, .out_dtype = out_dtype, .lse = lse,
          .mask = mask};
}

/// A backward call on device tensors that computes D = rowsum(dO * O) into @p delta and
/// overwrites dQ, dK, dV (float32).
inline ringattn::cuda::BackwardArgs backward_args(const AttentionShape& shape, ringattn::cuda::DType dtype,
                                                  const void* q, const void* k, const void* v, const void* out,
                                                  const void* dout, const float* lse, float* delta, float* dq,
                                                  float* dk, float* dv, bool causal) {
  ringattn::cuda::MaskArgs mask;
  mask.causal = causal;
  return {.shape = shape, .dtype = dtype, .q = q, .k = k, .v = v, .out = out, .dout = dout, .lse = lse,
          .delta = delta, .compute_delta = true, .dq = dq, .dk = dk, .dv = dv, .accumulate = false,
          .mask = mask};
}

// ---- checks ----------------------------------------------------------------------------------------

/// "X O and Y LSE elements NaN/inf or unwritten", of compare() results of O and LSE.
inline std::string unwritten_o_lse(const Diff& o, const Diff& lse) {
  return std::to_string(o.bad_out) + " O and " + std::to_string(lse.bad_out) + " LSE elements NaN/inf or unwritten";
}

/// "NaN/inf or unwritten elements: dQ X, dK Y, dV Z", of compare() results of the gradients.
inline std::string unwritten_grads(const Diff& dq, const Diff& dk, const Diff& dv) {
  return "NaN/inf or unwritten elements: dQ " + std::to_string(dq.bad_out) + ", dK " + std::to_string(dk.bad_out) +
         ", dV " + std::to_string(dv.bad_out);
}

// ---- timing ------------------------------------------------------------------------------------------

/// Milliseconds per call over the timed repetitions.
struct Timing {
  double median_ms = 0, min_ms = 0, max_ms = 0;
  int reps = 0;
};

/// Repetitions that take about @p target_ms for calls of @p est_ms (> 0): ceil(target / est),
/// at least @p min_reps, at most max(min_reps, max_reps).
inline int reps_for_target(double est_ms, double target_ms, int min_reps, int max_reps) {
  return std::clamp(static_cast<int>(std::ceil(target_ms / est_ms)), min_reps, std::max(min_reps, max_reps));
}

/// Median, min and max of @p ms (not empty), one entry per repetition.
inline Timing timing_of(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  Timing t;
  const std::size_t n = ms.size();
  t.median_ms = n % 2 == 1 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]);
  t.min_ms = ms.front();
  t.max_ms = ms.back();
  t.reps = static_cast<int>(n);
  return t;
}

// ---- output ------------------------------------------------------------------------------------------

/// The ms (printf @p ms_format), TFLOP/s and reps cells of a printed row; "-" when not timed.
struct TimingCells {
  char ms[32] = "-", tf[32] = "-", reps[16] = "-";
};

inline TimingCells timing_cells(const std::optional<Timing>& t, const char* ms_format, double tflops) {
  TimingCells c;
  if (t) {
    std::snprintf(c.ms, sizeof c.ms, ms_format, t->median_ms);
    std::snprintf(c.tf, sizeof c.tf, "%.1f", tflops);
    std::snprintf(c.reps, sizeof c.reps, "%d", t->reps);
  }
  return c;
}

/// A JSON number, or null where @p x is not finite.
inline nlohmann::json json_num(double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr); }

/// A row's timing fields: ms, ms_min, ms_max, reps and @p tflops when timed, else ms and tflops null.
inline void put_timing(nlohmann::json& j, const std::optional<Timing>& t, const nlohmann::json& tflops) {
  if (t) {
    j["ms"] = t->median_ms;
    j["ms_min"] = t->min_ms;
    j["ms_max"] = t->max_ms;
    j["reps"] = t->reps;
    j["tflops"] = tflops;
  } else {
    j["ms"] = nullptr;
    j["tflops"] = nullptr;
  }
}

/// The device's name, compute capability, SM count, memory (and, with @p l2_bytes, L2 size)
/// and the CUDA runtime and driver versions.
inline nlohmann::json device_json(int device, bool l2_bytes) {
  cudaDeviceProp prop{};
  check_cuda(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  int runtime = 0, driver = 0;
  cudaRuntimeGetVersion(&runtime);
  cudaDriverGetVersion(&driver);
  nlohmann::json j{{"name", prop.name},
                   {"compute_capability", std::to_string(prop.major) + "." + std::to_string(prop.minor)},
                   {"multiprocessors", prop.multiProcessorCount},
                   {"memory_bytes", prop.totalGlobalMem},
                   {"cuda_runtime", runtime},
                   {"cuda_driver", driver}};
  if (l2_bytes) j["l2_bytes"] = prop.l2CacheSize;
  return j;
}

/// Writes @p text to @p path as a whole file or not at all: written aside, then renamed.
inline void write_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp);
    f << text;
    if (!f) throw std::runtime_error("cannot write " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error("cannot rename " + tmp + " to " + path);
}

/// Prints "@p program: no CUDA device (why)" and FAILED when there is no device; false then.
inline bool have_device(const char* program) {
  std::string why;
  if (ringattn::cuda::device_count(&why) == 0) {
    std::printf("%s: no CUDA device (%s)\nFAILED\n", program, why.c_str());
    return false;
  }
  return true;
}

/// The last lines of a run: the fatal error (if any), the row counts, then OK or FAILED.
/// Returns the exit status: 0 for OK.
inline int print_end(const std::string& fatal, std::size_t rows, int timed, int failed, double seconds, bool ok) {
  if (!fatal.empty()) std::printf("fatal: %s\n", fatal.c_str());
  std::printf("%zu rows (%d timed, %d failed) in %.0f s\n", rows, timed, failed, seconds);
  std::printf("%s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}

}  // namespace ringattn::bench_cuda
