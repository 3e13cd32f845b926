// The SIMT kernels of cuda/ (simple and tiled forward, simple backward, merge, split-KV decoding,
// the ring's element-wise kernels) run on the CPU by the SIMT emulator (simt_emulator.hpp), against
// the float64 reference, on the GPU test's cases and by its criteria (kernel_cases.hpp).
//
// What runs is the library's own code from the API down: resolve_forward / resolve_backward /
// check_* (validation and defaults), kernel_supports, the launch shapes (row_launch, tiled_launch,
// decode_layout, ...), the kernels' run_* launch sequences, and the kernels themselves, compiled
// here by the host compiler. Each case runs in three schedules (threads and blocks in ascending,
// descending and shuffled order); a kernel whose threads communicate without a barrier gets
// results that depend on the order, so every schedule must give the same bits, and none may have
// a finding (a barrier or warp operation not every thread takes part in, a deadlock). Outputs are
// poisoned with NaN first, and the binary is built with AddressSanitizer and UBSan
// (tests/CMakeLists.txt), so a read or write outside a buffer fails.
//
// What the emulation does not show (cuda_kernel_test on a GPU does): the GPU's rounding of expf and
// logf (the C library's here), real concurrency and memory ordering beyond barriers, speed.
#include "cuda/kernel_cases.hpp"
#include "ringattn/core/error.hpp"
#include "ringattn/cuda/attention.hpp"
#include "ringattn/cuda/device.hpp"
#include "ringattn/reference/attention.hpp"
// The emulator before the kernels: it maps the CUDA built-ins they use.
#include "cuda/simt_emulator.hpp"
#include "backward_simple.cuh"
#include "decode.cuh"
#include "forward_simple.cuh"
#include "forward_tiled.cuh"
#include "launch.hpp"
#include "merge.cuh"
#include "ring_kernels.cuh"

#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

namespace {

using namespace ringattn::test::kernel_cases;  // NOLINT(google-build-using-namespace): the shared oracle
namespace detail = ringattn::cuda::detail;
using ringattn::simt::Schedule;
using ringattn::simt::SimtLauncher;

constexpr Schedule kSchedules[] = {Schedule::Ascending, Schedule::Descending, Schedule::Shuffled};

// ---- host buffers standing in for device memory -------------------------------------------------

// A buffer of elements of one dtype, allocated at its exact size (AddressSanitizer catches an
// access one byte past it).
struct HostBuf {
  rc::DType dtype = rc::DType::F32;
  std::vector<std::byte> bytes;

