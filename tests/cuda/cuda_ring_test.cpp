// The CUDA ring against the float64 reference (label gpu; every test skips, with the reason, when
// no CUDA device is visible).
//
// Virtual-rank rings of 1..8 ranks, every layout, causal and not, GQA, uneven shards, fp32 and
// bf16, forward and backward. Inputs are drawn in double and rounded to the dtype; the rounded
// values go to the float64 naive reference, so the comparison measures the ring's arithmetic.
// The criterion per output (relative L2 error against float64):
//   ring error <= 2 x (error of the single kernel over the whole sequence on the same inputs)
//                 + 2e-5 (fp32) / 1e-4 (bf16),
// i.e. the ring may not be meaningfully worse than the kernel it is built from (the float32
// merges of partial results add rounding of order 1e-7). Outputs are poisoned with NaN first.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "common/check.hpp"
#include "ringattn/core/error.hpp"
#include "ringattn/cuda/attention.hpp"
#include "ringattn/cuda/communicator.hpp"
#include "ringattn/cuda/device.hpp"
#include "ringattn/cuda/ring.hpp"
#include "ringattn/reference/attention.hpp"
#include "ringattn/reference/ring.hpp"
#if defined(RINGATTN_HAVE_NCCL)
#include "ringattn/cuda/nccl_communicator.hpp"
#endif

