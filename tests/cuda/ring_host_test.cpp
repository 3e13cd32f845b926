// The CUDA ring driver's host side, without a GPU (label cpu): configuration checks, shard checks
// that fail every rank through the communicator's agreement before anything is queued, and the
// local communicator's refusal when no device is visible.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "ringattn/core/error.hpp"
#include "ringattn/cuda/attention.hpp"
#include "ringattn/cuda/communicator.hpp"
#include "ringattn/cuda/ring.hpp"

namespace {

namespace rc = ringattn::cuda;
using ringattn::Error;

// A communicator that only records: N local ranks, agreement as a real one would do it.
class FakeComm final : public rc::Communicator {
 public:
  explicit FakeComm(int n) {
    for (int r = 0; r < n; ++r) ranks_.push_back(r);
  }
  int world_size() const override { return static_cast<int>(ranks_.size()); }
  const std::vector<int>& local_ranks() const override { return ranks_; }
  int device(int) const override { return 0; }
  std::string name() const override { return "fake"; }
  void shift(std::span<const std::vector<rc::ShiftBuffers>>, std::span<const ringattn_cuda_stream_t>) override {
    ++shifts;
  }
  void agree(bool ok, const std::string& message) override {
    ++agreements;
    if (!ok) throw Error(message);
  }
  void abort() noexcept override { ++aborts; }
  void check_async() override {}
  int shifts = 0, agreements = 0, aborts = 0;

 private:
  std::vector<int> ranks_;
};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

rc::RingConfig config(ringattn::AttentionShape shape, ringattn::Layout layout = ringattn::Layout::Zigzag) {
  rc::RingConfig c;
  c.shape = shape;
  c.layout = layout;
  c.dtype = rc::DType::BF16;
  return c;
}

TEST(RingHost, ConfigurationErrorsAreOneLine) {
  FakeComm comm(4);
  EXPECT_NE(error_of([&] { rc::RingAttention r(comm, config({1, 64, 64, 6, 4, 64})); }).find("multiple of H_kv"),
            std::string::npos);
  EXPECT_NE(error_of([&] { rc::RingAttention r(comm, config({0, 64, 64, 4, 4, 64})); }).find(">= 1"),
            std::string::npos);
  // Zigzag over 4 ranks needs 8 chunks: 7 tokens cannot be split.
  const std::string short_seq = error_of([&] { rc::RingAttention r(comm, config({1, 7, 7, 4, 4, 64})); });
  EXPECT_FALSE(short_seq.empty());
  EXPECT_EQ(short_seq.find('\n'), std::string::npos) << short_seq;
  rc::RingConfig bad_out = config({1, 64, 64, 4, 4, 64});
  bad_out.out_dtype = rc::DType::F16;
  EXPECT_NE(error_of([&] { rc::RingAttention r(comm, bad_out); }).find("O must be fp32 or bf16"), std::string::npos);
  rc::RingConfig bad_scale = config({1, 64, 64, 4, 4, 64});
  bad_scale.scale = -1.0f;
  EXPECT_NE(error_of([&] { rc::RingAttention r(comm, bad_scale); }).find("scale"), std::string::npos);
}

TEST(RingHost, ABadShardOnOneRankFailsThroughTheAgreementBeforeAnyTransfer) {
  FakeComm comm(4);
  rc::RingAttention ring(comm, config({1, 64, 64, 4, 4, 64}));
  alignas(16) static char mem[64];
  std::vector<rc::ForwardShard> shards(4, rc::ForwardShard{mem, mem, mem, mem, nullptr});
  shards[3].v = nullptr;
  const std::string e = error_of([&] { ring.forward(shards); });
  EXPECT_NE(e.find("rank 3: V is null"), std::string::npos) << e;
  EXPECT_EQ(comm.agreements, 1);  // every rank learns of it through the communicator
  EXPECT_EQ(comm.shifts, 0);      // and nothing was queued

  shards[3].v = mem + 4;  // misaligned
  EXPECT_NE(error_of([&] { ring.forward(shards); }).find("16-byte aligned"), std::string::npos);

  std::vector<rc::BackwardShard> bs(4, rc::BackwardShard{mem, mem, mem, mem, mem, reinterpret_cast<float*>(mem),
                                                         reinterpret_cast<float*>(mem), reinterpret_cast<float*>(mem),
                                                         reinterpret_cast<float*>(mem)});
  bs[1].dout = nullptr;
  EXPECT_NE(error_of([&] { ring.backward(bs); }).find("rank 1: dO is null"), std::string::npos);
  EXPECT_NE(error_of([&] { ring.forward(std::span<const rc::ForwardShard>(shards.data(), 2)); }).find("2 shards given for 4"),
            std::string::npos);
}

TEST(RingHost, LocalCommunicatorNeedsADevice) {
  std::string why;
  if (rc::device_count(&why) > 0) GTEST_SKIP() << "a CUDA device is visible; this checks the refusal without one";
  const std::string e = error_of([] { rc::LocalCommunicator c(4); });
  EXPECT_NE(e.find("no CUDA device"), std::string::npos) << e;
  EXPECT_NE(error_of([] { rc::LocalCommunicator c(0); }).find("at least 1 rank"), std::string::npos);
}

TEST(RingHost, ThePlansTheDriverRunsAreTheCheckedOnes) {
  FakeComm comm(3);
  rc::RingConfig c = config({2, 61, 61, 4, 2, 64}, ringattn::Layout::Zigzag);
  c.causal = true;
  rc::RingAttention ring(comm, c);
  for (bool backward : {false, true}) {
    const rc::RingPlan& p = ring.plan(backward);
    EXPECT_EQ(p.backward, backward);
    EXPECT_EQ(p.ranks, 3);
    EXPECT_EQ(p.input_bytes, 2);
    EXPECT_TRUE(rc::check_hazards(p).empty());
  }
}

}  // namespace
