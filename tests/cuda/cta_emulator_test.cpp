// The emulated CTA's checker (cta_emulator.hpp), on small CTA programs written to be wrong.
//
// What this file is for: the emulation tests of the tensor-core kernels pass when the checker
// finds nothing, which means something only if the checker finds what it is meant to. Each test
// here runs one CTA program on the emulated CTA, the same shape as the kernels' pipelines (load a
// swizzled tile with cp.async, wait, barrier, read it with ldmatrix), with one step left out or
// misplaced, and requires the finding it should produce; the correct program must produce none
// and deliver the copied data.
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "cta_emulator.hpp"
#include "mma_emulator.hpp"

namespace ringattn::test {
namespace {

using Elem = tc::Bf16;
using Cta = HostCta<Elem>;
constexpr int kD = 64;
constexpr int kRows = 64;  // one 64 x 64 tile: 16 rows per warp

/// A global (kRows x kD) source tile of random 16-bit values, registered read-only.
struct Fixture {
  std::vector<std::uint16_t> src;
  GlobalMap globals;
  Findings findings;
  WarpCounters counters;

  Fixture() : src(static_cast<std::size_t>(kRows * kD)) {
    std::mt19937 rng(7);
    for (auto& x : src) x = static_cast<std::uint16_t>(rng() & 0x3FFF);  // finite bf16 values
    globals.add("src", src.data(), src.size() * 2, false);
  }
  void run(const std::function<void(Cta&)>& program, int smem_bytes = kRows * kD * 2 * 2) {
    run_grid<Elem>(1, 1, 1, static_cast<std::size_t>(smem_bytes), 0xFFFF, globals, findings, counters, program);
  }
  bool found(const std::string& what) const {
    for (const auto& m : findings.messages) {
      if (m.find(what) != std::string::npos) return true;
    }
    return false;
  }
};

void load(Cta& c, std::uint16_t* dst, const std::uint16_t* src) { tc::load_tile<kD, kRows>(c, dst, src, kD, kRows); }

/// The warp reads its 16 rows (k-step 0) of the tile with ldmatrix; returns the A fragment.
void read_rows(Cta& c, const std::uint16_t* tile, Lanes<std::uint32_t> (&a)[4]) {
  tc::ldsm_a<kD>(c.w(), a, tile, 16 * c.warp(), 0);
}

TEST(CtaEmulator, CorrectPipelineHasNoFindingAndDeliversTheData) {
  Fixture f;
  std::vector<std::uint32_t> got(static_cast<std::size_t>(tc::kWarps * 4 * 32));
  f.run([&](Cta& c) {
    load(c, c.smem(), f.src.data());
    c.commit();
    c.wait<0>();
    c.sync();
    Lanes<std::uint32_t> a[4];
    read_rows(c, c.smem(), a);
    for (int r = 0; r < 4; ++r) {
      for (int l = 0; l < 32; ++l) got[static_cast<std::size_t>((c.warp() * 4 + r) * 32 + l)] = a[r][l];
    }
  });
  EXPECT_EQ(f.findings.count, 0) << f.findings.summary();
  EXPECT_EQ(f.counters.bad_addresses, 0);
  // Lane l's register 0 holds row 16 w + l / 4, columns 2 (l % 4) and + 1 (mma_fragments.hpp).
  for (int w = 0; w < tc::kWarps; ++w) {
    for (int l = 0; l < 32; ++l) {
      const int row = 16 * w + l / 4;
      const int col = 2 * (l % 4);
      const std::uint32_t want = HostWarp<Elem>::pack(f.src[static_cast<std::size_t>(row * kD + col)],
                                                      f.src[static_cast<std::size_t>(row * kD + col + 1)]);
      ASSERT_EQ(got[static_cast<std::size_t>((w * 4) * 32 + l)], want) << "warp " << w << " lane " << l;
    }
  }
}

TEST(CtaEmulator, ReadBeforeTheWaitIsARace) {
  Fixture f;
  f.run([&](Cta& c) {
    load(c, c.smem(), f.src.data());
    c.commit();
    c.sync();  // a barrier is not a wait: the copies may still be in flight
    Lanes<std::uint32_t> a[4];
    read_rows(c, c.smem(), a);
    c.wait<0>();
  });
  EXPECT_GT(f.findings.count, 0);
  EXPECT_TRUE(f.found("may still be writing")) << f.findings.summary();
}

TEST(CtaEmulator, WaitWithoutABarrierIsARace) {
  Fixture f;
  f.run([&](Cta& c) {
    load(c, c.smem(), f.src.data());
    c.commit();
    c.wait<0>();  // this thread's copies landed, other threads' need a barrier to be seen
    Lanes<std::uint32_t> a[4];
    read_rows(c, c.smem(), a);
  });
  EXPECT_TRUE(f.found("wrote with no barrier between")) << f.findings.summary();
}

TEST(CtaEmulator, WaitingForTooFewGroupsIsARace) {
  Fixture f;
  f.run([&](Cta& c) {
    load(c, c.smem(), f.src.data());
    c.commit();
    load(c, c.smem() + kRows * kD, f.src.data());
    c.commit();
    c.wait<1>();  // the first group landed, the second may not have
    c.sync();
    Lanes<std::uint32_t> a[4];
    read_rows(c, c.smem(), a);               // fine
    read_rows(c, c.smem() + kRows * kD, a);  // a race
    c.wait<0>();
  });
  // Exactly the words of the second tile that the warps read: 16 rows x 16 columns each.
  EXPECT_EQ(f.findings.count, tc::kWarps * 16 * 16) << f.findings.summary();
  EXPECT_TRUE(f.found("may still be writing")) << f.findings.summary();
}

TEST(CtaEmulator, OverwritingWithoutABarrierIsARace) {
  Fixture f;
  f.run([&](Cta& c) {
    load(c, c.smem(), f.src.data());
    c.commit();
    c.wait<0>();
    c.sync();
    Lanes<std::uint32_t> a[4];
    read_rows(c, c.smem(), a);
    load(c, c.smem(), f.src.data());  // the next tile into the same stage, no barrier: WAR
    c.commit();
    c.wait<0>();
  });
  EXPECT_TRUE(f.found("overwrites a word warp")) << f.findings.summary();
}

TEST(CtaEmulator, StoreReadByAnotherWarpWithoutABarrierIsARace) {
  Fixture f;
  f.run([&](Cta& c) {
    // The warp stores its 16 rows, columns 0..15 (st.shared, 32 bits per lane), then reads the
    // rows of the next warp: without a barrier between, that is a race, whichever runs first.
    Lanes<std::uint32_t> v(0x3F803F80u);
    for (int part = 0; part < 4; ++part) {
      Lanes<int> offset;
      for (int l = 0; l < 32; ++l) {
        const int row = 16 * c.warp() + 4 * part + l / 8;
        const int col = 2 * (l % 8);
        offset[l] = mma::tile_offset<kD>(row, col / 8) + col % 8;
      }
      c.w().sts_u32(c.smem(), offset, v);
    }
    Lanes<std::uint32_t> a[4];
    tc::ldsm_a<kD>(c.w(), a, c.smem(), 16 * ((c.warp() + 1) % tc::kWarps), 0);
  });
  // Warps 0..2 read rows not yet stored (their writers then overwrite what they read), warp 3
  // reads warp 0's rows stored in the same epoch.
  EXPECT_TRUE(f.found("wrote with no barrier between")) << f.findings.summary();
  EXPECT_TRUE(f.found("overwrites a word warp")) << f.findings.summary();
}

TEST(CtaEmulator, StaleSharedMemoryIsAFinding) {
  Fixture f;
  f.run([&](Cta& c) {
    Lanes<std::uint32_t> a[4];
    read_rows(c, c.smem(), a);  // nothing was loaded
  });
  EXPECT_TRUE(f.found("nothing wrote")) << f.findings.summary();
}

TEST(CtaEmulator, ABarrierNotEveryWarpReachesIsAFinding) {
  Fixture f;
  f.run([&](Cta& c) {
    if (c.warp() == 2) return;  // leaves early
    c.sync();
  });
  EXPECT_TRUE(f.found("a barrier that not every warp reaches")) << f.findings.summary();
}

TEST(CtaEmulator, CopiesInFlightAtExitAreAFinding) {
  Fixture f;
  f.run([&](Cta& c) {
    load(c, c.smem(), f.src.data());
    c.commit();
  });
  EXPECT_TRUE(f.found("cp.async copies in flight")) << f.findings.summary();
}

TEST(CtaEmulator, GlobalReadsOutsideTheBuffersAreFindings) {
  Fixture f;
  f.run([&](Cta& c) {
    // Rows 0..63 of a source that starts 8 rows late: the last 8 rows lie past the buffer.
    load(c, c.smem(), f.src.data() + 8 * kD);
    c.commit();
    c.wait<0>();
  });
  EXPECT_TRUE(f.found("outside every buffer")) << f.findings.summary();
}

TEST(CtaEmulator, GlobalWritesOutsideTheBuffersAreFindingsAndSkipped) {
  Fixture f;
  std::vector<float> o(64, 0.0f);  // an 8 x 8 output
  f.globals.add("O", o.data(), o.size() * 4, true, 4, true);
  f.run([&](Cta& c) {
    if (c.warp() != 0) return;
    // Lane l stores row l / 4, columns 2 (l % 4) and + 1, with a row stride of 16 instead of
    // 8: rows 4..7 land past the buffer (the warp must skip them, not write there).
    tc::OutBlock out;
    out.out = o.data();
    out.row_stride = 16;
    out.rows = 8;
    Lanes<int> row, col;
    for (int l = 0; l < 32; ++l) {
      row[l] = l / 4;
      col[l] = 2 * (l % 4);
    }
    c.w().store_o(out, row, col, Lanes<float>(1.0f), Lanes<float>(2.0f));
    tc::OutBlock into_source = out;  // and one store into a read-only buffer
    into_source.out = f.src.data();
    into_source.row_stride = 0;
    into_source.rows = 1;
    c.w().store_o(into_source, Lanes<int>(0), Lanes<int>(0), Lanes<float>(1.0f), Lanes<float>(1.0f));
  });
  EXPECT_TRUE(f.found("outside every buffer")) << f.findings.summary();
  EXPECT_TRUE(f.found("writes the read-only buffer src")) << f.findings.summary();
  EXPECT_EQ(o[0], 1.0f);
  EXPECT_EQ(o[1], 2.0f);
  EXPECT_EQ(o[16], 1.0f);  // row 1
}

TEST(CtaEmulator, MisalignedCpAsyncIsAFinding) {
  Fixture f;
  f.run([&](Cta& c) {
    c.for_each_thread([&](int tid) {
      if (tid == 0) c.cp_async_16(c.smem() + 4, f.src.data(), 16);  // 8 bytes into the tile
    });
    c.commit();
    c.wait<0>();
  });
  EXPECT_TRUE(f.found("not aligned")) << f.findings.summary();
}

TEST(CtaEmulator, SharedAccessOutsideTheAllocationIsAFinding) {
  Fixture f;
  f.run(
      [&](Cta& c) {
        load(c, c.smem() + kRows * kD, f.src.data());  // a second tile the CTA did not allocate
        c.commit();
        c.wait<0>();
      },
      kRows * kD * 2);
  EXPECT_TRUE(f.found("outside the CTA's allocation")) << f.findings.summary();
}

}  // namespace
}  // namespace ringattn::test