namespace {

namespace rc = ringattn::cuda;
namespace ref = ringattn::ref;
using ringattn::AttentionShape;
using ringattn::Layout;
using ringattn::SequenceLayout;
using ringattn::Tensor;

#define RINGATTN_SKIP_WITHOUT_GPU()                                          \
  do {                                                                       \
    std::string why_;                                                        \
    if (rc::device_count(&why_) == 0) GTEST_SKIP() << "no CUDA device: " << why_; \
  } while (0)

Tensor<double> random_in(const std::vector<std::int64_t>& shape, rc::DType dt, std::mt19937_64& rng) {
  Tensor<double> t = ringattn::test::random_tensor<double>(shape, rng, ringattn::test::Dist::Normal, 1.0);
  for (auto& x : t.values()) x = rc::round_to(dt, static_cast<float>(x));
  return t;
}

rc::DeviceBuffer to_device(const Tensor<double>& t, rc::DType dt) { return rc::upload(dt, t.values()); }

rc::DeviceBuffer poisoned_f32(std::int64_t count) {
  return rc::upload(rc::DType::F32,
                    std::vector<float>(static_cast<std::size_t>(count), std::numeric_limits<float>::quiet_NaN()));
}

Tensor<double> from_device(const rc::DeviceBuffer& buf, const std::vector<std::int64_t>& shape) {
  Tensor<double> t(shape);
  const std::vector<float> v = rc::download(rc::DType::F32, buf.data(), static_cast<std::size_t>(t.size()));
  for (std::int64_t n = 0; n < t.size(); ++n) t[n] = v[static_cast<std::size_t>(n)];
  return t;
}

// Relative L2 error; -inf entries must match exactly; NaN is infinite error.
double rel_err(const Tensor<double>& got, const Tensor<double>& want) {
  double num = 0, den = 0;
  for (std::int64_t i = 0; i < want.size(); ++i) {
    if (std::isinf(want[i])) {
      if (got[i] != want[i]) return std::numeric_limits<double>::infinity();
      continue;
    }
    const double e = got[i] - want[i];
    if (std::isnan(e)) return std::numeric_limits<double>::infinity();
    num += e * e;
    den += want[i] * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

struct Inputs {
  AttentionShape shape;
  Tensor<double> q, k, v, dout, out, lse;  // out rounded to the dtype (what training keeps)
  ref::ForwardResult<double> want;
  ref::Gradients<double> want_g;
};

Inputs make_inputs(const AttentionShape& sh, rc::DType dt, bool causal, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  Inputs in{sh, random_in({sh.batch, sh.seq_q, sh.heads_q, sh.head_dim}, dt, rng),
            random_in({sh.batch, sh.seq_kv, sh.heads_kv, sh.head_dim}, dt, rng),
            random_in({sh.batch, sh.seq_kv, sh.heads_kv, sh.head_dim}, dt, rng),
            random_in({sh.batch, sh.seq_q, sh.heads_q, sh.head_dim}, dt, rng), {}, {}, {}, {}};
  ref::AttentionOptions o;
  o.causal = causal;
  in.want = ref::naive_forward(in.q, in.k, in.v, o);
  in.out = in.want.out;
  for (auto& x : in.out.values()) x = rc::round_to(dt, static_cast<float>(x));
  in.lse = in.want.lse;
  in.want_g = ref::naive_backward(in.q, in.k, in.v, in.out, in.lse, in.dout, o);
  return in;
}

// The single kernel over the whole sequence: the baseline the ring is judged against.
struct Single {
  Tensor<double> out, lse, dq, dk, dv;
};
Single single_kernel(const Inputs& in, rc::DType dt, bool causal) {
  const AttentionShape& sh = in.shape;
  const auto q = to_device(in.q, dt), k = to_device(in.k, dt), v = to_device(in.v, dt);
  const auto o = poisoned_f32(sh.q_elements()), l = poisoned_f32(sh.lse_elements());
  rc::ForwardArgs f;
  f.shape = sh;
  f.dtype = dt;
  f.q = q.data();
  f.k = k.data();
  f.v = v.data();
  f.out = o.data();
  f.lse = l.as<float>();
  f.mask.causal = causal;
  rc::forward(f);
  Single s{from_device(o, in.q.shape()), from_device(l, in.lse.shape()), {}, {}, {}};
  const auto od = to_device(in.out, dt), dod = to_device(in.dout, dt);
  const auto lse = rc::upload(rc::DType::F32, in.lse.values());
  const auto delta = poisoned_f32(sh.lse_elements());
  const auto dq = poisoned_f32(sh.q_elements()), dk = poisoned_f32(sh.kv_elements()), dv = poisoned_f32(sh.kv_elements());
  rc::BackwardArgs b;
  b.shape = sh;
  b.dtype = dt;
  b.q = q.data();
  b.k = k.data();
  b.v = v.data();
  b.out = od.data();
  b.dout = dod.data();
  b.lse = lse.as<float>();
  b.delta = delta.as<float>();
  b.dq = dq.as<float>();
  b.dk = dk.as<float>();
  b.dv = dv.as<float>();
  b.mask.causal = causal;
  rc::backward(b);
  s.dq = from_device(dq, in.q.shape());
  s.dk = from_device(dk, in.k.shape());
  s.dv = from_device(dv, in.v.shape());
  return s;
}

// The ring on @p comm (all of its ranks local): forward, then backward from the reference O/LSE.
struct RingResult {
  Tensor<double> out, lse, dq, dk, dv;
};
RingResult run_ring(rc::Communicator& comm, const Inputs& in, rc::DType dt, Layout layout, bool causal) {
  const AttentionShape& sh = in.shape;
  const int n = comm.world_size();
  const SequenceLayout ql(layout, sh.seq_q, n), kl(layout, sh.seq_kv, n);
  rc::RingConfig cfg;
  cfg.shape = sh;
  cfg.layout = layout;
  cfg.causal = causal;
  cfg.dtype = dt;
  cfg.timing = true;
  rc::RingAttention ring(comm, cfg);
  std::vector<rc::DeviceBuffer> keep;
  std::vector<rc::ForwardShard> fs;
  std::vector<rc::BackwardShard> bs;
  std::vector<std::size_t> out_at, lse_at, dq_at, dk_at, dv_at;
  int saved = 0;
  cudaGetDevice(&saved);
  for (int r = 0; r < n; ++r) {
    cudaSetDevice(comm.device(r));
    const std::int64_t lq = ql.shard_length(r), lk = kl.shard_length(r);
    auto add = [&](rc::DeviceBuffer b) {
      keep.push_back(std::move(b));
      return keep.back().data();
    };
    rc::ForwardShard f;
    f.q = add(to_device(ref::shard_rows(in.q, ql, r), dt));
    f.k = add(to_device(ref::shard_rows(in.k, kl, r), dt));
    f.v = add(to_device(ref::shard_rows(in.v, kl, r), dt));
    out_at.push_back(keep.size());
    f.out = add(poisoned_f32(sh.batch * lq * sh.heads_q * sh.head_dim));
    lse_at.push_back(keep.size());
    f.lse = static_cast<float*>(add(poisoned_f32(sh.batch * sh.heads_q * lq)));
    fs.push_back(f);
    rc::BackwardShard b;
    b.q = f.q;
    b.k = f.k;
    b.v = f.v;
    b.out = add(to_device(ref::shard_rows(in.out, ql, r), dt));
    b.dout = add(to_device(ref::shard_rows(in.dout, ql, r), dt));
    b.lse = static_cast<const float*>(add(rc::upload(rc::DType::F32, ref::shard_lse(in.lse, ql, r).values())));
    dq_at.push_back(keep.size());
    b.dq = static_cast<float*>(add(poisoned_f32(sh.batch * lq * sh.heads_q * sh.head_dim)));
    dk_at.push_back(keep.size());
    b.dk = static_cast<float*>(add(poisoned_f32(sh.batch * lk * sh.heads_kv * sh.head_dim)));
    dv_at.push_back(keep.size());
    b.dv = static_cast<float*>(add(poisoned_f32(sh.batch * lk * sh.heads_kv * sh.head_dim)));
    bs.push_back(b);
  }
  cudaSetDevice(saved);
  ring.forward(fs);
  EXPECT_FALSE(ring.timeline().empty());
  for (const auto& span : ring.timeline()) EXPECT_LE(span.begin_ms, span.end_ms) << span.label;
  ring.backward(bs);
  RingResult res{Tensor<double>(in.q.shape()), Tensor<double>(in.lse.shape()), Tensor<double>(in.q.shape()),
                 Tensor<double>(in.k.shape()), Tensor<double>(in.v.shape())};
  for (int r = 0; r < n; ++r) {
    const std::int64_t lq = ql.shard_length(r), lk = kl.shard_length(r);
    const auto ri = static_cast<std::size_t>(r);
    ref::unshard_rows(from_device(keep[out_at[ri]], {sh.batch, lq, sh.heads_q, sh.head_dim}), ql, r, res.out);
    ref::unshard_lse(from_device(keep[lse_at[ri]], {sh.batch, sh.heads_q, lq}), ql, r, res.lse);
    ref::unshard_rows(from_device(keep[dq_at[ri]], {sh.batch, lq, sh.heads_q, sh.head_dim}), ql, r, res.dq);
    ref::unshard_rows(from_device(keep[dk_at[ri]], {sh.batch, lk, sh.heads_kv, sh.head_dim}), kl, r, res.dk);
    ref::unshard_rows(from_device(keep[dv_at[ri]], {sh.batch, lk, sh.heads_kv, sh.head_dim}), kl, r, res.dv);
  }
  return res;
}

void expect_close(const char* what, const Tensor<double>& ring, const Tensor<double>& single,
                  const Tensor<double>& want, rc::DType dt) {
  const double floor = dt == rc::DType::F32 ? 2e-5 : 1e-4;
  const double e_ring = rel_err(ring, want), e_single = rel_err(single, want);
  EXPECT_LE(e_ring, 2 * e_single + floor) << what << ": ring " << e_ring << ", single kernel " << e_single;
}

using RingCase = std::tuple<Layout, int, bool, rc::DType>;

class CudaRing : public ::testing::TestWithParam<RingCase> {};

TEST_P(CudaRing, VirtualRanksMatchTheReference) {
  RINGATTN_SKIP_WITHOUT_GPU();
  const auto [layout, n, causal, dt] = GetParam();
  // Uneven shards (S not a multiple of 2N), GQA, B = 2, D = 64 (the tensor-core kernel's size).
  const std::int64_t s = 48 * n + 13;
  const AttentionShape sh{2, s, s, 4, 2, 64};
  const Inputs in = make_inputs(sh, dt, causal, 1000 + static_cast<std::uint64_t>(n) * 7 + (causal ? 1 : 0));
  const Single single = single_kernel(in, dt, causal);
  rc::LocalCommunicator comm(n);
  const RingResult got = run_ring(comm, in, dt, layout, causal);
  expect_close("O", got.out, single.out, in.want.out, dt);
  expect_close("LSE", got.lse, single.lse, in.want.lse, dt);
  expect_close("dQ", got.dq, single.dq, in.want_g.dq, dt);
  expect_close("dK", got.dk, single.dk, in.want_g.dk, dt);
  expect_close("dV", got.dv, single.dv, in.want_g.dv, dt);
}

INSTANTIATE_TEST_SUITE_P(
    Rings, CudaRing,
    ::testing::Combine(::testing::Values(Layout::Contiguous, Layout::Striped, Layout::Zigzag),
                       ::testing::Values(1, 2, 3, 4, 8), ::testing::Bool(),
                       ::testing::Values(rc::DType::F32, rc::DType::BF16)),
    [](const auto& param_info) {
      const auto& p = param_info.param;
      return std::string(ringattn::to_string(std::get<0>(p))) + "_N" + std::to_string(std::get<1>(p)) +
             (std::get<2>(p) ? "_causal_" : "_full_") + std::string(rc::to_string(std::get<3>(p)));
    });

TEST(CudaRingErrors, OneBadShardFailsTheRingWithItsRank) {
  RINGATTN_SKIP_WITHOUT_GPU();
  rc::LocalCommunicator comm(4);
  rc::RingConfig cfg;
  cfg.shape = {1, 64, 64, 2, 2, 64};
  cfg.dtype = rc::DType::BF16;
  rc::RingAttention ring(comm, cfg);
  rc::DeviceBuffer buf(1 << 20);
  std::vector<rc::ForwardShard> shards(4, rc::ForwardShard{buf.data(), buf.data(), buf.data(), buf.data(), nullptr});
  shards[2].k = nullptr;
  try {
    ring.forward(shards);
    FAIL() << "a null K on rank 2 was accepted";
  } catch (const ringattn::Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank 2: K is null"), std::string::npos) << e.what();
  }
  shards[2].k = static_cast<char*>(buf.data()) + 2;  // misaligned
  EXPECT_THROW(ring.forward(shards), ringattn::Error);
}

TEST(CudaRingErrors, OutOfMemoryIsAClearError) {
  RINGATTN_SKIP_WITHOUT_GPU();
  rc::LocalCommunicator comm(2);
  rc::RingConfig cfg;
  cfg.shape = {1, std::int64_t{1} << 30, std::int64_t{1} << 30, 32, 8, 128};  // terabytes of buffers
  cfg.dtype = rc::DType::BF16;
  rc::RingAttention ring(comm, cfg);
  rc::DeviceBuffer buf(1 << 20);
  std::vector<rc::ForwardShard> shards(2, rc::ForwardShard{buf.data(), buf.data(), buf.data(), buf.data(), nullptr});
  try {
    ring.forward(shards);
    FAIL() << "terabytes were allocated";
  } catch (const ringattn::Error& e) {
    EXPECT_NE(std::string(e.what()).find("memory"), std::string::npos) << e.what();
  }
  // The ring still works afterwards on a sane problem.
  const AttentionShape sh{1, 64, 64, 2, 2, 64};
  const Inputs in = make_inputs(sh, rc::DType::F32, true, 7);
  rc::LocalCommunicator comm2(2);
  const RingResult got = run_ring(comm2, in, rc::DType::F32, Layout::Zigzag, true);
  EXPECT_LT(rel_err(got.out, in.want.out), 2e-5);
}

#if defined(RINGATTN_HAVE_NCCL)
TEST(CudaRingNccl, WorldSizeOneOnOneGpu) {
  RINGATTN_SKIP_WITHOUT_GPU();
  auto comm = rc::NcclCommunicator::single_process({0});
  const AttentionShape sh{2, 77, 77, 4, 2, 64};
  const Inputs in = make_inputs(sh, rc::DType::BF16, true, 11);
  const Single single = single_kernel(in, rc::DType::BF16, true);
  const RingResult got = run_ring(*comm, in, rc::DType::BF16, Layout::Zigzag, true);
  expect_close("O", got.out, single.out, in.want.out, rc::DType::BF16);
  expect_close("dK", got.dk, single.dk, in.want_g.dk, rc::DType::BF16);
}

TEST(CudaRingNccl, SeveralGpusInOneProcess) {
  RINGATTN_SKIP_WITHOUT_GPU();
  const int gpus = rc::device_count();
  if (gpus < 2) GTEST_SKIP() << "NCCL needs one GPU per rank and " << gpus << " is visible";
  std::vector<int> devices;
  for (int d = 0; d < gpus && d < 8; ++d) devices.push_back(d);
  auto comm = rc::NcclCommunicator::single_process(devices);
  const auto n = static_cast<std::int64_t>(devices.size());
  const AttentionShape sh{1, 64 * n + 5, 64 * n + 5, 4, 1, 128};
  for (Layout layout : {Layout::Contiguous, Layout::Zigzag}) {
    const Inputs in = make_inputs(sh, rc::DType::BF16, true, 21);
    const Single single = single_kernel(in, rc::DType::BF16, true);
    const RingResult got = run_ring(*comm, in, rc::DType::BF16, layout, true);
    expect_close("O", got.out, single.out, in.want.out, rc::DType::BF16);
    expect_close("dQ", got.dq, single.dq, in.want_g.dq, rc::DType::BF16);
    expect_close("dV", got.dv, single.dv, in.want_g.dv, rc::DType::BF16);
  }
}

TEST(CudaRingNccl, TwoRanksOnOneGpuAreRefused) {
  RINGATTN_SKIP_WITHOUT_GPU();
  try {
    (void)rc::NcclCommunicator::single_process({0, 0});
    FAIL() << "two NCCL ranks on device 0 were accepted";
  } catch (const ringattn::Error& e) {
    EXPECT_NE(std::string(e.what()).find("appears twice"), std::string::npos) << e.what();
  }
}
#endif

TEST(CudaRingLocal, RanksSpreadOverEveryVisibleGpu) {
  RINGATTN_SKIP_WITHOUT_GPU();
  const int gpus = rc::device_count();
  rc::LocalCommunicator comm(4);
  for (int r = 0; r < 4; ++r) EXPECT_EQ(comm.device(r), r % gpus);
  const AttentionShape sh{1, 4 * 40 + 3, 4 * 40 + 3, 2, 2, 64};
  const Inputs in = make_inputs(sh, rc::DType::F32, false, 5);
  const RingResult got = run_ring(comm, in, rc::DType::F32, Layout::Striped, false);
  EXPECT_LT(rel_err(got.out, in.want.out), 2e-5);
  EXPECT_LT(rel_err(got.dk, in.want_g.dk), 2e-5);
}

}  // namespace
