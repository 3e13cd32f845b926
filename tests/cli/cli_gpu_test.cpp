// The command line on a GPU (label gpu): `attention --impl cuda-ring` against naive float64 on
// the same files for every layout and a few rank counts, and `compare --impl cuda | cuda-ring`
// passing on correct results and failing on perturbed ones. Every test skips, with the reason,
// without a CUDA device.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cli_harness.hpp"
#include "ringattn/core/npy.hpp"
#include "ringattn/cuda/attention.hpp"
#include "ringattn/reference/attention.hpp"

namespace {

#define RINGATTN_SKIP_WITHOUT_GPU()                                                      \
  do {                                                                                   \
    std::string why_;                                                                    \
    if (ringattn::cuda::device_count(&why_) == 0) GTEST_SKIP() << "no CUDA device: " << why_; \
  } while (0)

// attention --impl cuda-ring on float64 files, forward and backward, against naive float64. The
// tolerances are for the plumbing (shards, upload with conversion, unshard, the backward's
// inputs, results in the inputs' dtype); compare judges the accuracy.
TEST_F(CliTest, CudaRingMatchesNaive) {
  RINGATTN_SKIP_WITHOUT_GPU();
  const auto q = random<double>({2, 67, 4, 64}), k = random<double>({2, 67, 2, 64}), v = random<double>({2, 67, 2, 64});
  const auto dout = random<double>({2, 67, 4, 64});
  save_npy(path("q.npy"), q);
  save_npy(path("k.npy"), k);
  save_npy(path("v.npy"), v);
  save_npy(path("do.npy"), dout);
  struct Run {
    std::string dtype;
    double tol, grad_tol;
  };
  for (const Run& c : {Run{"fp32", 1e-4, 1e-3}, Run{"bf16", 5e-2, 1e-1}}) {
    for (const char* layout : {"contiguous", "striped", "zigzag"}) {
      for (int ranks : {1, 3, 4}) {
        for (bool causal : {false, true}) {
          SCOPED_TRACE(c.dtype + " " + layout + " x" + std::to_string(ranks) + (causal ? " causal" : ""));
          const CliRun r = run("attention --impl cuda-ring --dtype " + c.dtype + " --layout " + layout + " --ranks " +
                               std::to_string(ranks) + " --q " + path("q.npy") + " --k " + path("k.npy") + " --v " +
                               path("v.npy") + " --out " + path("o.npy") + " --lse " + path("lse.npy") + " --dout " +
                               path("do.npy") + " --dq " + path("dq.npy") + " --dk " + path("dk.npy") + " --dv " +
                               path("dv.npy") + (causal ? " --causal" : ""));
          ASSERT_EQ(r.code, 0) << r.err;
          EXPECT_EQ(dtype_of(load_npy(path("o.npy"))), DType::Float64);
          ref::AttentionOptions o;
          o.causal = causal;
          const auto want = ref::naive_forward(q, k, v, o);
          const auto g = ref::naive_backward(q, k, v, want.out, want.lse, dout, o);
          EXPECT_TRUE(Near(load_npy_as<double>(path("o.npy")), want.out, c.tol));
          EXPECT_TRUE(Near(load_npy_as<double>(path("lse.npy")), want.lse, c.tol));
          EXPECT_TRUE(Near(load_npy_as<double>(path("dq.npy")), g.dq, c.grad_tol));
          EXPECT_TRUE(Near(load_npy_as<double>(path("dk.npy")), g.dk, c.grad_tol));
          EXPECT_TRUE(Near(load_npy_as<double>(path("dv.npy")), g.dv, c.grad_tol));
        }
      }
    }
  }
}

// compare passes on the CUDA paths: each dtype, full and sampled, causal, GQA, odd lengths.
TEST_F(CliTest, CompareCudaPathsPass) {
  RINGATTN_SKIP_WITHOUT_GPU();
  const std::string seed = " --seed " + std::to_string(gen_() % 1000000);
  std::vector<std::string> runs = {
      "--impl cuda --dtype fp32 --seq 257 --heads 4 --heads-kv 2 --head-dim 64 --causal --backward",
      "--impl cuda --dtype bf16 --seq 300 --seq-kv 411 --heads 4 --heads-kv 1 --head-dim 128 --causal --backward",
      "--impl cuda --dtype fp16 --kernel tiled --seq 1000 --heads 2 --head-dim 64 --backward --sample-rows 32",
  };
  for (const char* layout : {"contiguous", "striped", "zigzag"}) {
    for (const char* dtype : {"fp32", "bf16", "fp16"}) {
      runs.push_back(std::string("--impl cuda-ring --ranks 4 --layout ") + layout + " --dtype " + dtype +
                     " --seq 333 --heads 4 --heads-kv 2 --head-dim 64 --causal --backward");
    }
    runs.push_back(std::string("--impl cuda-ring --ranks 3 --layout ") + layout +
                   " --dtype bf16 --seq 4099 --heads 4 --heads-kv 2 --head-dim 128 --causal --backward --sample-rows 48");
  }
  runs.push_back("--impl cuda-ring --ranks 2 --layout zigzag --dtype bf16 --seq 512 --heads 2 --head-dim 64 --causal "
                 "--logit-scale 10 --backward");
  for (const std::string& args : runs) {
    const CliRun r = run("compare " + args + seed, true);
    EXPECT_EQ(r.code, 0) << args << "\n" << r.out << r.err;
    EXPECT_NE(r.out.find("\nOK\n"), std::string::npos) << args << "\n" << r.out;
  }
}

// compare fails on a wrong CUDA ring result, full and sampled (a boundary row of zigzag over 4
// ranks of 320 tokens: chunks of 40).
TEST_F(CliTest, CompareCatchesAWrongCudaRingRow) {
  RINGATTN_SKIP_WITHOUT_GPU();
  const std::string base = "compare --impl cuda-ring --ranks 4 --layout zigzag --seq 320 --heads 4 --heads-kv 2 "
                           "--head-dim 64 --causal --backward --seed " + std::to_string(gen_() % 1000000);
  for (const std::string dtype : {"fp32", "bf16"}) {
    for (const std::string mode : {"", " --sample-rows 16"}) {
      for (const std::string p : {"o:40:1e-2", "lse:319:5e-2", "dq:0:nan", "dk:79:1e-2", "dv:all:1e-2"}) {
        const std::string args = base + " --dtype " + dtype + mode + " --perturb " + p;
        const CliRun r = run(args, true);
        EXPECT_EQ(r.code, 1) << args << "\n" << r.out << r.err;
        EXPECT_NE(r.out.find("\nFAILED\n"), std::string::npos) << args << "\n" << r.out;
      }
    }
  }
}

}  // namespace
