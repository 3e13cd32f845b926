// The SIMT emulator (simt_emulator.hpp) on small kernels, correct ones and ones broken on purpose:
// each broken kernel must give the finding (or the schedule-dependent result) it is written to
// give, and each correct one none, in every schedule.
#include "cuda/simt_emulator.hpp"
// (the emulator first: it maps the CUDA built-ins the kernels below use)

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

namespace {

using ringattn::simt::Findings;
using ringattn::simt::Schedule;
using ringattn::simt::SimtLauncher;

constexpr Schedule kSchedules[] = {Schedule::Ascending, Schedule::Descending, Schedule::Shuffled};

bool mentions(const Findings& f, const std::string& what) {
  for (const std::string& m : f.messages) {
    if (m.find(what) != std::string::npos) return true;
  }
  return false;
}

// ---- correct kernels --------------------------------------------------------------------------

// Every thread writes its coordinates once.
__global__ void coords_kernel(unsigned* out) {
  const unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
  out[4 * t] = blockIdx.x;
  out[4 * t + 1] = threadIdx.x;
  out[4 * t + 2] = blockDim.x;
  out[4 * t + 3] = gridDim.x;
}

TEST(SimtEmulator, EveryThreadOfTheGridRunsOnceWithItsCoordinates) {
  for (Schedule s : kSchedules) {
    SimtLauncher launch(s);
    std::vector<unsigned> out(4 * 3 * 96, 12345u);
    launch("coords", coords_kernel, 3, 96, out.data());
    ASSERT_TRUE(launch.findings().empty()) << launch.findings().summary();
    for (unsigned b = 0; b < 3; ++b) {
      for (unsigned t = 0; t < 96; ++t) {
        const unsigned g = b * 96 + t;
        ASSERT_EQ(out[4 * g], b);
        ASSERT_EQ(out[4 * g + 1], t);
        ASSERT_EQ(out[4 * g + 2], 96u);
        ASSERT_EQ(out[4 * g + 3], 3u);
      }
    }
    EXPECT_EQ(launch.launches(), std::vector<std::string>{"coords"});
  }
}

// A block sum through shared memory: every thread stores, a barrier, then a tree with a barrier
// per level, then a warp-level butterfly on the last 32 partial sums.
__global__ void block_sum_kernel(const float* in, float* out) {
  __shared__ float part[128];
  const unsigned t = threadIdx.x;
  part[t] = in[blockIdx.x * 128 + t];
  __syncthreads();
  for (unsigned half = 64; half >= 32; half /= 2) {
    if (t < half) part[t] += part[t + half];
    __syncthreads();
  }
  if (t < 32) {
    float v = part[t];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (t == 0) out[blockIdx.x] = v;
  }
}

TEST(SimtEmulator, BarriersAndShufflesComputeABlockSumInEverySchedule) {
  std::vector<float> in(4 * 128);
  for (std::size_t n = 0; n < in.size(); ++n) in[n] = static_cast<float>(n % 7);
  for (Schedule s : kSchedules) {
    SimtLauncher launch(s);
    std::vector<float> out(4, -1.0f);
    launch("block_sum", block_sum_kernel, 4, 128, in.data(), out.data());
    EXPECT_TRUE(launch.findings().empty()) << launch.findings().summary();
    for (unsigned b = 0; b < 4; ++b) {
      float want = 0.0f;
      for (unsigned t = 0; t < 128; ++t) want += in[b * 128 + t];
      EXPECT_EQ(out[b], want) << to_string(s) << " block " << b;
    }
  }
}

// __shfl_xor_sync with a width: lanes exchange within segments of `width`.
__global__ void shuffle_width_kernel(int* out) {
  const int lane = static_cast<int>(threadIdx.x);
  out[lane] = __shfl_xor_sync(0xffffffffu, lane, 4, 8);  // lane ^ 4, always inside its segment of 8
  __syncwarp();
  out[32 + lane] = __shfl_xor_sync(0xffffffffu, lane, 8, 8);  // outside the segment: its own value
}

TEST(SimtEmulator, ShuffleXorFollowsTheWidth) {
  SimtLauncher launch;
  std::vector<int> out(64, -1);
  launch("shuffle_width", shuffle_width_kernel, 1, 32, out.data());
  EXPECT_TRUE(launch.findings().empty()) << launch.findings().summary();
  for (int lane = 0; lane < 32; ++lane) {
    EXPECT_EQ(out[static_cast<std::size_t>(lane)], lane ^ 4);
    EXPECT_EQ(out[static_cast<std::size_t>(32 + lane)], lane);
  }
}

// Shared memory starts zeroed at every launch, whatever an earlier launch left in it.
__global__ void smem_leftover_kernel(float value, float* seen) {
  __shared__ float cell[1];
  seen[0] = cell[0];
  cell[0] = value;
}

TEST(SimtEmulator, SharedMemoryStartsZeroedAtEachLaunch) {
  SimtLauncher launch;
  float seen = -1.0f;
  launch("leftover", smem_leftover_kernel, 1, 1, 7.0f, &seen);
  EXPECT_EQ(seen, 0.0f);
  launch("leftover", smem_leftover_kernel, 1, 1, 9.0f, &seen);
  EXPECT_EQ(seen, 0.0f);
  EXPECT_EQ(launch.launches().size(), 2u);
}

// ---- broken on purpose -------------------------------------------------------------------------

// Each thread reads its right neighbour's value with no barrier after the stores: what it reads
// depends on whether the neighbour ran first. The emulator has no finding for it; the schedules
// disagree, which is how a test catches it.
__global__ void missing_barrier_kernel(float* out) {
  __shared__ float s[64];
  const unsigned t = threadIdx.x;
  s[t] = static_cast<float>(t + 1);
  // (a __syncthreads belongs here)
  out[t] = s[(t + 1) % 64];
}

TEST(SimtEmulator, AMissingBarrierMakesTheSchedulesDisagree) {
  std::vector<std::vector<float>> outs;
  for (Schedule s : kSchedules) {
    SimtLauncher launch(s);
    std::vector<float> out(64, -1.0f);
    launch("missing_barrier", missing_barrier_kernel, 1, 64, out.data());
    EXPECT_TRUE(launch.findings().empty()) << launch.findings().summary();
    outs.push_back(out);
  }
  EXPECT_NE(outs[0], outs[1]) << "ascending and descending orders must see different values";
  // Ascending: thread t runs before t + 1 (except the last, whose neighbour 0 ran): zeros.
  EXPECT_EQ(outs[0][0], 0.0f);
  EXPECT_EQ(outs[0][63], 1.0f);
  // Descending: the neighbour ran first.
  EXPECT_EQ(outs[1][0], 2.0f);
}

// The last warp returns before a __syncthreads the others wait at.
__global__ void early_exit_barrier_kernel(float* out) {
  if (threadIdx.x >= 32) return;
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}

TEST(SimtEmulator, FindsABarrierAfterSomeThreadsExited) {
  SimtLauncher launch;
  std::vector<float> out(64, 0.0f);
  launch("early_exit_barrier", early_exit_barrier_kernel, 1, 64, out.data());
  EXPECT_EQ(launch.findings().count, 1) << launch.findings().summary();
  EXPECT_TRUE(mentions(launch.findings(), "reached by 32 of 64 threads")) << launch.findings().summary();
}

// Even and odd threads wait at different __syncthreads.
__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.0f;
}

