// Tests of the closed-form costs: FLOPs and bytes of attention blocks and the overlap threshold.
#include <gtest/gtest.h>

#include <cstdint>

#include "ringattn/core/cost.hpp"

namespace {

TEST(Cost, ForwardFlopsAreFourBHDPerVisiblePair) {
  EXPECT_DOUBLE_EQ(ringattn::attention_flops_forward(2, 8, 64, 100), 4.0 * 2 * 8 * 64 * 100);
  EXPECT_DOUBLE_EQ(ringattn::attention_flops_forward(1, 1, 1, 1), 4.0);
  EXPECT_DOUBLE_EQ(ringattn::attention_flops_forward(3, 6, 16, 0), 0.0);
  // A full causal 128k sequence, 32 heads of 128: no int64 overflow on the way to double.
  const std::int64_t s = 131072;
  EXPECT_DOUBLE_EQ(ringattn::attention_flops_forward(1, 32, 128, s * (s + 1) / 2),
                   4.0 * 32 * 128 * (static_cast<double>(s) * (s + 1) / 2));
}

TEST(Cost, BackwardIsTwoAndAHalfForward) {
  for (std::int64_t vis : {std::int64_t{1}, std::int64_t{37}, std::int64_t{1} << 30}) {
    EXPECT_DOUBLE_EQ(ringattn::attention_flops_backward(2, 8, 64, vis),
                     2.5 * ringattn::attention_flops_forward(2, 8, 64, vis));
  }
}

TEST(Cost, KvBlockBytes) {
  EXPECT_DOUBLE_EQ(ringattn::kv_block_bytes(2, 100, 2, 64, 2), 2.0 * 2 * 100 * 2 * 64 * 2);
  EXPECT_DOUBLE_EQ(ringattn::kv_block_bytes(1, 7, 3, 16, 4), 2.0 * 7 * 3 * 16 * 4);
  EXPECT_DOUBLE_EQ(ringattn::kv_block_bytes(1, 0, 3, 16, 4), 0.0);
}

TEST(Cost, MinOverlapBlockMatchesRingAttentionTable2) {
  // Ring Attention (Liu et al.), Table 2: A100 at 312 TFLOP/s over InfiniBand at 12.5 GB/s
  // needs blocks of ~25k tokens (F/B = 24960 for bf16); over NVLink at 300 GB/s, ~1k.
  EXPECT_NEAR(ringattn::min_overlap_block(312e12, 12.5e9), 24960.0, 1e-6);
  EXPECT_NEAR(ringattn::min_overlap_block(312e12, 300e9), 1040.0, 1e-9);
  EXPECT_NEAR(ringattn::min_overlap_block(312e12, 300e9, 2), 1040.0, 1e-9);
  // c >= e * F / (2 B): float32 elements need twice the block, fp8 half.
  EXPECT_NEAR(ringattn::min_overlap_block(312e12, 300e9, 4), 2080.0, 1e-9);
  EXPECT_NEAR(ringattn::min_overlap_block(312e12, 300e9, 1), 520.0, 1e-9);
}

TEST(Cost, MinOverlapBlockHidesTransfer) {
  // At the threshold a block's compute time equals its transfer time (per head, per direction).
  const double f = 989e12, b = 450e9, d = 128;
  const double c = ringattn::min_overlap_block(f, b);
  const double compute_s = 4 * d * c * c / f;
  const double transfer_s = 2 * c * d * 2 / b;
  EXPECT_NEAR(compute_s / transfer_s, 1.0, 1e-12);
}

}  // namespace
