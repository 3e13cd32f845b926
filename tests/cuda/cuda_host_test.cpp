// The CPU-side of cuda/, tested without a GPU: the float <-> bf16 / fp16 conversions (every 16-bit
// pattern, every rounding tie, and bit for bit against CUDA's own host conversions), CUDA errors
// turned into one-line ringattn::Error, argument validation (each bad argument throws before any
// CUDA call, naming the problem), the resolved defaults, the kernel choice, launch shapes, decode's
// workspace and split heuristic, and the mask/split index math against brute force.
//
// The pointers handed to forward()/backward()/merge()/decode() here are fake (never dereferenced):
// every call below fails validation, which happens before anything is launched.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "common/check.hpp"
#include "launch.hpp"
#include "ringattn/core/error.hpp"
#include "ringattn/cuda/attention.hpp"
#include "ringattn/cuda/device.hpp"
#include "tile_math.hpp"

namespace {

namespace rc = ringattn::cuda;
namespace rd = ringattn::cuda::detail;
using ringattn::AttentionShape;
using ringattn::Positions;
using ringattn::test::ThrowsError;

constexpr float kInf = std::numeric_limits<float>::infinity();

std::uint32_t bits(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
float from_bits(std::uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// CUDA's own host-side conversions (cuda_bf16.h / cuda_fp16.h), as raw bits.
std::uint16_t cuda_bf16(float x) {
  const __nv_bfloat16 h = __float2bfloat16_rn(x);
  std::uint16_t b;
  std::memcpy(&b, &h, sizeof b);
  return b;
}
std::uint16_t cuda_fp16(float x) {
  const __half h = __float2half_rn(x);
  std::uint16_t b;
  std::memcpy(&b, &h, sizeof b);
  return b;
}

bool is_nan_bf16(std::uint16_t b) { return (b & 0x7f80u) == 0x7f80u && (b & 0x007fu) != 0; }
bool is_nan_fp16(std::uint16_t b) { return (b & 0x7c00u) == 0x7c00u && (b & 0x03ffu) != 0; }

// ---- conversions -----------------------------------------------------------------------------

TEST(Bf16, EveryPatternRoundTrips) {
  for (std::uint32_t b = 0; b <= 0xffffu; ++b) {
    const auto h = static_cast<std::uint16_t>(b);
    const float f = rc::bf16_bits_to_float(h);
    ASSERT_EQ(bits(f) >> 16, b) << "bf16 -> float must be a plain shift";
    ASSERT_EQ(bits(f) & 0xffffu, 0u);
    if (is_nan_bf16(h)) {
      ASSERT_TRUE(std::isnan(f));
      ASSERT_TRUE(is_nan_bf16(rc::float_to_bf16_bits(f))) << std::hex << b;
    } else {
      ASSERT_EQ(rc::float_to_bf16_bits(f), h) << std::hex << b;
    }
  }
}

TEST(Bf16, TiesGoToEvenAndNeighboursToNearest) {
  int ties = 0;
  for (std::uint32_t b = 0; b < 0x7f7fu; ++b) {  // every pair of adjacent finite positive values
    for (std::uint32_t sign : {0u, 0x8000u}) {
      const auto lo = static_cast<std::uint16_t>(b | sign), hi = static_cast<std::uint16_t>((b + 1) | sign);
      // The midpoint needs 9 significant bits: exact in float, and halfway between the two bit
      // patterns (same sign, same or adjacent exponents).
      const std::uint32_t lo_bits = bits(rc::bf16_bits_to_float(lo)), hi_bits = bits(rc::bf16_bits_to_float(hi));
      const float mid = from_bits(lo_bits + (hi_bits - lo_bits) / 2);
      const std::uint16_t even = (lo & 1u) == 0 ? lo : hi;
      ASSERT_EQ(rc::float_to_bf16_bits(mid), even) << std::hex << b;
      ASSERT_EQ(rc::float_to_bf16_bits(from_bits(bits(mid) + 1)), hi) << std::hex << b;  // just past: away from 0
      ASSERT_EQ(rc::float_to_bf16_bits(from_bits(bits(mid) - 1)), lo) << std::hex << b;  // just before: towards 0
      ++ties;
    }
  }
  EXPECT_EQ(ties, 2 * 0x7f7f);
}

TEST(Bf16, EdgeCases) {
  EXPECT_EQ(rc::float_to_bf16_bits(0.0f), 0x0000u);
  EXPECT_EQ(rc::float_to_bf16_bits(-0.0f), 0x8000u);
  EXPECT_EQ(rc::float_to_bf16_bits(kInf), 0x7f80u);
  EXPECT_EQ(rc::float_to_bf16_bits(-kInf), 0xff80u);
  EXPECT_EQ(rc::float_to_bf16_bits(1.0f), 0x3f80u);
  EXPECT_EQ(rc::float_to_bf16_bits(std::numeric_limits<float>::max()), 0x7f80u);  // past the largest bf16: inf
  EXPECT_EQ(rc::float_to_bf16_bits(from_bits(0x7f7f7fffu)), 0x7f7fu);           // just below the tie: largest
  EXPECT_EQ(rc::float_to_bf16_bits(from_bits(0x7f7f8000u)), 0x7f80u);           // tie with odd mantissa: inf
  EXPECT_EQ(rc::float_to_bf16_bits(from_bits(0x00000001u)), 0x0000u);           // smallest float subnormal
  EXPECT_EQ(rc::float_to_bf16_bits(from_bits(0x00008000u)), 0x0000u);           // tie, even 0
  EXPECT_EQ(rc::float_to_bf16_bits(from_bits(0x00018000u)), 0x0002u);           // tie, odd 1 -> 2
  // NaN stays NaN, even one whose payload lives only in the dropped 16 bits (a truncation would
  // make it infinity).
  EXPECT_TRUE(is_nan_bf16(rc::float_to_bf16_bits(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(is_nan_bf16(rc::float_to_bf16_bits(from_bits(0x7f800001u))));
  EXPECT_TRUE(is_nan_bf16(rc::float_to_bf16_bits(from_bits(0xff800001u))));
  EXPECT_EQ(rc::float_to_bf16_bits(from_bits(0xff800001u)) & 0x8000u, 0x8000u);  // sign kept
}

TEST(Fp16, EveryPatternRoundTrips) {
  for (std::uint32_t b = 0; b <= 0xffffu; ++b) {
    const auto h = static_cast<std::uint16_t>(b);
    const float f = rc::fp16_bits_to_float(h);
    if (is_nan_fp16(h)) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << b;
      ASSERT_TRUE(is_nan_fp16(rc::float_to_fp16_bits(f))) << std::hex << b;
      continue;
    }
    ASSERT_EQ(rc::float_to_fp16_bits(f), h) << std::hex << b;
    // The value itself, from first principles: (-1)^s 2^(e-15) (1 + m/1024), subnormal 2^-14 m/1024.
    const int e = static_cast<int>((b >> 10) & 0x1fu);
    const double m = static_cast<double>(b & 0x3ffu);
    const double mag = e == 0x1f ? std::numeric_limits<double>::infinity()
                       : e == 0  ? std::ldexp(m / 1024.0, -14)
                                 : std::ldexp(1.0 + m / 1024.0, e - 15);
    ASSERT_EQ(static_cast<double>(f), (b & 0x8000u) ? -mag : mag) << std::hex << b;
  }
}

TEST(Fp16, TiesGoToEvenAndNeighboursToNearest) {
  int ties = 0;
  for (std::uint32_t b = 0; b < 0x7bffu; ++b) {  // adjacent finite positive values, subnormals included
    for (std::uint32_t sign : {0u, 0x8000u}) {
      const auto lo = static_cast<std::uint16_t>(b | sign), hi = static_cast<std::uint16_t>((b + 1) | sign);
      const double mid_d = (static_cast<double>(rc::fp16_bits_to_float(lo)) + rc::fp16_bits_to_float(hi)) / 2;
      const auto mid = static_cast<float>(mid_d);
      ASSERT_EQ(static_cast<double>(mid), mid_d);  // 12 significant bits: exact in float
      const std::uint16_t even = (lo & 1u) == 0 ? lo : hi;
      ASSERT_EQ(rc::float_to_fp16_bits(mid), even) << std::hex << b;
      if (b != 0) {  // around 0 the float neighbours of the midpoint are not ordered by bits(mid) +- 1 with sign
        ASSERT_EQ(rc::float_to_fp16_bits(from_bits(bits(mid) + 1)), hi) << std::hex << b;
        ASSERT_EQ(rc::float_to_fp16_bits(from_bits(bits(mid) - 1)), lo) << std::hex << b;
      }
      ++ties;
    }
  }
  EXPECT_EQ(ties, 2 * 0x7bff);
}

TEST(Fp16, EdgeCases) {
  EXPECT_EQ(rc::float_to_fp16_bits(0.0f), 0x0000u);
  EXPECT_EQ(rc::float_to_fp16_bits(-0.0f), 0x8000u);
  EXPECT_EQ(rc::float_to_fp16_bits(1.0f), 0x3c00u);
  EXPECT_EQ(rc::float_to_fp16_bits(65504.0f), 0x7bffu);                       // largest half
  EXPECT_EQ(rc::float_to_fp16_bits(std::nextafter(65520.0f, 0.0f)), 0x7bffu);  // below the tie
  EXPECT_EQ(rc::float_to_fp16_bits(65520.0f), 0x7c00u);                       // the tie: odd 0x3ff -> inf
  EXPECT_EQ(rc::float_to_fp16_bits(-1e6f), 0xfc00u);
  EXPECT_EQ(rc::float_to_fp16_bits(kInf), 0x7c00u);
  EXPECT_EQ(rc::float_to_fp16_bits(-kInf), 0xfc00u);
  EXPECT_EQ(rc::float_to_fp16_bits(std::ldexp(1.0f, -14)), 0x0400u);  // smallest normal
  EXPECT_EQ(rc::float_to_fp16_bits(std::ldexp(1.0f, -24)), 0x0001u);  // smallest subnormal
  EXPECT_EQ(rc::float_to_fp16_bits(std::ldexp(1.0f, -25)), 0x0000u);  // tie with 0: even 0
  EXPECT_EQ(rc::float_to_fp16_bits(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001u);
  EXPECT_EQ(rc::float_to_fp16_bits(std::ldexp(3.0f, -25)), 0x0002u);   // 1.5 ulp: tie, odd 1 -> 2
  EXPECT_EQ(rc::float_to_fp16_bits(std::ldexp(1023.5f, -24)), 0x0400u);  // largest subnormal + 1/2: carries into the normals
  EXPECT_EQ(rc::float_to_fp16_bits(1e-30f), 0x0000u);
  EXPECT_EQ(rc::float_to_fp16_bits(from_bits(0x00000001u)), 0x0000u);
  EXPECT_TRUE(is_nan_fp16(rc::float_to_fp16_bits(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(is_nan_fp16(rc::float_to_fp16_bits(from_bits(0x7f800001u))));  // payload only in dropped bits
  EXPECT_EQ(rc::float_to_fp16_bits(from_bits(0xffc00000u)) & 0x8000u, 0x8000u);
}

// Bit for bit against CUDA's own __float2bfloat16_rn / __float2half_rn (their host versions) on
// random float patterns of every exponent, the special values, and every tie region.
TEST(Conversions, AgreeWithCudaHostIntrinsics) {
  std::mt19937_64 rng(20240611);
  std::vector<float> xs = {0.0f, -0.0f, kInf, -kInf, 1.0f, 65504.0f, 65520.0f, 65519.0f,
                           std::numeric_limits<float>::max(), std::numeric_limits<float>::min(),
                           std::numeric_limits<float>::denorm_min(), std::ldexp(1.0f, -25), std::ldexp(3.0f, -25)};
  for (int n = 0; n < 2000000; ++n) {
    std::uint32_t u = static_cast<std::uint32_t>(rng());
    if (n % 2) u = (u & 0xffff0000u) | (n % 4 == 1 ? 0x8000u : 0x7fffu);  // bf16 ties and near-ties
    if (n % 3 == 0) u = (u & 0xffffe000u) | 0x1000u;                      // fp16 ties (for normals)
    xs.push_back(from_bits(u));
  }
  for (float x : xs) {
    if (std::isnan(x)) {
      ASSERT_TRUE(is_nan_bf16(rc::float_to_bf16_bits(x)));
      ASSERT_TRUE(is_nan_fp16(rc::float_to_fp16_bits(x)));
      continue;
    }
    ASSERT_EQ(rc::float_to_bf16_bits(x), cuda_bf16(x)) << std::hex << bits(x);
    ASSERT_EQ(rc::float_to_fp16_bits(x), cuda_fp16(x)) << std::hex << bits(x);
  }
}

TEST(Conversions, EncodeDecodeAndRoundTo) {
  const std::vector<float> x = {1.0f, -2.5f, 3.14159265f, 1e-3f, -65504.0f, 1e5f};
  for (rc::DType dt : {rc::DType::F32, rc::DType::F16, rc::DType::BF16}) {
    std::vector<unsigned char> bytes(x.size() * rc::element_bytes(dt));
    rc::encode(dt, x.data(), x.size(), bytes.data());
    std::vector<float> back(x.size());
    rc::decode_to_float(dt, bytes.data(), x.size(), back.data());
    for (std::size_t n = 0; n < x.size(); ++n) {
      EXPECT_EQ(back[n], rc::round_to(dt, x[n])) << rc::to_string(dt) << " " << n;
    }
  }
  EXPECT_EQ(rc::round_to(rc::DType::F32, 3.14159265f), 3.14159265f);
  EXPECT_EQ(rc::round_to(rc::DType::BF16, 3.14159265f), 3.140625f);
  EXPECT_EQ(rc::round_to(rc::DType::F16, 3.14159265f), 3.140625f);
  EXPECT_EQ(rc::round_to(rc::DType::F16, 1e5f), kInf);
  EXPECT_EQ(rc::round_to(rc::DType::BF16, 1e5f), 99840.0f);
}

// ---- names -----------------------------------------------------------------------------------

TEST(Names, RoundTripAndRejectUnknown) {
  for (rc::DType d : {rc::DType::F32, rc::DType::F16, rc::DType::BF16}) EXPECT_EQ(rc::parse_dtype(rc::to_string(d)), d);
  EXPECT_EQ(rc::parse_dtype("bfloat16"), rc::DType::BF16);
  EXPECT_EQ(rc::parse_dtype("float16"), rc::DType::F16);
  EXPECT_EQ(rc::parse_dtype("float32"), rc::DType::F32);
  EXPECT_EQ(rc::element_bytes(rc::DType::F32), 4u);
  EXPECT_EQ(rc::element_bytes(rc::DType::BF16), 2u);
  EXPECT_TRUE(ThrowsError([] { (void)rc::parse_dtype("fp8"); }, {"fp8", "fp32, fp16 or bf16"}));
  for (rc::Kernel k : {rc::Kernel::Auto, rc::Kernel::Simple, rc::Kernel::Tiled, rc::Kernel::TensorCore}) {
    EXPECT_EQ(rc::parse_kernel(rc::to_string(k)), k);
  }
  EXPECT_EQ(rc::to_string(rc::Kernel::TensorCore), "tensor-core");
  EXPECT_TRUE(ThrowsError([] { (void)rc::parse_kernel("flash"); }, {"flash", "tensor-core"}));
  EXPECT_TRUE(ThrowsError([] { (void)rc::parse_kernel("bad\nname"); }, {"bad\\x0aname"}));  // stays one line
}

// ---- CUDA errors -----------------------------------------------------------------------------

TEST(CudaErrors, BecomeOneLineErrorsNamingCallAndPlace) {
  EXPECT_NO_THROW(RINGATTN_CUDA_CHECK(cudaSuccess));
  const int line = __LINE__ + 1;
  const auto bad = [] { RINGATTN_CUDA_CHECK(cudaErrorMemoryAllocation); };
  EXPECT_TRUE(ThrowsError(bad, {"CUDA error in cudaErrorMemoryAllocation: ",
                                cudaGetErrorString(cudaErrorMemoryAllocation),
                                "(cuda_host_test.cpp:" + std::to_string(line) + ")"}));
  EXPECT_EQ(rc::cuda_error_message(static_cast<int>(cudaErrorInvalidValue), "cudaMemcpy(a,\nb)", "/x/y/z.cu", 7),
            std::string("CUDA error in cudaMemcpy(a, b): ") + cudaGetErrorString(cudaErrorInvalidValue) + " (z.cu:7)");
}

TEST(DeviceBuffer, EmptyBuffersNeedNoDevice) {
  rc::DeviceBuffer a;
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(a.data(), nullptr);
  rc::DeviceBuffer b(0);
  EXPECT_TRUE(b.empty());
  rc::DeviceBuffer c(std::move(b));
  EXPECT_TRUE(c.empty());
  a = std::move(c);
  EXPECT_EQ(a.bytes(), 0u);
  a.reset();
  EXPECT_EQ(a.as<float>(), nullptr);
}

TEST(DeviceBuffer, AllocatesOrSaysWhyNot) {
  std::string why;
  if (rc::device_count(&why) == 0) {
    EXPECT_FALSE(why.empty());
    // Without a device cudaMalloc fails, and the message says what was asked for.
    EXPECT_TRUE(ThrowsError([] { rc::DeviceBuffer buf(1024); }, {"CUDA error in cudaMalloc of 1024 bytes"}));
  } else {
    rc::DeviceBuffer buf(1024);
    EXPECT_NE(buf.data(), nullptr);
    EXPECT_EQ(buf.bytes(), 1024u);
    rc::DeviceBuffer moved(std::move(buf));
    EXPECT_TRUE(buf.empty());  // NOLINT(bugprone-use-after-move): moved-from state is specified
    EXPECT_EQ(moved.bytes(), 1024u);
  }
}

// ---- validation ------------------------------------------------------------------------------

// Fake device addresses: 256-byte aligned like cudaMalloc's, never dereferenced.
void* fake(std::uintptr_t n) { return reinterpret_cast<void*>(n * 0x10000); }

rc::ForwardArgs good_forward(std::int64_t head_dim = 64, rc::DType dtype = rc::DType::BF16) {
  rc::ForwardArgs a;
  a.shape = AttentionShape{2, 100, 300, 8, 2, head_dim};
  a.dtype = dtype;
  a.q = fake(1);
  a.k = fake(2);
  a.v = fake(3);
  a.out = fake(4);
  a.out_dtype = rc::DType::F32;
  a.lse = static_cast<float*>(fake(5));
  return a;
}

rc::BackwardArgs good_backward(std::int64_t head_dim = 64) {
  rc::BackwardArgs a;
  a.shape = AttentionShape{2, 100, 300, 8, 2, head_dim};
  a.dtype = rc::DType::BF16;
  a.q = fake(1);
  a.k = fake(2);
  a.v = fake(3);
  a.out = fake(4);
  a.dout = fake(5);
  a.lse = static_cast<float*>(fake(6));
  a.delta = static_cast<float*>(fake(7));
  a.dq = static_cast<float*>(fake(8));
  a.dk = static_cast<float*>(fake(9));
  a.dv = static_cast<float*>(fake(10));
  return a;
}

struct ForwardBad {
  const char* name;
  void (*edit)(rc::ForwardArgs&);
  rc::Kernel kernel;
  std::vector<std::string> expect;
  bool decode_says_the_same = true;  // with Kernel::Auto: decode() refuses it with the same words
};

void PrintTo(const ForwardBad& c, std::ostream* os) { *os << c.name; }

class ForwardRejects : public ::testing::TestWithParam<ForwardBad> {};

TEST_P(ForwardRejects, BeforeAnyCudaCall) {
  rc::ForwardArgs a = good_forward();
  GetParam().edit(a);
  EXPECT_TRUE(ThrowsError([&] { rc::forward(a, GetParam().kernel); }, GetParam().expect));
  std::string why;
  EXPECT_FALSE(rc::supports(a, GetParam().kernel, &why));
  for (const auto& part : GetParam().expect) EXPECT_NE(why.find(part), std::string::npos) << why;
  if (GetParam().kernel == rc::Kernel::Auto) {  // decode validates the same arguments
    EXPECT_TRUE(ThrowsError([&] { rc::decode(a, 4, fake(20)); },
                            GetParam().decode_says_the_same ? GetParam().expect : std::vector<std::string>{}));
  }
}

using K = rc::Kernel;
INSTANTIATE_TEST_SUITE_P(
    Args, ForwardRejects,
    ::testing::Values(
        ForwardBad{"NullQ", [](rc::ForwardArgs& a) { a.q = nullptr; }, K::Auto, {"Q is a null pointer"}},
        ForwardBad{"NullK", [](rc::ForwardArgs& a) { a.k = nullptr; }, K::Auto, {"K is a null pointer"}},
        ForwardBad{"NullV", [](rc::ForwardArgs& a) { a.v = nullptr; }, K::Simple, {"V is a null pointer"}},
        ForwardBad{"NullOut", [](rc::ForwardArgs& a) { a.out = nullptr; }, K::Auto, {"O (out) is a null pointer"}},
        ForwardBad{"MisalignedQ", [](rc::ForwardArgs& a) { a.q = static_cast<const char*>(a.q) + 1; }, K::Auto,
                   {"Q is not aligned to its 2-byte elements"}},
        ForwardBad{"MisalignedOutF32", [](rc::ForwardArgs& a) { a.out = static_cast<char*>(a.out) + 2; }, K::Auto,
                   {"O (out) is not aligned to its 4-byte elements"}},
        ForwardBad{"MisalignedLse", [](rc::ForwardArgs& a) { a.lse = reinterpret_cast<float*>(reinterpret_cast<char*>(a.lse) + 2); },
                   K::Auto, {"LSE is not aligned"}},
        ForwardBad{"HeadsNotMultiple", [](rc::ForwardArgs& a) { a.shape.heads_kv = 3; }, K::Auto,
                   {"K and V have 3 heads but Q has 8", "multiple of H_kv"}},
        ForwardBad{"ZeroLength", [](rc::ForwardArgs& a) { a.shape.seq_kv = 0; }, K::Auto, {"S_kv", "at least 1"}},
        ForwardBad{"NegativeBatch", [](rc::ForwardArgs& a) { a.shape.batch = -1; }, K::Simple, {"B (batch)", "at least 1"}},
        ForwardBad{"HugeLength", [](rc::ForwardArgs& a) { a.shape.seq_q = std::int64_t{1} << 31; }, K::Auto,
                   {"S_q is 2147483648", "below 2^31"}},
        ForwardBad{"HugeTensor", [](rc::ForwardArgs& a) { a.shape.seq_kv = a.shape.heads_kv = a.shape.heads_q = std::int64_t{1} << 30; },
                   K::Auto, {"too large"}},
        ForwardBad{"UnknownDtype", [](rc::ForwardArgs& a) { a.dtype = static_cast<rc::DType>(7); }, K::Auto,
                   {"dtype is not a known dtype (7)"}},
        ForwardBad{"OutDtypeMismatch", [](rc::ForwardArgs& a) { a.out_dtype = rc::DType::F16; }, K::Auto,
                   {"out_dtype fp16 does not go with bf16 inputs"}},
        ForwardBad{"QStrideZero", [](rc::ForwardArgs& a) { a.mask.q_pos = Positions{0, 0}; }, K::Auto,
                   {"q_pos stride is 0", "at least 1"}},
        ForwardBad{"KStrideNegative", [](rc::ForwardArgs& a) { a.mask.k_pos = Positions{5, -2}; }, K::Simple,
                   {"k_pos stride is -2"}},
        ForwardBad{"PositionsOverflow", [](rc::ForwardArgs& a) { a.mask.k_pos = Positions{0, std::int64_t{1} << 60}; },
                   K::Auto, {"k_pos", "+-2^62"}},
        ForwardBad{"OffsetOverflow", [](rc::ForwardArgs& a) { a.mask.q_pos = Positions{INT64_MIN, 1}; }, K::Auto,
                   {"q_pos", "+-2^62"}},
        ForwardBad{"NanScale", [](rc::ForwardArgs& a) { a.mask.scale = std::nanf(""); }, K::Auto, {"scale"}},
        ForwardBad{"ZeroScale", [](rc::ForwardArgs& a) { a.mask.scale = 0.0f; }, K::Auto, {"scale must be a finite positive"}},
        ForwardBad{"NegativeScale", [](rc::ForwardArgs& a) { a.mask.scale = -1.0f; }, K::Auto, {"scale"}},
        ForwardBad{"TiledOddHeadDim", [](rc::ForwardArgs& a) { a.shape.head_dim = 20; }, K::Tiled,
                   {"tiled kernel takes D a multiple of 8", "D=20"}},
        ForwardBad{"TiledBigHeadDim", [](rc::ForwardArgs& a) { a.shape.head_dim = 264; }, K::Tiled, {"at most 256", "D=264"}},
        ForwardBad{"TiledMisalignedK", [](rc::ForwardArgs& a) { a.k = static_cast<const char*>(a.k) + 2; }, K::Tiled,
                   {"16-byte aligned"}},
        ForwardBad{"SimpleBigHeadDim", [](rc::ForwardArgs& a) { a.shape.head_dim = 300; }, K::Simple,
                   {"simple kernel takes D <= 256", "D=300"}},
        ForwardBad{"AutoBigHeadDim", [](rc::ForwardArgs& a) { a.shape.head_dim = 512; }, K::Auto,
                   {"no kernel runs D=512"}, false},
        ForwardBad{"UnknownKernel", [](rc::ForwardArgs&) {}, static_cast<K>(9), {"unknown kernel"}}),
    [](const ::testing::TestParamInfo<ForwardBad>& i) { return std::string(i.param.name); });

TEST(ForwardAccepts, ValidArgumentsAreSupportedWithoutCudaCalls) {
  for (K k : {K::Auto, K::Simple, K::Tiled}) {
    std::string why;
    EXPECT_TRUE(rc::supports(good_forward(), k, &why)) << rc::to_string(k) << ": " << why;
  }
  rc::ForwardArgs a = good_forward(20);
  EXPECT_TRUE(rc::supports(a, K::Simple));
  EXPECT_FALSE(rc::supports(a, K::Tiled));
  EXPECT_TRUE(rc::supports(a, K::Auto));
  a = good_forward(64, rc::DType::F32);
  a.lse = nullptr;  // LSE is optional
  EXPECT_TRUE(rc::supports(a, K::Tiled));
  a.out_dtype = rc::DType::F32;
  EXPECT_TRUE(rc::supports(a, K::Simple));
  a = good_forward(64, rc::DType::F16);
  a.out_dtype = rc::DType::F16;
  EXPECT_TRUE(rc::supports(a, K::Simple));
}

TEST(BackwardRejects, EachBadArgumentBeforeAnyCudaCall) {
  struct Case {
    void (*edit)(rc::BackwardArgs&);
    std::vector<std::string> expect;
  };
  const std::vector<Case> cases = {
      {[](rc::BackwardArgs& a) { a.q = nullptr; }, {"backward: Q is a null pointer"}},
      {[](rc::BackwardArgs& a) { a.dout = nullptr; }, {"dO (dout) is a null pointer"}},
      {[](rc::BackwardArgs& a) { a.out = nullptr; }, {"O (out, needed to compute D"}},
      {[](rc::BackwardArgs& a) { a.lse = nullptr; }, {"LSE is a null pointer"}},
      {[](rc::BackwardArgs& a) { a.delta = nullptr; }, {"delta", "null pointer"}},
      {[](rc::BackwardArgs& a) { a.dq = nullptr; }, {"dQ is a null pointer"}},
      {[](rc::BackwardArgs& a) { a.dk = nullptr; }, {"dK is a null pointer"}},
      {[](rc::BackwardArgs& a) { a.dv = reinterpret_cast<float*>(reinterpret_cast<char*>(a.dv) + 1); }, {"dV is not aligned"}},
      {[](rc::BackwardArgs& a) { a.v = static_cast<const char*>(a.v) + 1; }, {"V is not aligned"}},
      {[](rc::BackwardArgs& a) { a.shape.heads_q = 5; }, {"multiple of H_kv"}},
      {[](rc::BackwardArgs& a) { a.shape.head_dim = 0; }, {"D (head dim)", "at least 1"}},
      {[](rc::BackwardArgs& a) { a.shape.head_dim = 320; }, {"simple backward takes D <= 256", "D=320"}},
      {[](rc::BackwardArgs& a) { a.dtype = static_cast<rc::DType>(-1); }, {"dtype is not a known dtype"}},
      {[](rc::BackwardArgs& a) { a.mask.q_pos = Positions{0, 0}; }, {"q_pos stride is 0"}},
      {[](rc::BackwardArgs& a) { a.mask.scale = INFINITY; }, {"scale"}},
  };
  for (std::size_t n = 0; n < cases.size(); ++n) {
    rc::BackwardArgs a = good_backward();
    cases[n].edit(a);
    EXPECT_TRUE(ThrowsError([&] { rc::backward(a); }, cases[n].expect)) << "case " << n;
  }
  EXPECT_TRUE(ThrowsError([] { rc::backward(good_backward(), K::Tiled); }, {"backward: the tiled kernel has no backward"}));
  // The tensor-core backward refuses what it does not take before it asks the device anything.
  EXPECT_TRUE(ThrowsError([] { rc::backward(good_backward(96), K::TensorCore); },
                          {"backward: tensor-core backward: supports head dims 64 and 128, not 96"}));
  rc::BackwardArgs f32 = good_backward();
  f32.dtype = rc::DType::F32;
  EXPECT_TRUE(ThrowsError([&] { rc::backward(f32, K::TensorCore); }, {"takes bf16 or fp16 inputs, not fp32"}));
  EXPECT_TRUE(ThrowsError([] { rc::backward(good_backward(), static_cast<K>(9)); }, {"unknown kernel (9)"}));
  // O is needed only to compute D: with compute_delta off it may be null.
  rc::BackwardArgs a = good_backward();
  a.out = nullptr;
  a.compute_delta = false;
  EXPECT_NO_THROW((void)rd::resolve_backward(a));
}

TEST(MergeRejects, EachBadArgumentBeforeAnyCudaCall) {
  auto* p = static_cast<float*>(fake(1));
  auto* l = static_cast<float*>(fake(2));
  auto* misaligned = reinterpret_cast<float*>(reinterpret_cast<char*>(p) + 2);
  EXPECT_TRUE(ThrowsError([&] { rc::merge(nullptr, l, p, l, 1, 2, 3, 4); }, {"merge: out_acc is a null pointer"}));
  EXPECT_TRUE(ThrowsError([&] { rc::merge(p, nullptr, p, l, 1, 2, 3, 4); }, {"lse_acc is a null pointer"}));
  EXPECT_TRUE(ThrowsError([&] { rc::merge(p, l, nullptr, l, 1, 2, 3, 4); }, {"out_part is a null pointer"}));
  EXPECT_TRUE(ThrowsError([&] { rc::merge(p, l, p, nullptr, 1, 2, 3, 4); }, {"lse_part is a null pointer"}));
  EXPECT_TRUE(ThrowsError([&] { rc::merge(p, l, misaligned, l, 1, 2, 3, 4); }, {"out_part is not aligned"}));
  EXPECT_TRUE(ThrowsError([&] { rc::merge(p, l, p, l, 1, 0, 3, 4); }, {"seq is 0", "at least 1"}));
  EXPECT_TRUE(ThrowsError([&] { rc::merge(p, l, p, l, 1, 2, -3, 4); }, {"heads is -3"}));
  EXPECT_TRUE(ThrowsError([&] { rc::merge(p, l, p, l, std::int64_t{1} << 31, 2, 3, 4); }, {"below 2^31"}));
}

TEST(DecodeRejects, EachBadArgumentBeforeAnyCudaCall) {
  const rc::ForwardArgs a = good_forward();
  EXPECT_TRUE(ThrowsError([&] { rc::decode(a, 0, fake(20)); }, {"decode: splits must be at least 1, got 0"}));
  EXPECT_TRUE(ThrowsError([&] { rc::decode(a, -3, fake(20)); }, {"splits"}));
  EXPECT_TRUE(ThrowsError([&] { rc::decode(a, 4, nullptr); }, {"workspace is a null pointer", "decode_workspace_bytes"}));
  EXPECT_TRUE(ThrowsError([&] { rc::decode(a, 4, static_cast<char*>(fake(20)) + 4); }, {"16-byte aligned"}));
  EXPECT_TRUE(ThrowsError([&] { rc::decode(good_forward(272), 4, fake(20)); }, {"decode kernel takes D <= 256", "D=272"}));
  rc::ForwardArgs nullq = a;
  nullq.q = nullptr;
  EXPECT_TRUE(ThrowsError([&] { rc::decode(nullq, 4, fake(20)); }, {"decode: Q is a null pointer"}));
  EXPECT_TRUE(ThrowsError([&] { (void)rc::decode_workspace_bytes(a.shape, 0); }, {"splits must be at least 1"}));
  EXPECT_TRUE(ThrowsError([] { (void)rc::decode_workspace_bytes(AttentionShape{1, 1, 0, 1, 1, 8}, 2); }, {"S_kv", "at least 1"}));
  EXPECT_TRUE(ThrowsError([&] { (void)rc::decode_default_splits(a.shape, 0); }, {"multiprocessors must be at least 1"}));
  EXPECT_TRUE(ThrowsError([] { (void)rc::decode_default_splits(AttentionShape{1, 1, 8, 6, 4, 8}, 132); }, {"multiple of H_kv"}));
}

// ---- resolved defaults and kernel choice ------------------------------------------------------

TEST(Resolve, DefaultsFollowTheReference) {
  const rc::ForwardArgs args = good_forward();
  const rd::FwdLaunch a = rd::resolve_forward(args);
  EXPECT_EQ(a.q_offset, 300 - 100);  // queries aligned to the end of the keys
  EXPECT_EQ(a.q_stride, 1);
  EXPECT_EQ(a.k_offset, 0);
  EXPECT_EQ(a.k_stride, 1);
  EXPECT_EQ(a.scale, static_cast<float>(1.0 / std::sqrt(64.0)));
  EXPECT_EQ(a.batch, 2);
  EXPECT_EQ(a.seq_q, 100);
  EXPECT_EQ(a.seq_kv, 300);
  EXPECT_EQ(a.heads_q, 8);
  EXPECT_EQ(a.heads_kv, 2);
  EXPECT_EQ(a.head_dim, 64);
  EXPECT_EQ(a.q, args.q);
  EXPECT_EQ(a.out, args.out);
  EXPECT_EQ(a.lse, args.lse);
  EXPECT_EQ(a.dtype, rc::DType::BF16);
  EXPECT_EQ(a.out_dtype, rc::DType::F32);
  EXPECT_FALSE(a.causal);
  // S_q > S_kv: the offset is negative, and the first S_q - S_kv queries see no key.
  rc::ForwardArgs longer = good_forward();
  longer.shape.seq_q = 500;
  EXPECT_EQ(rd::resolve_forward(longer).q_offset, -200);
}

TEST(Resolve, GivenValuesAreKept) {
  rc::ForwardArgs args = good_forward(40);
  args.mask = {true, Positions{96, 4}, Positions{3, 4}, 0.25f};
  const rd::FwdLaunch a = rd::resolve_forward(args);
  EXPECT_TRUE(a.causal);
  EXPECT_EQ(a.q_offset, 96);
  EXPECT_EQ(a.q_stride, 4);
  EXPECT_EQ(a.k_offset, 3);
  EXPECT_EQ(a.k_stride, 4);
  EXPECT_EQ(a.scale, 0.25f);
  EXPECT_EQ(rd::resolve_forward(good_forward(40)).scale, static_cast<float>(1.0 / std::sqrt(40.0)));

  rc::BackwardArgs b = good_backward();
  b.accumulate = true;
  b.compute_delta = false;
  const rd::BwdLaunch bl = rd::resolve_backward(b);
  EXPECT_EQ(bl.q_offset, 200);
  EXPECT_EQ(bl.k_offset, 0);
  EXPECT_EQ(bl.scale, 0.125f);
  EXPECT_TRUE(bl.accumulate);
  EXPECT_FALSE(bl.compute_delta);
  EXPECT_EQ(bl.delta, b.delta);
  b.mask = {true, Positions{-5, 2}, Positions{7, 3}, 2.0f};
  const rd::BwdLaunch bm = rd::resolve_backward(b);
  EXPECT_EQ(bm.q_offset, -5);
  EXPECT_EQ(bm.q_stride, 2);
  EXPECT_EQ(bm.k_offset, 7);
  EXPECT_EQ(bm.k_stride, 3);
  EXPECT_EQ(bm.scale, 2.0f);
  EXPECT_TRUE(bm.causal);
}

TEST(KernelChoice, AutoPicksTheFastestThatSupportsTheCall) {
  rd::FwdLaunch a = rd::resolve_forward(good_forward(64));
  // Once forward_tc.cu is wired in it takes this call where it runs (it also asks the device).
  const K fast = rd::kernel_supports(a, K::TensorCore, nullptr) ? K::TensorCore : K::Tiled;
  EXPECT_EQ(rd::choose_forward_kernel(a, K::Auto), fast);
  EXPECT_EQ(rd::choose_forward_kernel(a, K::Simple), K::Simple);
  EXPECT_EQ(rd::choose_forward_kernel(a, K::Tiled), K::Tiled);
  a = rd::resolve_forward(good_forward(72));  // a multiple of 8 the tensor-core kernel does not take
  EXPECT_EQ(rd::choose_forward_kernel(a, K::Auto), K::Tiled);
  a = rd::resolve_forward(good_forward(20));
  EXPECT_EQ(rd::choose_forward_kernel(a, K::Auto), K::Simple);
  rc::ForwardArgs f32 = good_forward(64, rc::DType::F32);
  EXPECT_EQ(rd::choose_forward_kernel(rd::resolve_forward(f32), K::Auto), K::Tiled);  // no fp32 tensor cores
  rc::ForwardArgs mis = good_forward(64);
  mis.v = static_cast<const char*>(mis.v) + 8;  // element-aligned, not 16-byte aligned
  EXPECT_EQ(rd::choose_forward_kernel(rd::resolve_forward(mis), K::Auto), K::Simple);
  EXPECT_TRUE(ThrowsError([&] { (void)rd::choose_forward_kernel(rd::resolve_forward(good_forward(300)), K::Auto); },
                          {"forward: no kernel runs D=300"}));
}

// The backward's choice: Auto takes the tensor-core kernel where it supports the call (bf16/fp16,
// D = 64 or 128, aligned buffers, a device that runs it), else the simple one; the tensor-core
// kernel's refusals name the reason, and the argument checks come before the device query, so
// each reason below shows on any machine.
TEST(BackwardKernelChoice, AutoPicksTensorCoresWhereSupportedElseSimple) {
  auto tc_why = [](const rc::BackwardArgs& args) {
    std::string why;
    EXPECT_FALSE(rd::backward_tensor_core_supports(rd::resolve_backward(args), &why));
    EXPECT_TRUE(ringattn::test::OneLine(why));
    return why;
  };
  const rd::BwdLaunch a = rd::resolve_backward(good_backward(64));
  const K fast = rd::backward_kernel_supports(a, K::TensorCore, nullptr) ? K::TensorCore : K::Simple;
  EXPECT_EQ(rd::choose_backward_kernel(a, K::Auto), fast);
  EXPECT_EQ(rd::choose_backward_kernel(a, K::Simple), K::Simple);
  EXPECT_EQ(rd::choose_backward_kernel(rd::resolve_backward(good_backward(128)), K::Auto),
            rd::backward_kernel_supports(rd::resolve_backward(good_backward(128)), K::TensorCore, nullptr) ? K::TensorCore
                                                                                                       : K::Simple);
  std::string why;
  if (fast == K::Simple) {  // no usable device here: the reason is the device query
    EXPECT_FALSE(rd::backward_kernel_supports(a, K::TensorCore, &why));
    EXPECT_NE(why.find("tensor-core backward"), std::string::npos) << why;
    EXPECT_TRUE(ThrowsError([&] { (void)rd::choose_backward_kernel(a, K::TensorCore); }, {"backward: tensor-core backward"}));
  }

  rc::BackwardArgs b = good_backward(96);
  EXPECT_EQ(rd::choose_backward_kernel(rd::resolve_backward(b), K::Auto), K::Simple);
  EXPECT_NE(tc_why(b).find("supports head dims 64 and 128, not 96"), std::string::npos);
  b = good_backward();
  b.dtype = rc::DType::F16;
  b.shape.head_dim = 32;
  EXPECT_EQ(rd::choose_backward_kernel(rd::resolve_backward(b), K::Auto), K::Simple);
  b = good_backward();
  b.dtype = rc::DType::F32;
  EXPECT_EQ(rd::choose_backward_kernel(rd::resolve_backward(b), K::Auto), K::Simple);  // no fp32 tensor cores
  EXPECT_NE(tc_why(b).find("takes bf16 or fp16 inputs, not fp32"), std::string::npos);
  b = good_backward();
  b.dout = static_cast<const char*>(b.dout) + 8;  // element-aligned, not 16-byte aligned
  EXPECT_EQ(rd::choose_backward_kernel(rd::resolve_backward(b), K::Auto), K::Simple);
  EXPECT_NE(tc_why(b).find("16-byte aligned"), std::string::npos);
  b = good_backward();
  b.out = static_cast<const char*>(b.out) + 2;  // O is read (for D) only with compute_delta
  EXPECT_NE(tc_why(b).find("16-byte aligned"), std::string::npos);
  b.compute_delta = false;
  why.clear();
  (void)rd::backward_tensor_core_supports(rd::resolve_backward(b), &why);
  EXPECT_EQ(why.find("aligned"), std::string::npos) << why;
  b = good_backward();
  b.dk = reinterpret_cast<float*>(reinterpret_cast<char*>(b.dk) + 4);  // float-aligned, not 8-byte
  EXPECT_EQ(rd::choose_backward_kernel(rd::resolve_backward(b), K::Auto), K::Simple);
  EXPECT_NE(tc_why(b).find("dK and dV must be 8-byte aligned"), std::string::npos);

  EXPECT_TRUE(ThrowsError([&] { (void)rd::choose_backward_kernel(a, K::Tiled); }, {"tiled kernel has no backward"}));
  EXPECT_TRUE(ThrowsError([] { (void)rd::choose_backward_kernel(rd::resolve_backward(good_backward(300)), K::Auto); },
                          {"backward: no backward kernel runs D=300", "simple backward takes D <= 256"}));
  EXPECT_TRUE(ThrowsError([] { (void)rd::choose_backward_kernel(rd::resolve_backward(good_backward(300)), K::Simple); },
                          {"backward: the simple backward takes D <= 256, got D=300"}));
}

TEST(BackwardKernelChoice, TensorCoreSharedMemoryFitsTheTargets) {
  EXPECT_EQ(rd::backward_tensor_core_smem_bytes(64), 58368);    // 57 KiB
  EXPECT_EQ(rd::backward_tensor_core_smem_bytes(128), 107520);  // 105 KiB: under sm_80's 163 KiB opt-in
  EXPECT_EQ(rd::backward_tensor_core_smem_bytes(96), 0);
}

// ---- launch shapes ---------------------------------------------------------------------------

TEST(LaunchShapes, HeadDimBuckets) {
  EXPECT_EQ(rd::head_dim_bucket(1), 32);
  EXPECT_EQ(rd::head_dim_bucket(32), 32);
  EXPECT_EQ(rd::head_dim_bucket(33), 64);
  EXPECT_EQ(rd::head_dim_bucket(64), 64);
  EXPECT_EQ(rd::head_dim_bucket(96), 128);
  EXPECT_EQ(rd::head_dim_bucket(128), 128);
  EXPECT_EQ(rd::head_dim_bucket(200), 256);
  EXPECT_EQ(rd::head_dim_bucket(256), 256);
  EXPECT_EQ(rd::head_dim_bucket(257), 0);
}

TEST(LaunchShapes, RowKernels) {
  const rd::Launch1D a = rd::row_launch(1000, "t");
  EXPECT_EQ(a.threads, rd::kRowThreads);
  EXPECT_EQ(a.blocks, 8);  // ceil(1000 / 128)
  EXPECT_EQ(rd::row_launch(128, "t").blocks, 1);
  EXPECT_EQ(rd::row_launch(129, "t").blocks, 2);
  EXPECT_TRUE(ThrowsError([] { (void)rd::row_launch(std::int64_t{1} << 40, "forward"); }, {"forward", "too many"}));
  const rd::Launch1D w = rd::warp_row_launch(9, "t");
  EXPECT_EQ(w.threads, 32 * rd::kWarpRowsPerBlock);
  EXPECT_EQ(w.blocks, 3);  // 4 rows per block
}

TEST(LaunchShapes, TiledTilesFitTheHardware) {
  for (int max_d : {32, 64, 128, 256}) {
    const rd::TiledTile t = rd::tiled_tile(max_d);
    EXPECT_EQ(t.max_d / t.group, 32) << max_d;  // each thread owns a 32-dim slice
    EXPECT_EQ(32 % t.group, 0) << max_d;         // a row's threads sit in one warp (shuffles)
    EXPECT_EQ(t.threads, t.br * t.group);
    EXPECT_LE(t.threads, 256);
    EXPECT_EQ(t.threads % 32, 0);
    EXPECT_LE(2 * t.bc * t.max_d * 4, 48 * 1024) << "static shared memory limit";
  }
  static_assert(rd::tiled_tile(64).br == 64 && rd::tiled_tile(64).bc == 32 && rd::tiled_tile(64).group == 2);
  static_assert(rd::tiled_tile(256).br == 32 && rd::tiled_tile(256).bc == 16 && rd::tiled_tile(256).threads == 256);

  rc::ForwardArgs args = good_forward(64);
  args.shape = AttentionShape{2, 1000, 1000, 8, 2, 64};
  const rd::TiledLaunch t = rd::tiled_launch(rd::resolve_forward(args));
  EXPECT_EQ(t.tile.max_d, 64);
  EXPECT_EQ(t.q_tiles, 16);  // ceil(1000 / 64)
  EXPECT_EQ(t.blocks, 16 * 8 * 2);
  EXPECT_EQ(t.tile.threads, 128);
  EXPECT_EQ(t.smem_bytes, 2u * 32 * 64 * 4);
  args.shape.head_dim = 200;
  const rd::TiledLaunch u = rd::tiled_launch(rd::resolve_forward(args));
  EXPECT_EQ(u.tile.max_d, 256);
  EXPECT_EQ(u.q_tiles, 32);  // ceil(1000 / 32)
  EXPECT_EQ(u.smem_bytes, 2u * 16 * 256 * 4);
}

TEST(LaunchShapes, DecodeWorkspaceAndGrids) {
  const AttentionShape s{2, 3, 1000, 8, 2, 40};
  const rd::DecodeLayout l = rd::decode_layout(s, 5);
  EXPECT_EQ(l.splits, 5);
  EXPECT_EQ(l.partial_rows, 5 * 2 * 8 * 3);
  const std::size_t o_bytes = 240u * 40u * 4u;  // 38400 = 150 * 256
  EXPECT_EQ(l.lse_offset, o_bytes);
  EXPECT_EQ(l.bytes, o_bytes + 240u * 4u);
  EXPECT_EQ(rc::decode_workspace_bytes(s, 5), l.bytes);
  EXPECT_EQ(l.partial.blocks, 5 * 8 * 2);
  EXPECT_EQ(l.partial.threads, 32 * rd::kDecodeWarps);
  EXPECT_EQ(l.combine.blocks, 12);  // 48 rows, 4 per block
  // The LSE partials start 256-byte aligned whatever O's size.
  const rd::DecodeLayout odd = rd::decode_layout(AttentionShape{1, 1, 10, 1, 1, 3}, 3);
  EXPECT_EQ(odd.lse_offset, 256u);
  EXPECT_EQ(odd.bytes, 256u + 3u * 4u);
  // More splits than keys is allowed (empty splits).
  EXPECT_EQ(rd::decode_layout(AttentionShape{1, 1, 10, 1, 1, 8}, 64).splits, 64);
}

TEST(LaunchShapes, DecodeDefaultSplits) {
  // Fill 132 SMs with (b, h, split) blocks, but keep every split at >= 256 keys.
  EXPECT_EQ(rc::decode_default_splits(AttentionShape{1, 1, 4096, 8, 8, 128}, 132), 16);  // 17 wanted, 16 by length
  EXPECT_EQ(rc::decode_default_splits(AttentionShape{1, 1, 1 << 20, 32, 8, 128}, 132), 5);  // ceil(132 / 32)
  EXPECT_EQ(rc::decode_default_splits(AttentionShape{1, 1, 1 << 20, 8, 8, 128}, 132), 17);
  EXPECT_EQ(rc::decode_default_splits(AttentionShape{64, 1, 1 << 20, 32, 8, 128}, 132), 1);  // batch fills it
  EXPECT_EQ(rc::decode_default_splits(AttentionShape{1, 1, 100, 1, 1, 64}, 132), 1);  // short cache
  EXPECT_EQ(rc::decode_default_splits(AttentionShape{1, 4, 1000, 2, 1, 64}, 108), 3);  // 1000 / 256
}

// ---- index math against brute force ---------------------------------------------------------

TEST(TileMath, VisibleKeysAndQueriesMatchBruteForce) {
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<std::int64_t> off(-40, 40), stride(1, 5), len(1, 30);
  for (int trial = 0; trial < 3000; ++trial) {
    const Positions q{off(rng), stride(rng)}, k{off(rng), stride(rng)};
    const std::int64_t sq = len(rng), skv = len(rng);
    for (std::int64_t i = 0; i < sq; ++i) {
      std::int64_t end = 0;  // visible keys are a prefix: count them, and check they are one
      for (std::int64_t j = 0; j < skv; ++j) {
        if (k.at(j) <= q.at(i)) {
          ASSERT_EQ(end, j) << "visible keys are not a prefix";
          ++end;
        }
      }
      ASSERT_EQ(rd::visible_key_end(q.at(i), k.offset, k.stride, skv), end)
          << "q " << q.at(i) << " k " << k.offset << "+" << k.stride << "j";
    }
    for (std::int64_t j = 0; j < skv; ++j) {
      std::int64_t first = sq;
      for (std::int64_t i = sq - 1; i >= 0; --i) {
        if (k.at(j) <= q.at(i)) first = i;
      }
      ASSERT_EQ(rd::first_visible_query(k.at(j), q.offset, q.stride, sq), first);
    }
  }
}

TEST(TileMath, SplitsPartitionTheKeysLikeTheReference) {
  for (std::int64_t skv : {1, 7, 256, 1000}) {
    for (std::int64_t splits : {1, 3, 7, 16, 1001}) {
      std::int64_t covered = 0, smallest = skv, largest = 0;
      for (std::int64_t s = 0; s < splits; ++s) {
        const std::int64_t b = rd::split_begin(s, skv, splits), e = rd::split_begin(s + 1, skv, splits);
        ASSERT_EQ(b, covered);
        ASSERT_GE(e, b);
        covered = e;
        smallest = std::min(smallest, e - b);
        largest = std::max(largest, e - b);
      }
      EXPECT_EQ(covered, skv);
      EXPECT_LE(largest - smallest, 1) << "balanced";
    }
  }
  EXPECT_EQ(rd::ceil_div(7, 2), 4);
  EXPECT_EQ(rd::ceil_div(8, 2), 4);
}

}  // namespace
