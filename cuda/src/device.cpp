// Host-side helpers of cuda/: CUDA errors as ringattn::Error, the owning DeviceBuffer, copies,
// and the bit-level float <-> bf16 / fp16 conversions (device.hpp says what each promises).
#include "ringattn/cuda/device.hpp"

#include <cuda_runtime.h>

#include <cmath>
#include <cstring>
#include <iomanip>
#include <sstream>
#include <string>
#include <utility>

namespace ringattn::cuda {

// ---- errors ----------------------------------------------------------------------------------

std::string cuda_error_message(int status, const char* what, const char* file, int line) {
  std::string name = file ? file : "?";
  if (const auto slash = name.find_last_of("/\\"); slash != std::string::npos) name.erase(0, slash + 1);
  std::ostringstream os;
  os << "CUDA error in " << (what ? what : "?") << ": "
     << cudaGetErrorString(static_cast<cudaError_t>(status)) << " (" << name << ":" << line << ")";
  // One line, whatever the call's text held (a macro argument may span lines).
  std::string msg = os.str();
  for (char& c : msg) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return msg;
}

void throw_cuda_error(int status, const char* what, const char* file, int line) {
  // A non-sticky error (a bad argument, out of memory) stays in the runtime's last-error slot;
  // clear it so the next launch check does not report this failure a second time.
  (void)cudaGetLastError();
  throw Error(cuda_error_message(status, what, file, line));
}

int device_count(std::string* why) {
  int n = 0;
  const cudaError_t status = cudaGetDeviceCount(&n);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();
    if (why) *why = cudaGetErrorString(status);
    return 0;
  }
  if (n == 0 && why) *why = "the CUDA runtime sees no device";
  return n;
}

// ---- device memory ---------------------------------------------------------------------------

DeviceGuard::DeviceGuard() { RINGATTN_CUDA_CHECK(cudaGetDevice(&saved_)); }

DeviceGuard::~DeviceGuard() { (void)cudaSetDevice(saved_); }

DeviceBuffer::DeviceBuffer(std::size_t bytes) {
  if (bytes == 0) return;
  const cudaError_t status = cudaMalloc(&data_, bytes);
  if (status != cudaSuccess) {
    data_ = nullptr;
    std::ostringstream what;
    what << "cudaMalloc of " << bytes << " bytes (" << std::fixed << std::setprecision(2)
         << static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0) << " GiB)";
    throw_cuda_error(static_cast<int>(status), what.str().c_str(), __FILE__, __LINE__);
  }
  bytes_ = bytes;
}

DeviceBuffer::~DeviceBuffer() { reset(); }

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    reset();
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::reset() noexcept {
  if (data_) (void)cudaFree(data_);
  data_ = nullptr;
  bytes_ = 0;
}

void copy_to_device(void* device, const void* host, std::size_t bytes) {
  if (bytes == 0) return;
  RINGATTN_CUDA_CHECK(cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice));
}

void copy_to_host(void* host, const void* device, std::size_t bytes) {
  if (bytes == 0) return;
  RINGATTN_CUDA_CHECK(cudaMemcpy(host, device, bytes, cudaMemcpyDeviceToHost));
}

// ---- float <-> bf16 / fp16 -------------------------------------------------------------------