TEST(SimtEmulator, FindsDivergentBarriers) {
  SimtLauncher launch;
  std::vector<float> out(64, 0.0f);
  launch("divergent_barrier", divergent_barrier_kernel, 1, 64, out.data());
  EXPECT_EQ(launch.findings().count, 32) << launch.findings().summary();  // one per odd thread
  EXPECT_TRUE(mentions(launch.findings(), "divergent barriers")) << launch.findings().summary();
}

// Half the warp returns, the other half shuffles with the full mask.
__global__ void exited_lane_shuffle_kernel(float* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

TEST(SimtEmulator, FindsAShuffleWhoseMaskNamesExitedLanes) {
  SimtLauncher launch;
  std::vector<float> out(32, 0.0f);
  launch("exited_lane_shuffle", exited_lane_shuffle_kernel, 1, 32, out.data());
  EXPECT_EQ(launch.findings().count, 16) << launch.findings().summary();
  EXPECT_TRUE(mentions(launch.findings(), "which has exited")) << launch.findings().summary();
}

// A block of 48 threads: its second warp has 16 lanes, and a full-mask shuffle names 16 that are
// not there.
__global__ void partial_warp_shuffle_kernel(float* out) { out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 2.0f, 1); }

TEST(SimtEmulator, FindsAFullMaskShuffleInAPartialWarp) {
  SimtLauncher launch;
  std::vector<float> out(48, 0.0f);
  launch("partial_warp_shuffle", partial_warp_shuffle_kernel, 1, 48, out.data());
  EXPECT_EQ(launch.findings().count, 16) << launch.findings().summary();
  EXPECT_TRUE(mentions(launch.findings(), "does not exist")) << launch.findings().summary();
}

// The lanes of a warp shuffle at two different call sites.
__global__ void mismatched_shuffle_kernel(float* out) {
  float v = 1.0f;
  if (threadIdx.x % 2 == 0) {
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  } else {
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  }
  out[threadIdx.x] = v;
}

TEST(SimtEmulator, FindsLanesMeetingAtDifferentWarpOperations) {
  SimtLauncher launch;
  std::vector<float> out(32, 0.0f);
  launch("mismatched_shuffle", mismatched_shuffle_kernel, 1, 32, out.data());
  EXPECT_EQ(launch.findings().count, 16) << launch.findings().summary();
  EXPECT_TRUE(mentions(launch.findings(), "meets __shfl_xor_sync")) << launch.findings().summary();
}

// Lane 0 waits at __syncthreads while its warp waits for it at __syncwarp: neither can complete.
__global__ void deadlock_kernel(float* out) {
  if (threadIdx.x == 0) {
    __syncthreads();
  } else {
    __syncwarp();
  }
  out[threadIdx.x] = 1.0f;
}

TEST(SimtEmulator, FindsADeadlockAndStillReturns) {
  SimtLauncher launch;
  std::vector<float> out(32, 0.0f);
  launch("deadlock", deadlock_kernel, 2, 32, out.data());
  EXPECT_EQ(launch.findings().count, 2) << launch.findings().summary();  // one per block
  EXPECT_TRUE(mentions(launch.findings(), "deadlock")) << launch.findings().summary();
  // The launcher is usable afterwards.
  std::vector<unsigned> coords(4 * 32);
  launch("coords", coords_kernel, 1, 32, coords.data());
  EXPECT_EQ(launch.findings().count, 2);
  EXPECT_EQ(coords[4 * 31 + 1], 31u);
}

}  // namespace