  [[nodiscard]] void* data() { return bytes.data(); }
  [[nodiscard]] float* f32() { return reinterpret_cast<float*>(bytes.data()); }
  [[nodiscard]] std::int64_t count() const {
    return static_cast<std::int64_t>(bytes.size() / rc::element_bytes(dtype));
  }
};

HostBuf encoded(const std::vector<float>& values, rc::DType dt) {
  HostBuf b{dt, std::vector<std::byte>(values.size() * rc::element_bytes(dt))};
  rc::encode(dt, values.data(), values.size(), b.bytes.data());
  return b;
}

HostBuf host(const Tensor<double>& t, rc::DType dt) {
  std::vector<float> v(static_cast<std::size_t>(t.size()));
  for (std::int64_t n = 0; n < t.size(); ++n) v[static_cast<std::size_t>(n)] = static_cast<float>(t[n]);
  return encoded(v, dt);
}

HostBuf poisoned(rc::DType dt, std::int64_t count) {
  return encoded(std::vector<float>(static_cast<std::size_t>(count), std::numeric_limits<float>::quiet_NaN()), dt);
}

Tensor<double> tensor(const HostBuf& b, const std::vector<std::int64_t>& shape) {
  Tensor<double> t(shape);
  EXPECT_EQ(t.size(), b.count());
  std::vector<float> v(static_cast<std::size_t>(b.count()));
  rc::decode_to_float(b.dtype, b.bytes.data(), v.size(), v.data());
  for (std::int64_t n = 0; n < t.size(); ++n) t[n] = v[static_cast<std::size_t>(n)];
  return t;
}

// Runs @p launch_all (which launches through the given launcher into the buffers it returns) in
// every schedule: no findings, and the same bits from each. Returns the ascending run's buffers.
std::vector<HostBuf> run_in_every_schedule(const std::function<std::vector<HostBuf>(SimtLauncher&)>& launch_all,
                                           std::uint64_t seed) {
  std::vector<HostBuf> first;
  for (Schedule s : kSchedules) {
    SimtLauncher launch(s, seed);
    std::vector<HostBuf> got = launch_all(launch);
    EXPECT_TRUE(launch.findings().empty()) << to_string(s) << ": " << launch.findings().summary();
    EXPECT_FALSE(launch.launches().empty());
    if (s == Schedule::Ascending) {
      first = std::move(got);
      continue;
    }
    EXPECT_EQ(got.size(), first.size());
    for (std::size_t n = 0; n < std::min(got.size(), first.size()); ++n) {
      EXPECT_TRUE(got[n].bytes == first[n].bytes)
          << "output " << n << " differs between the ascending and " << to_string(s)
          << " schedules: threads communicate without a barrier between";
    }
  }
  return first;
}

ringattn::cuda::ForwardArgs forward_args(const ShapeCase& s, rc::DType dt, rc::DType out_dt, const Mask& m,
                                         bool explicit_mask) {
  rc::ForwardArgs args;
  args.shape = AttentionShape{s.batch, s.seq_q, s.seq_kv, s.heads_q, s.heads_kv, s.head_dim};
  args.dtype = dt;
  args.out_dtype = out_dt;
  if (explicit_mask) {
    args.mask = mask_args(m);
  } else {
    args.mask.causal = m.causal;  // the API's defaults are what is tested
  }
  return args;
}

// ---- forward ----------------------------------------------------------------------------------

class ForwardEmulated : public ::testing::TestWithParam<FwdParam> {};

TEST_P(ForwardEmulated, MatchesFloat64ReferenceInEverySchedule) {
  const auto& [kernel, dt, out_same, c] = GetParam();
  RINGATTN_SEEDED_RNG(rng);
  const ShapeCase& s = c.shape;
  const Tensor<double> q = random_in(s.q_shape(), dt, rng, c.q_mul);
  const Tensor<double> k = random_in(s.kv_shape(), dt, rng);
  const Tensor<double> v = random_in(s.kv_shape(), dt, rng);
  const Mask m = resolve_mask(s, c.causal, c.qpos, c.kpos);
  const rc::DType out_dt = out_same ? dt : rc::DType::F32;
  HostBuf hq = host(q, dt), hk = host(k, dt), hv = host(v, dt);

  rc::ForwardArgs args = forward_args(s, dt, out_dt, m, c.qpos || c.kpos);
  HostBuf probe_out = poisoned(out_dt, q.size()), probe_lse = poisoned(rc::DType::F32, s.batch * s.heads_q * s.seq_q);
  args.q = hq.data();
  args.k = hk.data();
  args.v = hv.data();
  args.out = probe_out.data();
  args.lse = probe_lse.f32();
  const detail::FwdLaunch resolved = detail::resolve_forward(args);
  std::string why;
  if (!detail::kernel_supports(resolved, kernel, &why)) {
    // Only the tiled kernel refuses a case here (D not a multiple of 8), and it must say so.
    EXPECT_EQ(kernel, rc::Kernel::Tiled) << why;
    EXPECT_NE(why.find("multiple of 8"), std::string::npos) << why;
    return;
  }

  const std::vector<HostBuf> outs = run_in_every_schedule(
      [&](SimtLauncher& launch) {
        std::vector<HostBuf> bufs{poisoned(out_dt, q.size()), poisoned(rc::DType::F32, s.batch * s.heads_q * s.seq_q)};
        detail::FwdLaunch a = resolved;
        a.out = bufs[0].data();
        a.lse = bufs[1].f32();
        if (kernel == rc::Kernel::Simple) {
          detail::run_forward_simple(a, launch);
        } else {
          detail::run_forward_tiled(a, launch);
        }
        return bufs;
      },
      rng_seed);

  const Tensor<double> out = tensor(outs[0], s.q_shape());
  const Tensor<double> lse = tensor(outs[1], s.lse_shape());
  const std::int64_t empty = expect_forward_matches(out, lse, q, k, v, m, dt, out_dt);
  if (has_empty_rows(c)) {
    EXPECT_GT(empty, 0) << "the case is meant to have rows that see no key";
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels, ForwardEmulated,
                         ::testing::ValuesIn(forward_params({rc::Kernel::Simple, rc::Kernel::Tiled})), forward_name);

// ---- backward (simple) ------------------------------------------------------------------------

class BackwardEmulated : public ::testing::TestWithParam<BwdParam> {};

// As the GPU test: the backward judged on exactly the inputs it is given (O in the input dtype
// and LSE from the simple forward, run here too), by the float32 tolerance; then again with
// compute_delta off (D read, not written).
TEST_P(BackwardEmulated, MatchesFloat64ReferenceInEverySchedule) {
  const auto& [dt, accumulate, c] = GetParam();
  RINGATTN_SEEDED_RNG(rng);
  const ShapeCase& s = c.shape;
  const Tensor<double> q = random_in(s.q_shape(), dt, rng, c.q_mul);
  const Tensor<double> k = random_in(s.kv_shape(), dt, rng);
  const Tensor<double> v = random_in(s.kv_shape(), dt, rng);
  const Tensor<double> dO = random_in(s.q_shape(), dt, rng);
  const Mask m = resolve_mask(s, c.causal, c.qpos, c.kpos);
  const std::int64_t lse_count = s.batch * s.heads_q * s.seq_q;
  HostBuf hq = host(q, dt), hk = host(k, dt), hv = host(v, dt), hdo = host(dO, dt);

  // The forward's O (in the input dtype, as training keeps it) and LSE.
  HostBuf ho = poisoned(dt, q.size()), hlse = poisoned(rc::DType::F32, lse_count);
  {
    rc::ForwardArgs f = forward_args(s, dt, dt, m, true);
    f.q = hq.data();
    f.k = hk.data();
    f.v = hv.data();
    f.out = ho.data();
    f.lse = hlse.f32();
    SimtLauncher launch;
    detail::run_forward_simple(detail::resolve_forward(f), launch);
    ASSERT_TRUE(launch.findings().empty()) << launch.findings().summary();
  }

  const Tensor<double> dq0 = accumulate ? random_in(s.q_shape(), rc::DType::F32, rng) : Tensor<double>(s.q_shape());
  const Tensor<double> dk0 = accumulate ? random_in(s.kv_shape(), rc::DType::F32, rng) : Tensor<double>(s.kv_shape());
  const Tensor<double> dv0 = accumulate ? random_in(s.kv_shape(), rc::DType::F32, rng) : Tensor<double>(s.kv_shape());
  rc::BackwardArgs b;
  b.shape = AttentionShape{s.batch, s.seq_q, s.seq_kv, s.heads_q, s.heads_kv, s.head_dim};
  b.dtype = dt;
  b.q = hq.data();
  b.k = hk.data();
  b.v = hv.data();
  b.out = ho.data();
  b.dout = hdo.data();
  b.lse = hlse.f32();
  HostBuf probe_delta = poisoned(rc::DType::F32, lse_count), probe_dq = poisoned(rc::DType::F32, q.size()),
          probe_dk = poisoned(rc::DType::F32, k.size()), probe_dv = poisoned(rc::DType::F32, v.size());
  b.delta = probe_delta.f32();
  b.dq = probe_dq.f32();
  b.dk = probe_dk.f32();
  b.dv = probe_dv.f32();
  b.accumulate = accumulate;
  b.mask = mask_args(m);
  const detail::BwdLaunch resolved = detail::resolve_backward(b);
  ASSERT_TRUE(detail::backward_kernel_supports(resolved, rc::Kernel::Simple, nullptr));

  // outputs: delta, dq, dk, dv
  const std::vector<HostBuf> outs = run_in_every_schedule(
      [&](SimtLauncher& launch) {
        std::vector<HostBuf> bufs{poisoned(rc::DType::F32, lse_count),
                                  accumulate ? host(dq0, rc::DType::F32) : poisoned(rc::DType::F32, q.size()),
                                  accumulate ? host(dk0, rc::DType::F32) : poisoned(rc::DType::F32, k.size()),
                                  accumulate ? host(dv0, rc::DType::F32) : poisoned(rc::DType::F32, v.size())};
        detail::BwdLaunch a = resolved;
        a.delta = bufs[0].f32();
        a.dq = bufs[1].f32();
        a.dk = bufs[2].f32();
        a.dv = bufs[3].f32();
        detail::run_backward_simple(a, launch);
        return bufs;
      },
      rng_seed);

  const Tensor<double> out = tensor(ho, s.q_shape());
  const Tensor<double> lse = tensor(hlse, s.lse_shape());
  expect_simple_backward_matches(q, k, v, dO, out, lse, m, {dq0, dk0, dv0}, tensor(outs[0], s.lse_shape()),
                                 {tensor(outs[1], s.q_shape()), tensor(outs[2], s.kv_shape()),
                                  tensor(outs[3], s.kv_shape())});

  // compute_delta = false reads D instead of writing it: the same gradients, D untouched.
  HostBuf delta_in = outs[0];
  HostBuf dq2 = poisoned(rc::DType::F32, q.size()), dk2 = poisoned(rc::DType::F32, k.size()),
          dv2 = poisoned(rc::DType::F32, v.size());
  b.compute_delta = false;
  b.out = nullptr;  // not needed without the pre-pass
  b.accumulate = false;
  b.delta = delta_in.f32();
  b.dq = dq2.f32();
  b.dk = dk2.f32();
  b.dv = dv2.f32();
  SimtLauncher launch;
  detail::run_backward_simple(detail::resolve_backward(b), launch);
  EXPECT_TRUE(launch.findings().empty()) << launch.findings().summary();
  EXPECT_EQ(launch.launches(), (std::vector<std::string>{"backward_dq_kernel", "backward_dkdv_kernel"}));
  EXPECT_TRUE(delta_in.bytes == outs[0].bytes) << "D was written without compute_delta";
  const Tensor<double> got_dq = tensor(dq2, s.q_shape()), got_dq1 = tensor(outs[1], s.q_shape());
  for (std::int64_t n = 0; n < got_dq.size(); ++n) {  // dq1 = dq0 + dQ (accumulate) or dQ
    ASSERT_NEAR(got_dq[n] + (accumulate ? dq0[n] : 0.0), got_dq1[n], 1e-5 * (1.0 + std::fabs(got_dq1[n]))) << n;
  }
}

INSTANTIATE_TEST_SUITE_P(Simple, BackwardEmulated, ::testing::ValuesIn(backward_params()), backward_name);

// ---- merge ------------------------------------------------------------------------------------

class MergeEmulated : public ::testing::TestWithParam<ShapeCase> {};

TEST_P(MergeEmulated, MatchesReferenceIncludingEmptySidesInEverySchedule) {
  RINGATTN_SEEDED_RNG(rng);
  const ShapeCase& s = GetParam();
  const std::int64_t B = s.batch, S = s.seq_q, H = s.heads_q, D = s.head_dim;
  const auto [oa, la, ob, lb] = merge_inputs(s, rng);
  HostBuf hob = host(ob, rc::DType::F32), hlb = host(lb, rc::DType::F32);
  const std::vector<HostBuf> outs = run_in_every_schedule(
      [&](SimtLauncher& launch) {
        std::vector<HostBuf> bufs{host(oa, rc::DType::F32), host(la, rc::DType::F32)};
        detail::check_merge(bufs[0].f32(), bufs[1].f32(), hob.f32(), hlb.f32(), B, S, H, D);
        detail::run_merge(bufs[0].f32(), bufs[1].f32(), hob.f32(), hlb.f32(), B, S, H, D, launch);
        return bufs;
      },
      rng_seed);
  Tensor<double> want_o = oa, want_l = la;
  ref::merge_into(want_o, want_l, ob, lb);
  const Tensor<double> got_o = tensor(outs[0], oa.shape());
  const Tensor<double> got_l = tensor(outs[1], la.shape());
  EXPECT_TRUE(ringattn::test::AllClose(got_l, want_l, 1e-6 * (1.0 + max_abs(want_l)), 1e-6));
  EXPECT_TRUE(ringattn::test::AllClose(got_o, want_o, 2e-6 * std::max(1.0, max_abs(want_o)), 2e-6));
  EXPECT_TRUE(ringattn::test::EmptyRowsExact(got_o, got_l, want_l));
  EXPECT_TRUE(ringattn::test::AllClose(tensor(hlb, lb.shape()), lb, 0.0, 0.0)) << "the partial is read-only";
}

INSTANTIATE_TEST_SUITE_P(Shapes, MergeEmulated, ::testing::ValuesIn(merge_shapes()),
                         [](const ::testing::TestParamInfo<ShapeCase>& i) { return to_string(i.param); });

// ---- decode -----------------------------------------------------------------------------------

class DecodeEmulated : public ::testing::TestWithParam<DecodeParam> {};

TEST_P(DecodeEmulated, MatchesFloat64ReferenceInEverySchedule) {
  const auto& [dt, out_same, splits_param, c] = GetParam();
  RINGATTN_SEEDED_RNG(rng);
  const ShapeCase& s = c.shape;
  const std::int64_t splits = splits_param > 0 ? splits_param : s.seq_kv + 5;  // more splits than keys
  const Tensor<double> q = random_in(s.q_shape(), dt, rng, c.q_mul);
  const Tensor<double> k = random_in(s.kv_shape(), dt, rng);
  const Tensor<double> v = random_in(s.kv_shape(), dt, rng);
  const Mask m = resolve_mask(s, c.causal, c.qpos, c.kpos);
  const rc::DType out_dt = out_same ? dt : rc::DType::F32;
  HostBuf hq = host(q, dt), hk = host(k, dt), hv = host(v, dt);
  rc::ForwardArgs args = forward_args(s, dt, out_dt, m, true);
  args.q = hq.data();
  args.k = hk.data();
  args.v = hv.data();
  HostBuf probe_out = poisoned(out_dt, q.size());
  args.out = probe_out.data();
  const detail::FwdLaunch resolved = detail::resolve_forward(args, "decode");
  const detail::DecodeLayout layout = detail::decode_layout(args.shape, splits);
  EXPECT_EQ(layout.bytes, rc::decode_workspace_bytes(args.shape, static_cast<int>(splits)));

  const std::vector<HostBuf> outs = run_in_every_schedule(
      [&](SimtLauncher& launch) {
        std::vector<HostBuf> bufs{poisoned(out_dt, q.size()), poisoned(rc::DType::F32, s.batch * s.heads_q * s.seq_q),
                                  poisoned(rc::DType::F32, static_cast<std::int64_t>(layout.bytes / 4))};
        detail::FwdLaunch a = resolved;
        a.out = bufs[0].data();
        a.lse = bufs[1].f32();
        detail::check_decode(a, static_cast<int>(splits), bufs[2].data());
        detail::run_decode(a, layout, bufs[2].data(), launch);
        EXPECT_EQ(launch.launches(), (std::vector<std::string>{"decode_partial_kernel", "decode_combine_kernel"}));
        return bufs;
      },
      rng_seed);

  const Tensor<double> out = tensor(outs[0], s.q_shape());
  const Tensor<double> lse = tensor(outs[1], s.lse_shape());
  expect_forward_matches(out, lse, q, k, v, m, dt, out_dt);
}

INSTANTIATE_TEST_SUITE_P(Splits, DecodeEmulated, ::testing::ValuesIn(decode_params()), decode_name);

// ---- the ring's element-wise kernels ------------------------------------------------------------

// fill and add at sizes around the block size (256 threads) and over several blocks, convert with
// row pitches into each dtype, and the D pre-pass (a warp per row) against the reference's.
// (The grid-stride loops take more than one turn only past 65535 blocks of 256: not reached.)
TEST(RingKernelsEmulated, FillAddConvertAndDeltaMatchTheHost) {
  RINGATTN_SEEDED_RNG(rng);
  std::normal_distribution<float> normal;
  for (std::size_t n : {std::size_t{1}, std::size_t{255}, std::size_t{256}, std::size_t{257}, std::size_t{5000}}) {
    std::vector<float> dst(n + 1, 7.0f), src(n);  // dst[n]: a canary past the end
    for (float& x : src) x = normal(rng);
    SimtLauncher launch(Schedule::Shuffled, n);
    detail::run_ring_fill(dst.data(), n, -2.5f, launch);
    for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(dst[i], -2.5f) << n << " " << i;
    detail::run_ring_add(dst.data(), src.data(), n, launch);
    for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(dst[i], -2.5f + src[i]) << n << " " << i;
    EXPECT_EQ(dst[n], 7.0f);
    EXPECT_TRUE(launch.findings().empty()) << launch.findings().summary();
  }
  {
    SimtLauncher launch;
    detail::run_ring_fill(nullptr, 0, 1.0f, launch);  // n = 0 launches nothing
    detail::run_ring_add(nullptr, nullptr, 0, launch);
    EXPECT_TRUE(launch.launches().empty());
  }
  // convert: a 37 x 19 block out of a pitch-23 float32 array into a pitch-21 one of each dtype.
  const std::size_t rows = 37, width = 19, src_pitch = 23, dst_pitch = 21;
  std::vector<float> src(rows * src_pitch);
  for (float& x : src) x = normal(rng);
  for (rc::DType dt : {rc::DType::F32, rc::DType::F16, rc::DType::BF16}) {
    HostBuf dst = encoded(std::vector<float>(rows * dst_pitch, 99.0f), dt);
    SimtLauncher launch(Schedule::Descending);
    detail::run_ring_convert(src.data(), src_pitch, dst.data(), dt, dst_pitch, width, rows, launch);
    EXPECT_TRUE(launch.findings().empty()) << launch.findings().summary();
    std::vector<float> got(rows * dst_pitch);
    rc::decode_to_float(dt, dst.bytes.data(), got.size(), got.data());
    for (std::size_t r = 0; r < rows; ++r) {
      for (std::size_t x = 0; x < dst_pitch; ++x) {
        const float want = x < width ? rc::round_to(dt, src[r * src_pitch + x]) : 99.0f;
        ASSERT_EQ(got[r * dst_pitch + x], want) << rc::to_string(dt) << " row " << r << " col " << x;
      }
    }
  }
  // delta: D (B, H, S) = rowsum(dO * O) of (B, S, H, D) tensors, against the reference's.
  for (rc::DType dt : {rc::DType::F32, rc::DType::F16, rc::DType::BF16}) {
    for (const ShapeCase& s : {ShapeCase{1, 1, 1, 1, 1, 1}, ShapeCase{2, 37, 37, 3, 3, 40}, ShapeCase{1, 5, 5, 2, 2, 256}}) {
      const Tensor<double> o = random_in(s.q_shape(), dt, rng), dO = random_in(s.q_shape(), dt, rng);
      HostBuf ho = host(o, dt), hdo = host(dO, dt);
      const std::vector<HostBuf> outs = run_in_every_schedule(
          [&](SimtLauncher& launch) {
            std::vector<HostBuf> bufs{poisoned(rc::DType::F32, s.batch * s.heads_q * s.seq_q)};
            detail::run_ring_delta(ho.data(), hdo.data(), dt, bufs[0].f32(), s.batch, s.seq_q, s.heads_q, s.head_dim,
                                   launch);
            return bufs;
          },
          rng_seed);
      const Tensor<double> want = ref::softmax_delta(o, dO);
      const auto tol = fp32_tolerance(max_abs(want), 0.0);
      EXPECT_TRUE(ringattn::test::AllClose(tensor(outs[0], s.lse_shape()), want, tol.atol, tol.rtol))
          << rc::to_string(dt) << " " << to_string(s);
    }
  }
}

}  // namespace