namespace {

std::uint32_t bits_of(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

float float_of(std::uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

}  // namespace

std::uint16_t float_to_bf16_bits(float x) {
  const std::uint32_t u = bits_of(x);
  // NaN: keep the sign and the top payload bits, set the quiet bit so truncation cannot turn a
  // NaN whose payload sits in the low 16 bits into infinity.
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
  // Round to nearest even on the 16 bits that are dropped: add 0x7fff plus the bit that will be
  // the last one kept, so an exact tie rounds up only when that bit is odd. A carry out of the
  // mantissa moves into the exponent, which is right (and gives infinity past the largest value).
  const std::uint32_t lsb = (u >> 16) & 1u;
  return static_cast<std::uint16_t>((u + 0x7fffu + lsb) >> 16);
}

float bf16_bits_to_float(std::uint16_t bits) { return float_of(static_cast<std::uint32_t>(bits) << 16); }

std::uint16_t float_to_fp16_bits(float x) {
  const std::uint32_t u = bits_of(x);
  const auto sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t a = u & 0x7fffffffu;  // |x|
  if (a > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x03ffu));  // NaN, quiet
  // 65520 = 65504 (largest half) + half an ulp (16): a tie between 65504 (odd mantissa) and 2^16,
  // so it and everything above round to infinity (infinity itself included).
  if (a >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);
  if (a >= 0x38800000u) {
    // Normal half (|x| >= 2^-14): rebias the exponent (127 -> 15: subtract 112 << 23) and drop 13
    // mantissa bits, rounding to nearest even as in the bf16 case.
    const std::uint32_t r = a - 0x38000000u;
    return static_cast<std::uint16_t>(sign | ((r + 0x0fffu + ((r >> 13) & 1u)) >> 13));
  }
  // Subnormal half: the result is |x| / 2^-24 rounded to an integer. Below 2^-25 (half the
  // smallest subnormal) that is 0; 2^-25 itself is a tie that goes to the even 0.
  if (a <= 0x33000000u) return sign;
  const std::uint32_t mant = (a & 0x007fffffu) | 0x00800000u;  // float mantissa, implicit 1
  const int shift = 126 - static_cast<int>(a >> 23);          // |x| / 2^-24 = mant >> shift; 14..24
  const std::uint32_t kept = mant >> shift;
  const std::uint32_t rest = mant & ((1u << shift) - 1u);
  const std::uint32_t half = 1u << (shift - 1);
  // A carry from 0x3ff to 0x400 yields the smallest normal half, whose encoding is exactly that.
  const std::uint32_t r = kept + ((rest > half || (rest == half && (kept & 1u))) ? 1u : 0u);
  return static_cast<std::uint16_t>(sign | r);
}

float fp16_bits_to_float(std::uint16_t bits) {
  const std::uint32_t sign = (static_cast<std::uint32_t>(bits) & 0x8000u) << 16;
  const std::uint32_t e = (bits >> 10) & 0x1fu;
  const std::uint32_t m = bits & 0x03ffu;
  if (e == 0x1fu) return float_of(sign | 0x7f800000u | (m << 13));  // infinity or NaN
  if (e == 0) {
    // Zero or subnormal: m * 2^-24, exact in float.
    const float mag = std::ldexp(static_cast<float>(m), -24);
    return sign ? -mag : mag;
  }
  return float_of(sign | ((e + 112u) << 23) | (m << 13));
}

float round_to(DType dtype, float x) {
  switch (dtype) {
    case DType::F32: return x;
    case DType::F16: return fp16_bits_to_float(float_to_fp16_bits(x));
    case DType::BF16: return bf16_bits_to_float(float_to_bf16_bits(x));
  }
  fail("unknown dtype ", static_cast<int>(dtype));
}

void encode(DType dtype, const float* src, std::size_t count, void* dst) {
  switch (dtype) {
    case DType::F32:
      if (count) std::memcpy(dst, src, count * sizeof(float));
      return;
    case DType::F16:
    case DType::BF16: {
      auto* out = static_cast<std::uint16_t*>(dst);
      const bool half = dtype == DType::F16;
      for (std::size_t n = 0; n < count; ++n) out[n] = half ? float_to_fp16_bits(src[n]) : float_to_bf16_bits(src[n]);
      return;
    }
  }
  fail("unknown dtype ", static_cast<int>(dtype));
}

void decode_to_float(DType dtype, const void* src, std::size_t count, float* dst) {
  switch (dtype) {
    case DType::F32:
      if (count) std::memcpy(dst, src, count * sizeof(float));
      return;
    case DType::F16:
    case DType::BF16: {
      const auto* in = static_cast<const std::uint16_t*>(src);
      const bool half = dtype == DType::F16;
      for (std::size_t n = 0; n < count; ++n) dst[n] = half ? fp16_bits_to_float(in[n]) : bf16_bits_to_float(in[n]);
      return;
    }
  }
  fail("unknown dtype ", static_cast<int>(dtype));
}

DeviceBuffer upload(DType dtype, const float* values, std::size_t count) {
  std::vector<unsigned char> bytes(count * element_bytes(dtype));
  encode(dtype, values, count, bytes.data());
  DeviceBuffer buf(bytes.size());
  copy_to_device(buf.data(), bytes.data(), bytes.size());
  return buf;
}

DeviceBuffer upload(DType dtype, const std::vector<float>& values) {
  return upload(dtype, values.data(), values.size());
}

DeviceBuffer upload(DType dtype, const std::vector<double>& values) {
  std::vector<float> f(values.size());
  for (std::size_t n = 0; n < values.size(); ++n) f[n] = static_cast<float>(values[n]);
  return upload(dtype, f.data(), f.size());
}

std::vector<float> download(DType dtype, const void* device, std::size_t count) {
  std::vector<unsigned char> bytes(count * element_bytes(dtype));
  copy_to_host(bytes.data(), device, bytes.size());
  std::vector<float> out(count);
  decode_to_float(dtype, bytes.data(), count, out.data());
  return out;
}

}  // namespace ringattn::cuda
