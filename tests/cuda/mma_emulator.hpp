// A warp emulated on the CPU, for the tests of the tensor-core kernels' tile math
// (mma_emulation_test.cpp: the forward; mma_backward_emulation_test.cpp: the backward).
//
// What this file is for: forward_tc.cu and backward_tc.cu are mma.sync + ldmatrix + cp.async, and
// a wrong fragment index there shows on a GPU only as wrong numbers. Here a warp is emulated: 32
// lanes' registers in arrays, and each warp-collective instruction (mma.m16n8k16,
// ldmatrix.x4{.trans}, shfl.xor) implemented as the PTX ISA text describes it. The emulator's
// layouts are written out again from the PTX ISA ("Matrix Fragments for mma.m16n8k16 with
// floating point type", "Warp-level matrix load instruction: ldmatrix"), independently of
// cuda/src/mma_fragments.hpp, so the tests compare two transcriptions of the manual. HostWarp is
// the warp policy the kernels' own templates (forward_tc_tile.hpp, backward_tc_tile.hpp) run on;
// inside an emulated CTA (cta_emulator.hpp) it reports every memory access it makes.
//
// What it leaves to a GPU: that the hardware matches the manual, real bf16/fp16 conversions,
// ex2.approx, atomics, register allocation, speed.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../../cuda/src/backward_tc_tile.hpp"
#include "../../cuda/src/forward_tc_tile.hpp"
#include "../../cuda/src/mma_fragments.hpp"

