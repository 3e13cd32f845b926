// The CUDA kernels against the float64 reference (label gpu; every test skips, with the reason,
// when no CUDA device is visible). How a kernel is judged, the reference, the naive low-precision
// baselines and the case tables: kernel_cases.hpp (shared with the CPU emulation of the SIMT
// kernels, simt_emulation_test.cpp).
// Outputs are poisoned with NaN first (an element no thread wrote fails), rows that see no key
// must be exactly O = 0, LSE = -inf, and inputs are fresh random values per test (seed printed on
// failure), with large logits, GQA, odd lengths, S_q != S_kv, offsets and strides.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common/check.hpp"
#include "cuda/kernel_cases.hpp"
#include "ringattn/core/error.hpp"
#include "ringattn/core/schedule.hpp"
#include "ringattn/core/tensor.hpp"
#include "ringattn/cuda/attention.hpp"
#include "ringattn/cuda/device.hpp"
#include "ringattn/reference/attention.hpp"

namespace {

using namespace ringattn::test::kernel_cases;  // NOLINT(google-build-using-namespace): the shared oracle
namespace rc = ringattn::cuda;
namespace ref = ringattn::ref;
using ringattn::AttentionShape;
using ringattn::Positions;
using ringattn::Tensor;
using ringattn::test::ShapeCase;

// ---- fixtures and helpers ---------------------------------------------------------------------

bool have_gpu(std::string* why) { return rc::device_count(why) > 0; }

#define RINGATTN_SKIP_WITHOUT_GPU()                                 \
  do {                                                              \
    std::string why_;                                               \
    if (!have_gpu(&why_)) GTEST_SKIP() << "no CUDA device: " << why_; \
  } while (0)

rc::DeviceBuffer to_device(const Tensor<double>& t, rc::DType dt) { return rc::upload(dt, t.values()); }

// A buffer of @p count elements of @p dt, every one NaN.
rc::DeviceBuffer poisoned(rc::DType dt, std::int64_t count) {
  return rc::upload(dt, std::vector<float>(static_cast<std::size_t>(count), std::numeric_limits<float>::quiet_NaN()));
}

Tensor<double> from_device(const rc::DeviceBuffer& buf, rc::DType dt, const std::vector<std::int64_t>& shape) {
  Tensor<double> t(shape);
  const std::vector<float> v = rc::download(dt, buf.data(), static_cast<std::size_t>(t.size()));
  for (std::int64_t n = 0; n < t.size(); ++n) t[n] = v[static_cast<std::size_t>(n)];
  return t;
}

// ---- forward --------------------------------------------------------------------------------

class Forward : public ::testing::TestWithParam<FwdParam> {};

TEST_P(Forward, MatchesFloat64Reference) {
  RINGATTN_SKIP_WITHOUT_GPU();
  const auto& [kernel, dt, out_same, c] = GetParam();
  RINGATTN_SEEDED_RNG(rng);
  const ShapeCase& s = c.shape;
  const Tensor<double> q = random_in(s.q_shape(), dt, rng, c.q_mul);
  const Tensor<double> k = random_in(s.kv_shape(), dt, rng);
  const Tensor<double> v = random_in(s.kv_shape(), dt, rng);
  const Mask m = resolve_mask(s, c.causal, c.qpos, c.kpos);
  const rc::DType out_dt = out_same ? dt : rc::DType::F32;

  const rc::DeviceBuffer dq = to_device(q, dt), dk = to_device(k, dt), dv = to_device(v, dt);
  const rc::DeviceBuffer dout = poisoned(out_dt, q.size());
  const rc::DeviceBuffer dlse = poisoned(rc::DType::F32, s.batch * s.heads_q * s.seq_q);
  rc::ForwardArgs args;
  args.shape = AttentionShape{s.batch, s.seq_q, s.seq_kv, s.heads_q, s.heads_kv, s.head_dim};
  args.dtype = dt;
  args.q = dq.data();
  args.k = dk.data();
  args.v = dv.data();
  args.out = dout.data();
  args.out_dtype = out_dt;
  args.lse = dlse.as<float>();
  // Half the cases leave the mask at its defaults, so the API's resolution is what is tested.
  if (c.qpos || c.kpos) {
    args.mask = mask_args(m);
  } else {
    args.mask.causal = c.causal;
  }

  std::string why;
  if (!rc::supports(args, kernel, &why)) {
    if (kernel == rc::Kernel::TensorCore) {
      // The tensor-core forward takes bf16/fp16 with D = 64 or 128 only; it must refuse the rest.
      EXPECT_TRUE(dt == rc::DType::F32 || (s.head_dim != 64 && s.head_dim != 128)) << why;
      EXPECT_THROW(rc::forward(args, kernel), ringattn::Error);
      return;
    }
    // Otherwise only the tiled kernel refuses a case here (D not a multiple of 8), and it must say so.
    EXPECT_EQ(kernel, rc::Kernel::Tiled) << why;
    EXPECT_NE(why.find("multiple of 8"), std::string::npos) << why;
    EXPECT_THROW(rc::forward(args, kernel), ringattn::Error);
    return;
  }
  rc::forward(args, kernel);
  RINGATTN_CUDA_CHECK(cudaDeviceSynchronize());

  const Tensor<double> out = from_device(dout, out_dt, s.q_shape());
  const Tensor<double> lse = from_device(dlse, rc::DType::F32, s.lse_shape());
  const std::int64_t empty = expect_forward_matches(out, lse, q, k, v, m, dt, out_dt);
  if (has_empty_rows(c)) {
    EXPECT_GT(empty, 0) << "the case is meant to have rows that see no key";
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels, Forward,
                         ::testing::ValuesIn(forward_params({rc::Kernel::Simple, rc::Kernel::Tiled,
                                                             rc::Kernel::TensorCore, rc::Kernel::Auto})),
                         forward_name);

TEST(ForwardStream, RunsOnTheGivenStream) {
  RINGATTN_SKIP_WITHOUT_GPU();
  RINGATTN_SEEDED_RNG(rng);
  const ShapeCase s{1, 70, 90, 4, 2, 64};
  const rc::DType dt = rc::DType::BF16;
  const Tensor<double> q = random_in(s.q_shape(), dt, rng), k = random_in(s.kv_shape(), dt, rng),
                       v = random_in(s.kv_shape(), dt, rng);
  const rc::DeviceBuffer dq = to_device(q, dt), dk = to_device(k, dt), dv = to_device(v, dt);
  cudaStream_t stream = nullptr;
  RINGATTN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  for (rc::Kernel kernel : {rc::Kernel::Simple, rc::Kernel::Tiled}) {
    const rc::DeviceBuffer dout = poisoned(rc::DType::F32, q.size());
    rc::ForwardArgs args;
    args.shape = AttentionShape{s.batch, s.seq_q, s.seq_kv, s.heads_q, s.heads_kv, s.head_dim};
    args.dtype = dt;
    args.q = dq.data();
    args.k = dk.data();
    args.v = dv.data();
    args.out = dout.data();
    args.mask.causal = true;
    rc::forward(args, kernel, stream);
    RINGATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
    const Tensor<double> out = from_device(dout, rc::DType::F32, s.q_shape());
    const Mask m = resolve_mask(s, true, {}, {});
    const auto want = reference_forward(q, k, v, m);
    const auto tol = fp32_tolerance(max_abs(want.out), max_logit(q, k, m.scale));
    EXPECT_TRUE(ringattn::test::AllClose(out, want.out, tol.atol, tol.rtol)) << rc::to_string(kernel);
  }
  RINGATTN_CUDA_CHECK(cudaStreamDestroy(stream));
}

// ---- backward -------------------------------------------------------------------------------

class Backward : public ::testing::TestWithParam<BwdParam> {};

// The backward is judged on exactly the inputs it is given (Q, K, V, dO, the forward's O in the
// input dtype and its LSE): the float64 reference recomputes P from the same LSE and D from the
// same O, so the float32 tolerance applies (stricter than flash-attention's criterion).
TEST_P(Backward, MatchesFloat64ReferenceOnTheSameInputs) {
  RINGATTN_SKIP_WITHOUT_GPU();
  const auto& [dt, accumulate, c] = GetParam();
  RINGATTN_SEEDED_RNG(rng);
  const ShapeCase& s = c.shape;
  const Tensor<double> q = random_in(s.q_shape(), dt, rng, c.q_mul);
  const Tensor<double> k = random_in(s.kv_shape(), dt, rng);
  const Tensor<double> v = random_in(s.kv_shape(), dt, rng);
  const Tensor<double> dO = random_in(s.q_shape(), dt, rng);
  const Mask m = resolve_mask(s, c.causal, c.qpos, c.kpos);
  const AttentionShape shape{s.batch, s.seq_q, s.seq_kv, s.heads_q, s.heads_kv, s.head_dim};

  const rc::DeviceBuffer d_q = to_device(q, dt), d_k = to_device(k, dt), d_v = to_device(v, dt),
                         d_do = to_device(dO, dt);
  const rc::DeviceBuffer d_o = poisoned(dt, q.size());
  const rc::DeviceBuffer d_lse = poisoned(rc::DType::F32, s.batch * s.heads_q * s.seq_q);
  rc::ForwardArgs f;
  f.shape = shape;
  f.dtype = dt;
  f.q = d_q.data();
  f.k = d_k.data();
  f.v = d_v.data();
  f.out = d_o.data();
  f.out_dtype = dt;  // what training keeps for the backward
  f.lse = d_lse.as<float>();
  f.mask = mask_args(m);
  rc::forward(f, rc::Kernel::Simple);

  // What the gradients start as: NaN (all must be written) or random values to add to.
  const Tensor<double> dq0 = accumulate ? random_in(s.q_shape(), rc::DType::F32, rng) : Tensor<double>(s.q_shape());
  const Tensor<double> dk0 = accumulate ? random_in(s.kv_shape(), rc::DType::F32, rng) : Tensor<double>(s.kv_shape());
  const Tensor<double> dv0 = accumulate ? random_in(s.kv_shape(), rc::DType::F32, rng) : Tensor<double>(s.kv_shape());
  const rc::DeviceBuffer d_dq = accumulate ? to_device(dq0, rc::DType::F32) : poisoned(rc::DType::F32, q.size());
  const rc::DeviceBuffer d_dk = accumulate ? to_device(dk0, rc::DType::F32) : poisoned(rc::DType::F32, k.size());
  const rc::DeviceBuffer d_dv = accumulate ? to_device(dv0, rc::DType::F32) : poisoned(rc::DType::F32, v.size());
  const rc::DeviceBuffer d_delta = poisoned(rc::DType::F32, s.batch * s.heads_q * s.seq_q);
  rc::BackwardArgs b;
  b.shape = shape;
  b.dtype = dt;
  b.q = d_q.data();
  b.k = d_k.data();
  b.v = d_v.data();
  b.out = d_o.data();
  b.dout = d_do.data();
  b.lse = d_lse.as<float>();
  b.delta = d_delta.as<float>();
  b.dq = d_dq.as<float>();
  b.dk = d_dk.as<float>();
  b.dv = d_dv.as<float>();
  b.accumulate = accumulate;
  b.mask = mask_args(m);
  rc::backward(b, rc::Kernel::Simple);  // the exact-comparison path: Auto would take tensor cores
  RINGATTN_CUDA_CHECK(cudaDeviceSynchronize());

  const Tensor<double> out = from_device(d_o, dt, s.q_shape());
  const Tensor<double> lse = from_device(d_lse, rc::DType::F32, s.lse_shape());
  const Tensor<double> delta = from_device(d_delta, rc::DType::F32, s.lse_shape());
  expect_simple_backward_matches(q, k, v, dO, out, lse, m, {dq0, dk0, dv0}, delta,
                                 {from_device(d_dq, rc::DType::F32, s.q_shape()),
                                  from_device(d_dk, rc::DType::F32, s.kv_shape()),
                                  from_device(d_dv, rc::DType::F32, s.kv_shape())});

  // compute_delta = false reads D instead of writing it: same gradients, D untouched.
  const rc::DeviceBuffer d_dq2 = poisoned(rc::DType::F32, q.size());
  const rc::DeviceBuffer d_dk2 = poisoned(rc::DType::F32, k.size());
  const rc::DeviceBuffer d_dv2 = poisoned(rc::DType::F32, v.size());
  b.compute_delta = false;
  b.out = nullptr;  // not needed without the pre-pass
  b.accumulate = false;
  b.dq = d_dq2.as<float>();
  b.dk = d_dk2.as<float>();
  b.dv = d_dv2.as<float>();
  rc::backward(b, rc::Kernel::Simple);
  RINGATTN_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_TRUE(ringattn::test::AllClose(from_device(d_delta, rc::DType::F32, s.lse_shape()), delta, 0.0, 0.0));
  const Tensor<double> got_dq = from_device(d_dq2, rc::DType::F32, s.q_shape());
  const Tensor<double> got_dq1 = from_device(d_dq, rc::DType::F32, s.q_shape());
  for (std::int64_t n = 0; n < got_dq.size(); ++n) {  // dq1 = dq0 + dQ (accumulate) or dQ
    ASSERT_NEAR(got_dq[n] + (accumulate ? dq0[n] : 0.0), got_dq1[n], 1e-5 * (1.0 + std::fabs(got_dq1[n]))) << n;
  }
}

INSTANTIATE_TEST_SUITE_P(Simple, Backward, ::testing::ValuesIn(backward_params()), backward_name);

// ---- backward on tensor cores ------------------------------------------------------------------

using TcBwdParam = std::tuple<rc::DType, bool /*accumulate*/, FwdCase>;

class BackwardTensorCore : public ::testing::TestWithParam<TcBwdParam> {};

// The tensor-core backward (bf16/fp16, D = 64, 128) on the inputs a training step gives it: O in
// the input dtype and its LSE from the forward, D from its own pre-pass. Judged against the
// float64 reference on the same inputs by GradCriterion; D by the fp32 tolerance; then again with
// compute_delta off (D read, not written: dK, dV bitwise the same, dQ up to the order of its
// atomic adds).
TEST_P(BackwardTensorCore, MatchesFloat64ReferenceByTheFlashCriterion) {
  RINGATTN_SKIP_WITHOUT_GPU();
  const auto& [dt, accumulate, c] = GetParam();
  RINGATTN_SEEDED_RNG(rng);
  const ShapeCase& s = c.shape;
  const Tensor<double> q = random_in(s.q_shape(), dt, rng, c.q_mul);
  const Tensor<double> k = random_in(s.kv_shape(), dt, rng);
  const Tensor<double> v = random_in(s.kv_shape(), dt, rng);
  const Tensor<double> dO = random_in(s.q_shape(), dt, rng);
  const Mask m = resolve_mask(s, c.causal, c.qpos, c.kpos);
  const AttentionShape shape{s.batch, s.seq_q, s.seq_kv, s.heads_q, s.heads_kv, s.head_dim};

  const rc::DeviceBuffer d_q = to_device(q, dt), d_k = to_device(k, dt), d_v = to_device(v, dt),
                         d_do = to_device(dO, dt);
  const rc::DeviceBuffer d_o = poisoned(dt, q.size());
  const rc::DeviceBuffer d_lse = poisoned(rc::DType::F32, s.batch * s.heads_q * s.seq_q);
  rc::ForwardArgs f;
  f.shape = shape;
  f.dtype = dt;
  f.q = d_q.data();
  f.k = d_k.data();
  f.v = d_v.data();
  f.out = d_o.data();
  f.out_dtype = dt;  // what training keeps for the backward
  f.lse = d_lse.as<float>();
  f.mask = mask_args(m);
  rc::forward(f, rc::Kernel::Simple);

  const Tensor<double> zq(s.q_shape(), 0.0), zkv(s.kv_shape(), 0.0);
  const Tensor<double> dq0 = accumulate ? random_in(s.q_shape(), rc::DType::F32, rng) : zq;
  const Tensor<double> dk0 = accumulate ? random_in(s.kv_shape(), rc::DType::F32, rng) : zkv;
  const Tensor<double> dv0 = accumulate ? random_in(s.kv_shape(), rc::DType::F32, rng) : zkv;
  const rc::DeviceBuffer d_dq = accumulate ? to_device(dq0, rc::DType::F32) : poisoned(rc::DType::F32, q.size());
  const rc::DeviceBuffer d_dk = accumulate ? to_device(dk0, rc::DType::F32) : poisoned(rc::DType::F32, k.size());
  const rc::DeviceBuffer d_dv = accumulate ? to_device(dv0, rc::DType::F32) : poisoned(rc::DType::F32, v.size());
  const rc::DeviceBuffer d_delta = poisoned(rc::DType::F32, s.batch * s.heads_q * s.seq_q);
  rc::BackwardArgs b;
  b.shape = shape;
  b.dtype = dt;
  b.q = d_q.data();
  b.k = d_k.data();
  b.v = d_v.data();
  b.out = d_o.data();
  b.dout = d_do.data();
  b.lse = d_lse.as<float>();
  b.delta = d_delta.as<float>();
  b.dq = d_dq.as<float>();
  b.dk = d_dk.as<float>();
  b.dv = d_dv.as<float>();
  b.accumulate = accumulate;
  b.mask = mask_args(m);
  try {
    rc::backward(b, rc::Kernel::TensorCore);
  } catch (const ringattn::Error& e) {
    const std::string why = e.what();
    if (why.find("compute capability") != std::string::npos || why.find("shared memory per block") != std::string::npos) {
      GTEST_SKIP() << why;
    }
    FAIL() << why;
  }
  RINGATTN_CUDA_CHECK(cudaDeviceSynchronize());

  const Tensor<double> out = from_device(d_o, dt, s.q_shape());
  const Tensor<double> lse = from_device(d_lse, rc::DType::F32, s.lse_shape());
  const Tensor<double> delta = from_device(d_delta, rc::DType::F32, s.lse_shape());
  const Tensor<double> want_delta = ref::softmax_delta(out, dO);
  ref::Gradients<double> want{dq0, dk0, dv0};
  ref::block_backward<double>(ringattn::seq_view(q), ringattn::seq_view(k), ringattn::seq_view(v),
                              ringattn::seq_view(dO), ringattn::lse_view(lse), ringattn::lse_view(want_delta),
                              kernel_args(m), ringattn::seq_view(want.dq), ringattn::seq_view(want.dk),
                              ringattn::seq_view(want.dv));
  const auto dtol = fp32_tolerance(max_abs(want_delta), 0.0);
  EXPECT_TRUE(ringattn::test::AllClose(delta, want_delta, dtol.atol, dtol.rtol)) << "D = rowsum(dO * O)";
  const ref::Gradients<double> naive = lowp_naive_backward(q, k, v, dO, lse, delta, dt, m);
  const Tensor<double> got_dq = from_device(d_dq, rc::DType::F32, s.q_shape());
  const Tensor<double> got_dk = from_device(d_dk, rc::DType::F32, s.kv_shape());
  const Tensor<double> got_dv = from_device(d_dv, rc::DType::F32, s.kv_shape());
  EXPECT_TRUE(GradCriterion(got_dq, naive.dq, want.dq, dq0, dt)) << "dQ";
  EXPECT_TRUE(GradCriterion(got_dk, naive.dk, want.dk, dk0, dt)) << "dK";
  EXPECT_TRUE(GradCriterion(got_dv, naive.dv, want.dv, dv0, dt)) << "dV";

  // compute_delta = false reads D instead of writing it.
  const rc::DeviceBuffer d_dq2 = poisoned(rc::DType::F32, q.size());
  const rc::DeviceBuffer d_dk2 = poisoned(rc::DType::F32, k.size());
  const rc::DeviceBuffer d_dv2 = poisoned(rc::DType::F32, v.size());
  b.compute_delta = false;
  b.out = nullptr;  // not needed without the pre-pass
  b.accumulate = false;
  b.dq = d_dq2.as<float>();
  b.dk = d_dk2.as<float>();
  b.dv = d_dv2.as<float>();
  rc::backward(b, rc::Kernel::TensorCore);
  RINGATTN_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_TRUE(ringattn::test::AllClose(from_device(d_delta, rc::DType::F32, s.lse_shape()), delta, 0.0, 0.0));
  const Tensor<double> dq2 = from_device(d_dq2, rc::DType::F32, s.q_shape());
  const Tensor<double> dk2 = from_device(d_dk2, rc::DType::F32, s.kv_shape());
  const Tensor<double> dv2 = from_device(d_dv2, rc::DType::F32, s.kv_shape());
  for (std::int64_t n = 0; n < dk2.size(); ++n) {  // dK, dV: the same arithmetic in the same order
    ASSERT_EQ(static_cast<float>(dk2[n] + dk0[n]), static_cast<float>(got_dk[n])) << "dK " << n;
    ASSERT_EQ(static_cast<float>(dv2[n] + dv0[n]), static_cast<float>(got_dv[n])) << "dV " << n;
  }
  for (std::int64_t n = 0; n < dq2.size(); ++n) {  // dQ: atomics add the key tiles in any order
    ASSERT_NEAR(dq2[n] + dq0[n], got_dq[n], 1e-5 * (1.0 + std::fabs(got_dq[n]))) << "dQ " << n;
  }
}

std::vector<FwdCase> tensor_core_backward_cases() {
  return {
      {"S1", {1, 1, 1, 1, 1, 64}, false, {}, {}, 1.0},
      {"S7_gqa4_causal", {2, 7, 7, 8, 2, 64}, true, {}, {}, 1.0},
      {"S127_gqa8_causal_D128", {1, 127, 127, 8, 1, 128}, true, {}, {}, 1.0},
      {"S1000_causal", {1, 1000, 1000, 2, 2, 64}, true, {}, {}, 1.0},
      {"S300_causal_D128", {1, 300, 300, 2, 1, 128}, true, {}, {}, 1.0},
      {"Sq33_Skv1000_D128", {2, 33, 1000, 4, 2, 128}, false, {}, {}, 1.0},
      {"Sq77_Skv150_gqa3_D128", {1, 77, 150, 6, 2, 128}, false, {}, {}, 1.0},
      {"Sq100_Skv40_causal_emptyrows", {1, 100, 40, 2, 1, 64}, true, {}, {}, 1.0},
      // Ring segments (zigzag and striped), as in the forward's cases.
      {"zigzag_q_after_k", {1, 32, 64, 4, 2, 64}, true, Positions{96, 1}, Positions{0, 1}, 1.0},
      {"zigzag_diagonal_D128", {1, 96, 96, 4, 2, 128}, true, Positions{64, 1}, Positions{64, 1}, 1.0},
      {"zigzag_q_before_k", {1, 16, 32, 2, 2, 64}, true, Positions{0, 1}, Positions{64, 1}, 1.0},
      {"striped_3_vs_1", {2, 50, 50, 4, 4, 64}, true, Positions{3, 4}, Positions{1, 4}, 1.0},
      {"striped_0_vs_2_D128", {1, 131, 131, 2, 1, 128}, true, Positions{0, 4}, Positions{2, 4}, 1.0},
      {"large_logits_causal", {1, 300, 300, 4, 2, 64}, true, {}, {}, 10.0},
      {"large_logits_causal_D128", {1, 130, 200, 2, 2, 128}, true, {}, {}, 10.0},
  };
}

std::vector<TcBwdParam> tensor_core_backward_params() {
  std::vector<TcBwdParam> ps;
  for (rc::DType dt : {rc::DType::F16, rc::DType::BF16}) {
    for (bool acc : {false, true}) {
      for (const FwdCase& c : tensor_core_backward_cases()) ps.emplace_back(dt, acc, c);
    }
  }
  return ps;
}

std::string tensor_core_backward_name(const ::testing::TestParamInfo<TcBwdParam>& i) {
  const auto& [dt, acc, c] = i.param;
  return dtype_name(dt) + (acc ? "_accumulate_" : "_overwrite_") + c.name;
}

INSTANTIATE_TEST_SUITE_P(TensorCore, BackwardTensorCore, ::testing::ValuesIn(tensor_core_backward_params()),
                         tensor_core_backward_name);

// Auto takes the tensor-core backward where it runs (dK is deterministic, and differs from the
// simple kernel's fp32 arithmetic), the simple one where it does not (fp32; D = 96).
TEST(BackwardAuto, PicksTensorCoresWhereTheyRun) {
  RINGATTN_SKIP_WITHOUT_GPU();
  RINGATTN_SEEDED_RNG(rng);
  for (const auto& [dt, D] : {std::pair{rc::DType::BF16, std::int64_t{64}}, std::pair{rc::DType::F32, std::int64_t{64}},
                              std::pair{rc::DType::F16, std::int64_t{96}}}) {
    const ShapeCase s{1, 70, 90, 4, 2, D};
    const Tensor<double> q = random_in(s.q_shape(), dt, rng), k = random_in(s.kv_shape(), dt, rng),
                         v = random_in(s.kv_shape(), dt, rng), dO = random_in(s.q_shape(), dt, rng);
    const Tensor<double> lse = random_in(s.lse_shape(), rc::DType::F32, rng);  // any finite LSE and D do here
    const Tensor<double> delta = random_in(s.lse_shape(), rc::DType::F32, rng);
    const rc::DeviceBuffer d_q = to_device(q, dt), d_k = to_device(k, dt), d_v = to_device(v, dt),
                           d_do = to_device(dO, dt), d_lse = to_device(lse, rc::DType::F32),
                           d_delta = to_device(delta, rc::DType::F32);
    auto run = [&](rc::Kernel kernel) {
      const rc::DeviceBuffer d_dq = poisoned(rc::DType::F32, q.size()), d_dk = poisoned(rc::DType::F32, k.size()),
                             d_dv = poisoned(rc::DType::F32, v.size());
      rc::BackwardArgs b;
      b.shape = AttentionShape{s.batch, s.seq_q, s.seq_kv, s.heads_q, s.heads_kv, s.head_dim};
      b.dtype = dt;
      b.q = d_q.data();
      b.k = d_k.data();
      b.v = d_v.data();
      b.dout = d_do.data();
      b.lse = d_lse.as<float>();
      b.delta = d_delta.as<float>();
      b.compute_delta = false;
      b.dq = d_dq.as<float>();
      b.dk = d_dk.as<float>();
      b.dv = d_dv.as<float>();
      b.mask.causal = true;
      rc::backward(b, kernel);
      RINGATTN_CUDA_CHECK(cudaDeviceSynchronize());
      return from_device(d_dk, rc::DType::F32, s.kv_shape());
    };
    const Tensor<double> auto_dk = run(rc::Kernel::Auto);
    const bool tc = dt != rc::DType::F32 && D != 96;
    const Tensor<double> want = run(tc ? rc::Kernel::TensorCore : rc::Kernel::Simple);
    EXPECT_TRUE(ringattn::test::AllClose(auto_dk, want, 0.0, 0.0)) << dtype_name(dt) << " D=" << D;
    if (tc) {
      EXPECT_FALSE(ringattn::test::AllClose(auto_dk, run(rc::Kernel::Simple), 0.0, 0.0)) << "kernels indistinguishable";
    }
  }
}

// ---- merge ----------------------------------------------------------------------------------

class Merge : public ::testing::TestWithParam<ShapeCase> {};

// Every case of the reference's merge_into, row by row: accumulator empty, partial empty, both
// empty, both present (also with LSEs far apart and large). The O of an empty side is NaN: the
// kernel must not read it.
TEST_P(Merge, MatchesReferenceIncludingEmptySides) {
  RINGATTN_SKIP_WITHOUT_GPU();
  RINGATTN_SEEDED_RNG(rng);
  const ShapeCase& s = GetParam();
  const std::int64_t B = s.batch, S = s.seq_q, H = s.heads_q, D = s.head_dim;
  const auto [oa, la, ob, lb] = merge_inputs(s, rng);
  const rc::DeviceBuffer d_oa = to_device(oa, rc::DType::F32), d_la = to_device(la, rc::DType::F32),
                         d_ob = to_device(ob, rc::DType::F32), d_lb = to_device(lb, rc::DType::F32);
  rc::merge(d_oa.as<float>(), d_la.as<float>(), d_ob.as<float>(), d_lb.as<float>(), B, S, H, D);
  RINGATTN_CUDA_CHECK(cudaDeviceSynchronize());
  Tensor<double> want_o = oa, want_l = la;
  ref::merge_into(want_o, want_l, ob, lb);
  const Tensor<double> got_o = from_device(d_oa, rc::DType::F32, oa.shape());
  const Tensor<double> got_l = from_device(d_la, rc::DType::F32, la.shape());
  EXPECT_TRUE(ringattn::test::AllClose(got_l, want_l, 1e-6 * (1.0 + max_abs(want_l)), 1e-6));
  EXPECT_TRUE(ringattn::test::AllClose(got_o, want_o, 2e-6 * std::max(1.0, max_abs(want_o)), 2e-6));
  EXPECT_TRUE(ringattn::test::EmptyRowsExact(got_o, got_l, want_l));
  // The partial is read-only.
  EXPECT_TRUE(ringattn::test::AllClose(from_device(d_lb, rc::DType::F32, lb.shape()), lb, 0.0, 0.0));
}

INSTANTIATE_TEST_SUITE_P(Shapes, Merge,
                         ::testing::ValuesIn(merge_shapes()),
                         [](const ::testing::TestParamInfo<ShapeCase>& i) { return to_string(i.param); });

// ---- decode ---------------------------------------------------------------------------------

class Decode : public ::testing::TestWithParam<DecodeParam> {};

TEST_P(Decode, MatchesFloat64Reference) {
  RINGATTN_SKIP_WITHOUT_GPU();
  const auto& [dt, out_same, splits_param, c] = GetParam();
  RINGATTN_SEEDED_RNG(rng);
  const ShapeCase& s = c.shape;
  const std::int64_t splits = splits_param > 0 ? splits_param : s.seq_kv + 5;  // more splits than keys
  const Tensor<double> q = random_in(s.q_shape(), dt, rng, c.q_mul);
  const Tensor<double> k = random_in(s.kv_shape(), dt, rng);
  const Tensor<double> v = random_in(s.kv_shape(), dt, rng);
  const Mask m = resolve_mask(s, c.causal, c.qpos, c.kpos);
  const rc::DType out_dt = out_same ? dt : rc::DType::F32;
  const AttentionShape shape{s.batch, s.seq_q, s.seq_kv, s.heads_q, s.heads_kv, s.head_dim};

  const rc::DeviceBuffer d_q = to_device(q, dt), d_k = to_device(k, dt), d_v = to_device(v, dt);
  const rc::DeviceBuffer d_o = poisoned(out_dt, q.size());
  const rc::DeviceBuffer d_lse = poisoned(rc::DType::F32, s.batch * s.heads_q * s.seq_q);
  const std::size_t ws_bytes = rc::decode_workspace_bytes(shape, static_cast<int>(splits));
  const rc::DeviceBuffer ws = poisoned(rc::DType::F32, static_cast<std::int64_t>(ws_bytes / 4));
  rc::ForwardArgs args;
  args.shape = shape;
  args.dtype = dt;
  args.q = d_q.data();
  args.k = d_k.data();
  args.v = d_v.data();
  args.out = d_o.data();
  args.out_dtype = out_dt;
  args.lse = d_lse.as<float>();
  args.mask = mask_args(m);
  rc::decode(args, static_cast<int>(splits), ws.data());
  RINGATTN_CUDA_CHECK(cudaDeviceSynchronize());

  const Tensor<double> out = from_device(d_o, out_dt, s.q_shape());
  const Tensor<double> lse = from_device(d_lse, rc::DType::F32, s.lse_shape());
  expect_forward_matches(out, lse, q, k, v, m, dt, out_dt);
}

INSTANTIATE_TEST_SUITE_P(Splits, Decode, ::testing::ValuesIn(decode_params()), decode_name);

TEST(DecodeDefaultSplits, RunAndMatchTheForward) {
  RINGATTN_SKIP_WITHOUT_GPU();
  RINGATTN_SEEDED_RNG(rng);
  int sms = 0;
  RINGATTN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const ShapeCase s{1, 1, 4096, 8, 2, 128};
  const AttentionShape shape{s.batch, s.seq_q, s.seq_kv, s.heads_q, s.heads_kv, s.head_dim};
  const int splits = rc::decode_default_splits(shape, sms);
  EXPECT_GE(splits, 1);
  EXPECT_LE(splits, 16);
  const rc::DType dt = rc::DType::BF16;
  const Tensor<double> q = random_in(s.q_shape(), dt, rng), k = random_in(s.kv_shape(), dt, rng),
                       v = random_in(s.kv_shape(), dt, rng);
  const rc::DeviceBuffer d_q = to_device(q, dt), d_k = to_device(k, dt), d_v = to_device(v, dt);
  const rc::DeviceBuffer d_o = poisoned(rc::DType::F32, q.size());
  const rc::DeviceBuffer ws(rc::decode_workspace_bytes(shape, splits));
  rc::ForwardArgs args;
  args.shape = shape;
  args.dtype = dt;
  args.q = d_q.data();
  args.k = d_k.data();
  args.v = d_v.data();
  args.out = d_o.data();
  rc::decode(args, splits, ws.data());
  RINGATTN_CUDA_CHECK(cudaDeviceSynchronize());
  const Mask m = resolve_mask(s, false, {}, {});
  const auto want = reference_forward(q, k, v, m);
  const auto tol = fp32_tolerance(max_abs(want.out), max_logit(q, k, m.scale));
  EXPECT_TRUE(ringattn::test::AllClose(from_device(d_o, rc::DType::F32, s.q_shape()), want.out, tol.atol, tol.rtol))
      << splits << " splits on " << sms << " SMs";
}

// ---- device helpers -------------------------------------------------------------------------

TEST(Device, UploadDownloadRoundTripsEveryDtype) {
  RINGATTN_SKIP_WITHOUT_GPU();
  const std::vector<float> x = {0.0f, -1.5f, 3.14159265f, 65504.0f, 1e-7f, -1e30f};
  for (rc::DType dt : {rc::DType::F32, rc::DType::F16, rc::DType::BF16}) {
    const rc::DeviceBuffer buf = rc::upload(dt, x);
    EXPECT_EQ(buf.bytes(), x.size() * rc::element_bytes(dt));
    const std::vector<float> back = rc::download(dt, buf.data(), x.size());
    for (std::size_t n = 0; n < x.size(); ++n) EXPECT_EQ(back[n], rc::round_to(dt, x[n])) << dtype_name(dt) << " " << n;
  }
}

TEST(Device, OutOfMemoryIsAnErrorSayingHowMuch) {
  RINGATTN_SKIP_WITHOUT_GPU();
  const std::size_t huge = std::size_t{1} << 50;  // 1 PiB
  EXPECT_TRUE(ringattn::test::ThrowsError([&] { rc::DeviceBuffer buf(huge); },
                                          {"CUDA error in cudaMalloc of 1125899906842624 bytes", "out of memory"}));
  // The failure is not sticky: the next allocation and launch work.
  rc::DeviceBuffer ok(1024);
  EXPECT_NE(ok.data(), nullptr);
  RINGATTN_CUDA_CHECK(cudaGetLastError());
}

}  // namespace
