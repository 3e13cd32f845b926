/// @file device.hpp
/// @brief Host-side helpers around the CUDA runtime: error checks that throw ringattn::Error,
/// an owning device buffer, host <-> device copies, and bit-exact float <-> bf16 / fp16
/// conversions on the host.
///
/// This header includes no CUDA header, so host code (the command line, tests) can use it
/// without cuda_runtime.h, cuda_fp16.h or cuda_bf16.h. The conversions round to nearest, ties to
/// even, exactly like the device intrinsics __float2bfloat16_rn and __float2half_rn (the host
/// tests compare them bit for bit over every 16-bit pattern and the rounding ties).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ringattn/core/error.hpp"
#include "ringattn/cuda/attention.hpp"

/// Checks a CUDA runtime call: a status other than cudaSuccess becomes ringattn::Error
/// "CUDA error in <the call's text>: <cudaGetErrorString> (<file>:<line>)".
#define RINGATTN_CUDA_CHECK(call) \
  ::ringattn::cuda::check_cuda(static_cast<int>(call), #call, __FILE__, __LINE__)

/// @brief The CUDA implementation: attention kernels (forward, backward, LSE merge, split-KV
/// decoding) behind a host API that validates like the CPU reference, and the device helpers they
/// share (errors, buffers, copies, low-precision conversions).
namespace ringattn::cuda {

// ---- errors ----------------------------------------------------------------------------------

/// The one-line message for a failed CUDA call: "CUDA error in <what>: <cudaGetErrorString of
/// status> (<file name>:<line>)". The file is named without its folders.
[[nodiscard]] std::string cuda_error_message(int status, const char* what, const char* file, int line);
/// Throws ringattn::Error with cuda_error_message(); also clears CUDA's last-error state so the
/// next check does not report the same failure again.
[[noreturn]] void throw_cuda_error(int status, const char* what, const char* file, int line);
/// Throws (throw_cuda_error) unless @p status is 0 (cudaSuccess). Use RINGATTN_CUDA_CHECK.
inline void check_cuda(int status, const char* what, const char* file, int line) {
  if (status != 0) throw_cuda_error(status, what, file, line);
}

// ---- the current device ----------------------------------------------------------------------

/// Restores the calling thread's current CUDA device when the scope ends (code that works on
/// several devices sets each in turn and leaves the caller's choice as it found it).
class DeviceGuard {
 public:
  /// Remembers the current device (cudaGetDevice); throws ringattn::Error if that fails.
  DeviceGuard();
  /// Sets the remembered device again (errors ignored: a destructor must not throw).
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;             ///< one scope, one guard
  DeviceGuard& operator=(const DeviceGuard&) = delete;  ///< one scope, one guard

 private:
  int saved_ = 0;
};

// ---- device memory ---------------------------------------------------------------------------

/// An owning, move-only block of device memory (cudaMalloc / cudaFree). A buffer of 0 bytes
/// allocates nothing and holds a null pointer. Out of memory is a ringattn::Error that says how
/// many bytes were asked for.
class DeviceBuffer {
 public:
  /// An empty buffer (null, 0 bytes).
  DeviceBuffer() = default;
  /// Allocates @p bytes on the current device (uninitialized).
  explicit DeviceBuffer(std::size_t bytes);
  /// Frees the memory (errors of cudaFree are ignored: a destructor must not throw).
  ~DeviceBuffer();
  /// Takes the memory of @p other, which becomes empty.
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  /// Frees this buffer's memory and takes @p other's, which becomes empty.
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;             ///< not copyable: one owner
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;  ///< not copyable: one owner

  [[nodiscard]] void* data() const { return data_; }         ///< device pointer (null if empty)
  [[nodiscard]] std::size_t bytes() const { return bytes_; }  ///< size in bytes
  [[nodiscard]] bool empty() const { return bytes_ == 0; }    ///< true when nothing is held
  /// The device pointer as @p T*.
  template <class T>
  [[nodiscard]] T* as() const {
    return static_cast<T*>(data_);
  }
  /// Frees the memory now; the buffer becomes empty.
  void reset() noexcept;

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

/// Copies @p bytes from host to device (synchronous: returns when the copy is done).
void copy_to_device(void* device, const void* host, std::size_t bytes);
/// Copies @p bytes from device to host (synchronous; waits for the work queued before it on the
/// legacy default stream, so kernel errors surface here at the latest).
void copy_to_host(void* host, const void* device, std::size_t bytes);

// ---- float <-> bf16 / fp16 on the host -------------------------------------------------------

/// float -> bfloat16 bits, round to nearest even; overflow gives infinity; NaN stays a (quiet) NaN.
[[nodiscard]] std::uint16_t float_to_bf16_bits(float x);
/// bfloat16 bits -> float (exact).
[[nodiscard]] float bf16_bits_to_float(std::uint16_t bits);
/// float -> IEEE binary16 bits, round to nearest even, subnormals kept, overflow (|x| >= 65520)
/// gives infinity, NaN stays a (quiet) NaN.
[[nodiscard]] std::uint16_t float_to_fp16_bits(float x);
/// IEEE binary16 bits -> float (exact, subnormals included).
[[nodiscard]] float fp16_bits_to_float(std::uint16_t bits);
/// @p x rounded to @p dtype and widened back to float (the value the device will see).
[[nodiscard]] float round_to(DType dtype, float x);

/// Encodes @p count floats as @p dtype elements into @p dst (count * element_bytes(dtype) bytes).
void encode(DType dtype, const float* src, std::size_t count, void* dst);
/// Decodes @p count @p dtype elements from @p src into floats.
void decode_to_float(DType dtype, const void* src, std::size_t count, float* dst);

// ---- upload and download with conversion -----------------------------------------------------

/// Converts @p count floats to @p dtype on the host and uploads them into a new buffer.
[[nodiscard]] DeviceBuffer upload(DType dtype, const float* values, std::size_t count);
/// Converts @p values to @p dtype on the host (float64 through float32) and uploads them.
[[nodiscard]] DeviceBuffer upload(DType dtype, const std::vector<float>& values);
/// As above for float64 values: each is rounded to float32 first, then to @p dtype (for bf16 and
/// fp16 this double rounding can differ from a direct rounding in rare ties).
[[nodiscard]] DeviceBuffer upload(DType dtype, const std::vector<double>& values);
/// Downloads @p count elements of @p dtype from @p device and widens them to float.
[[nodiscard]] std::vector<float> download(DType dtype, const void* device, std::size_t count);

}  // namespace ringattn::cuda