namespace ringattn::test {

namespace mma = ::ringattn::cuda::detail::mma;
namespace tc = ::ringattn::cuda::detail::tc;

// ---- 16-bit floats on the host, round to nearest even ----------------------------------------

inline std::uint32_t bits_of(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float float_of(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

struct Bf16Codec {
  static constexpr const char* kName = "bf16";
  static std::uint16_t encode(float f) {
    const std::uint32_t u = bits_of(f);
    if (std::isnan(f)) return static_cast<std::uint16_t>((u >> 16) | 0x40);  // stays a NaN
    return static_cast<std::uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  }
  static float decode(std::uint16_t h) { return float_of(static_cast<std::uint32_t>(h) << 16); }
};

struct F16Codec {
  static constexpr const char* kName = "fp16";
  static std::uint16_t encode(float f) {
    const std::uint32_t x = bits_of(f);
    const std::uint32_t sign = (x >> 16) & 0x8000u;
    const std::uint32_t mag = x & 0x7FFFFFFFu;
    if (mag > 0x7F800000u) return static_cast<std::uint16_t>(sign | 0x7E00u);     // NaN
    if (mag >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);    // rounds to inf
    if (mag < 0x38800000u) {                                                      // < 2^-14: subnormal
      const float scaled = float_of(mag) * 16777216.0f;                          // units of 2^-24, exact
      return static_cast<std::uint16_t>(sign | static_cast<std::uint32_t>(std::nearbyint(scaled)));
    }
    std::uint32_t h = ((((mag >> 23) - 127u + 15u) << 10) | ((mag & 0x7FFFFFu) >> 13));
    const std::uint32_t rest = mag & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is right
    return static_cast<std::uint16_t>(sign | h);
  }
  static float decode(std::uint16_t h) {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    const std::uint32_t e = (h >> 10) & 0x1Fu;
    const std::uint32_t m = h & 0x3FFu;
    if (e == 0) return (sign ? -1.0f : 1.0f) * static_cast<float>(m) * 5.9604644775390625e-8f;  // m 2^-24
    if (e == 31) return float_of(sign | 0x7F800000u | (m << 13));
    return float_of(sign | ((e - 15u + 127u) << 23) | (m << 13));
  }
};

template <class Elem>
using CodecOf = std::conditional_t<std::is_same_v<Elem, tc::Bf16>, Bf16Codec, F16Codec>;

// ---- a warp's registers: one value per lane ----------------------------------------------------

/// 32 lanes of a T. Arithmetic is lane-wise and a plain T broadcasts, so the kernel's SIMT code
/// (forward_tc_tile.hpp) reads the same with W::F = Lanes<float> as with W::F = float.
template <class T>
struct Lanes {
  std::array<T, 32> v{};
  Lanes() = default;
  Lanes(T x) { v.fill(x); }  // NOLINT: implicit on purpose, a scalar is every lane's value
  T& operator[](int i) { return v[static_cast<std::size_t>(i)]; }
  const T& operator[](int i) const { return v[static_cast<std::size_t>(i)]; }
};

template <class X>
struct IsLanes : std::false_type {};
template <class T>
struct IsLanes<Lanes<T>> : std::true_type {};
template <class X>
constexpr const auto& lane_value(const X& x, int i) {
  if constexpr (IsLanes<X>::value) {
    return x[i];
  } else {
    return x;
  }
}

#define RINGATTN_LANES_BINARY(op)                                                             \
  template <class A, class B,                                                                 \
            std::enable_if_t<IsLanes<A>::value || IsLanes<B>::value, int> = 0>                \
  auto operator op(const A& a, const B& b) {                                                  \
    using R = std::decay_t<decltype(lane_value(a, 0) op lane_value(b, 0))>;                   \
    Lanes<R> r;                                                                               \
    for (int i = 0; i < 32; ++i) r[i] = lane_value(a, i) op lane_value(b, i);                 \
    return r;                                                                                 \
  }
RINGATTN_LANES_BINARY(+)
RINGATTN_LANES_BINARY(-)
RINGATTN_LANES_BINARY(*)
RINGATTN_LANES_BINARY(/)
RINGATTN_LANES_BINARY(&)
RINGATTN_LANES_BINARY(^)
RINGATTN_LANES_BINARY(|)
RINGATTN_LANES_BINARY(>>)
RINGATTN_LANES_BINARY(<<)
RINGATTN_LANES_BINARY(==)
RINGATTN_LANES_BINARY(>)
RINGATTN_LANES_BINARY(<)
RINGATTN_LANES_BINARY(>=)
RINGATTN_LANES_BINARY(<=)
#undef RINGATTN_LANES_BINARY

// ---- the hardware model, written from the PTX ISA text -----------------------------------------
// Deliberately in the manual's own words (not mma_fragments.hpp's bit tricks): the tests compare
// the two.

namespace ptx {

// "Matrix Fragments for mma.m16n8k16 with floating point type", multiplicand A (.f16/.bf16):
//   row = groupID for ai where 0 <= i < 2 || 4 <= i < 6, groupID + 8 otherwise;
//   col = threadID_in_group * 2 + (i & 0x1) for i < 4, + 8 for i >= 4.
inline mma::Coord a_elem(int laneid, int i) {
  const int groupID = laneid >> 2;
  const int threadID_in_group = laneid % 4;
  const int row = ((0 <= i && i < 2) || (4 <= i && i < 6)) ? groupID : groupID + 8;
  const int col = i < 4 ? (threadID_in_group * 2) + (i & 0x1) : (threadID_in_group * 2) + (i & 0x1) + 8;
  return {row, col};
}
// Multiplicand B: row = threadID_in_group * 2 + (i & 0x1) for bi where i < 2, + 8 for i >= 2;
// col = groupID.
inline mma::Coord b_elem(int laneid, int i) {
  const int groupID = laneid >> 2;
  const int threadID_in_group = laneid % 4;
  const int row = i < 2 ? (threadID_in_group * 2) + (i & 0x1) : (threadID_in_group * 2) + (i & 0x1) + 8;
  return {row, groupID};
}
// Accumulators C/D: row = groupID for ci where i < 2, groupID + 8 for i >= 2;
// col = threadID_in_group * 2 + (i & 0x1).
inline mma::Coord c_elem(int laneid, int i) {
  const int groupID = laneid >> 2;
  const int threadID_in_group = laneid % 4;
  return {i < 2 ? groupID : groupID + 8, (threadID_in_group * 2) + (i & 0x1)};
}

// "ldmatrix": for .x4, threads 0-7 give addr0-addr7 (rows of the first matrix), threads 8-15 the
// rows of the second, and so on. "Each thread in a warp loads fragments of a row, with thread 0
// receiving the first fragment in its register r" and "a group of four threads loads an entire
// row" (Figure "ldmatrix fragment layout for one 8x8 matrix with 16-bit elements"): thread t
// holds row t / 4, elements 2 (t % 4) and 2 (t % 4) + 1. With .trans the matrix is loaded in
// column-major format: thread t holds elements (2 (t % 4), t / 4) and (2 (t % 4) + 1, t / 4).
inline mma::Coord ldmatrix_elem(int thread, int half, bool trans) {
  const int r = thread / 4;
  const int c = 2 * (thread % 4) + half;
  return trans ? mma::Coord{c, r} : mma::Coord{r, c};
}

}  // namespace ptx

// ---- the emulated warp: the policy forward_tc_tile.hpp's and backward_tc_tile.hpp's templates run on

/// What an emulated warp reports of its memory accesses when it runs inside an emulated CTA
/// (cta_emulator.hpp checks them); lane -1 is a warp-collective access (ldmatrix).
class WarpHooks {
 public:
  virtual ~WarpHooks() = default;
  virtual void smem_read(const void* p, std::size_t bytes, int lane, const char* what) = 0;
  virtual void smem_write(const void* p, std::size_t bytes, int lane, const char* what) = 0;
  /// False when [p, p + bytes) is outside the test's buffers: the warp then skips the store.
  virtual bool global_write(const void* p, std::size_t bytes, const char* what) = 0;
};

template <class Elem>
class HostWarp {
 public:
  using F = Lanes<float>;
  using I = Lanes<int>;
  using U = Lanes<std::uint32_t>;
  using B = Lanes<bool>;
  using Codec = CodecOf<Elem>;

  /// @p arena, @p arena_elems: the CTA's shared memory, for bounds and bank checks.
  HostWarp(const std::uint16_t* arena, std::size_t arena_elems) : arena_(arena), arena_elems_(arena_elems) {}

  I lane() const {
    I l;
    for (int i = 0; i < 32; ++i) l[i] = i;
    return l;
  }
  F exp2(const F& x) const { return map(x, [](float a) { return std::exp2(a); }); }
  F log(const F& x) const { return map(x, [](float a) { return std::log(a); }); }
  F max(const F& a, const F& b) const {
    F r;
    for (int i = 0; i < 32; ++i) r[i] = std::fmax(a[i], b[i]);
    return r;
  }
  F select(const B& c, const F& a, const F& b) const {
    F r;
    for (int i = 0; i < 32; ++i) r[i] = c[i] ? a[i] : b[i];
    return r;
  }
  template <class Fn>
  I map_lanes(const I& x, Fn&& f) const {
    I r;
    for (int i = 0; i < 32; ++i) r[i] = f(x[i]);
    return r;
  }
  // shfl.sync.bfly: lane i reads lane i ^ mask.
  F shfl_xor(const F& x, int mask) const {
    F r;
    for (int i = 0; i < 32; ++i) r[i] = x[i ^ mask];
    return r;
  }
  U pack2(const F& lo, const F& hi) const {
    U r;
    for (int i = 0; i < 32; ++i) r[i] = pack(Codec::encode(lo[i]), Codec::encode(hi[i]));
    return r;
  }

  void ldsm_x4(U (&r)[4], const std::uint16_t* base, const I& offset) { ldmatrix(r, base, offset, false); }
  void ldsm_x4_trans(U (&r)[4], const std::uint16_t* base, const I& offset) {
    ldmatrix(r, base, offset, true);
  }

  // mma.m16n8k16.row.col.f32: gather A, B, C from the lanes by the manual's layout, multiply,
  // scatter D back. Products of bf16/fp16 values are exact in fp32; sums in fp32.
  void mma(F (&d)[4], const U (&a)[4], const U& b0, const U& b1) {
    ++mma_calls;
    float A[16][16];
    float Bm[16][8];
    float C[16][8];
    for (int l = 0; l < 32; ++l) {
      for (int i = 0; i < 8; ++i) {
        const mma::Coord e = ptx::a_elem(l, i);
        A[e.row][e.col] = Codec::decode(half_of(a[i / 2][l], i & 1));
      }
      for (int i = 0; i < 4; ++i) {
        const mma::Coord e = ptx::b_elem(l, i);
        Bm[e.row][e.col] = Codec::decode(half_of((i < 2 ? b0 : b1)[l], i & 1));
        const mma::Coord c = ptx::c_elem(l, i);
        C[c.row][c.col] = d[i][l];
      }
    }
    for (int l = 0; l < 32; ++l) {
      for (int i = 0; i < 4; ++i) {
        const mma::Coord c = ptx::c_elem(l, i);
        float acc = C[c.row][c.col];
        for (int k = 0; k < 16; ++k) acc += A[c.row][k] * Bm[k][c.col];
        d[i][l] = acc;
      }
    }
  }

  void store_o(const tc::OutBlock& o, const I& row, const I& col, const F& v0, const F& v1) {
    for (int l = 0; l < 32; ++l) {
      if (row[l] >= o.rows) continue;
      const std::int64_t at = row[l] * o.row_stride + col[l];
      if (o.out_f32) {
        float* p = static_cast<float*>(o.out) + at;
        if (hooks != nullptr && !hooks->global_write(p, 8, "O store")) continue;
        p[0] = v0[l];
        p[1] = v1[l];
      } else {
        std::uint16_t* p = static_cast<std::uint16_t*>(o.out) + at;
        if (hooks != nullptr && !hooks->global_write(p, 4, "O store")) continue;
        p[0] = Codec::encode(v0[l]);
        p[1] = Codec::encode(v1[l]);
      }
    }
  }
  void store_lse(const tc::OutBlock& o, const I& row, const B& writer, const F& v) {
    for (int l = 0; l < 32; ++l) {
      if (o.lse != nullptr && writer[l] && row[l] < o.rows) {
        if (hooks != nullptr && !hooks->global_write(o.lse + row[l], 4, "LSE store")) continue;
        o.lse[row[l]] = v[l];
      }
    }
  }

  // ---- what the backward adds (backward_tc_tile.hpp) ----
  // A lane's float of a query tile's LSE_i / D_i row (kBwdBr floats) in shared memory.
  F lds_f32(const float* base, const I& index) {
    F r;
    for (int l = 0; l < 32; ++l) {
      const auto* p = reinterpret_cast<const std::uint16_t*>(base + index[l]);
      const std::ptrdiff_t elem = p - arena_;
      if (index[l] < 0 || index[l] >= tc::kBwdBr || elem < 0 || static_cast<std::size_t>(elem) + 2 > arena_elems_) {
        ++bad_addresses;
        r[l] = std::numeric_limits<float>::quiet_NaN();
      } else {
        if (hooks != nullptr) hooks->smem_read(p, 4, l, "ld.shared.f32");
        std::memcpy(&r[l], p, sizeof(float));
      }
    }
    return r;
  }
  // st.shared.b32 by every lane: in the arena, 4-byte aligned, and one wavefront (32 distinct
  // banks) or it counts as a conflict.
  void sts_u32(std::uint16_t* base, const I& offset, const U& v) {
    unsigned banks = 0;
    bool conflict = false;
    for (int l = 0; l < 32; ++l) {
      const std::ptrdiff_t elem = (base + offset[l]) - arena_;
      if (elem < 0 || static_cast<std::size_t>(elem) + 2 > arena_elems_ || elem % 2 != 0) {
        ++bad_addresses;
        continue;
      }
      const unsigned bank = 1u << ((elem / 2) % 32);
      conflict = conflict || (banks & bank) != 0;
      banks |= bank;
      if (hooks != nullptr) hooks->smem_write(base + offset[l], 4, l, "st.shared.b32");
      base[offset[l]] = half_of(v[l], 0);
      base[offset[l] + 1] = half_of(v[l], 1);
    }
    ++store_phases;
    if (conflict) ++store_conflicts;
  }
  // atomicAdd of two adjacent dQ columns, lane by lane (fp32 adds, in lane order).
  void add_dq(const tc::DqBlock& o, const I& row, const I& col, const F& v0, const F& v1) {
    for (int l = 0; l < 32; ++l) {
      if (row[l] >= o.rows) continue;
      float* p = o.dq + row[l] * o.row_stride + col[l];
      if (hooks != nullptr && !hooks->global_write(p, 8, "dQ atomicAdd")) continue;
      p[0] += v0[l];
      p[1] += v1[l];
    }
  }
  void store_dkdv(const tc::DkvBlock& o, const I& row, const I& col, const F& k0, const F& k1, const F& v0,
                  const F& v1) {
    for (int l = 0; l < 32; ++l) {
      if (row[l] >= o.rows) continue;
      const std::int64_t at = row[l] * o.row_stride + col[l];
      if (hooks != nullptr) {
        const bool dk_ok = hooks->global_write(o.dk + at, 8, "dK store");
        const bool dv_ok = hooks->global_write(o.dv + at, 8, "dV store");
        if (!dk_ok || !dv_ok) continue;
      }
      o.dk[at] = o.accumulate ? o.dk[at] + k0[l] : k0[l];
      o.dk[at + 1] = o.accumulate ? o.dk[at + 1] + k1[l] : k1[l];
      o.dv[at] = o.accumulate ? o.dv[at] + v0[l] : v0[l];
      o.dv[at + 1] = o.accumulate ? o.dv[at + 1] + v1[l] : v1[l];
    }
  }

  static std::uint32_t pack(std::uint16_t lo, std::uint16_t hi) {
    return static_cast<std::uint32_t>(lo) | (static_cast<std::uint32_t>(hi) << 16);
  }
  static std::uint16_t half_of(std::uint32_t r, int h) { return static_cast<std::uint16_t>(r >> (16 * h)); }

  long mma_calls = 0;
  long ldsm_phases = 0;      ///< 8-address phases issued (4 per ldmatrix.x4)
  long bank_conflicts = 0;   ///< phases whose 8 rows did not hit 8 distinct bank groups
  long bad_addresses = 0;    ///< rows outside the arena or not 16-byte aligned
  long store_phases = 0;     ///< 32-bit shared stores issued (one per warp-wide sts_u32)
  long store_conflicts = 0;  ///< of those, stores whose 32 lanes did not hit 32 distinct banks
  WarpHooks* hooks = nullptr;  ///< set inside an emulated CTA (cta_emulator.hpp)

 private:
  template <class Fn>
  static F map(const F& x, Fn fn) {
    F r;
    for (int i = 0; i < 32; ++i) r[i] = fn(x[i]);
    return r;
  }

  void ldmatrix(U (&r)[4], const std::uint16_t* base, const I& offset, bool trans) {
    for (int m = 0; m < 4; ++m) {
      // Rows 0..7 of matrix m: addresses from threads 8m .. 8m+7.
      const std::uint16_t* row_ptr[8];
      unsigned groups = 0;
      bool conflict = false;
      for (int row = 0; row < 8; ++row) {
        const std::uint16_t* p = base + offset[8 * m + row];
        const std::ptrdiff_t elem = p - arena_;
        if (elem < 0 || static_cast<std::size_t>(elem) + 8 > arena_elems_ || (elem * 2) % 16 != 0) {
          ++bad_addresses;
          p = arena_;  // keep going on valid memory; the test fails on bad_addresses
        }
        row_ptr[row] = p;
        if (hooks != nullptr) hooks->smem_read(p, 16, -1, trans ? "ldmatrix.trans" : "ldmatrix");
        const unsigned g = 1u << mma::bank_group((p - arena_) * 2);
        conflict = conflict || (groups & g) != 0;
        groups |= g;
      }
      ++ldsm_phases;
      if (conflict) ++bank_conflicts;
      for (int t = 0; t < 32; ++t) {
        std::uint16_t h[2];
        for (int half = 0; half < 2; ++half) {
          const mma::Coord e = ptx::ldmatrix_elem(t, half, trans);
          h[half] = row_ptr[e.row][e.col];
        }
        r[m][t] = pack(h[0], h[1]);
      }
    }
  }

  const std::uint16_t* arena_;
  std::size_t arena_elems_;
};

}  // namespace ringattn::test
