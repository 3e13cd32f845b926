// The command line as a user drives it: every --impl/--layout/--ranks combination against the
// in-process naive result, and every kind of bad input: a non-zero exit, exactly one line on
// stderr, and no output file.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

#include "cli_harness.hpp"
#include "ringattn/core/npy.hpp"
#include "ringattn/reference/attention.hpp"
#if RINGATTN_CLI_TEST_HAVE_CUDA
#include "ringattn/cuda/attention.hpp"
#endif

namespace {

// ---- good runs: every impl, layout and rank count against the in-process naive result ----------

struct GoodCase {
  std::string impl;
  std::string layout;
  int ranks;
  bool causal;
};

void PrintTo(const GoodCase& c, std::ostream* os) {
  *os << c.impl << " " << c.layout << " x" << c.ranks << (c.causal ? " causal" : "");
}

class CliAgrees : public CliTest, public ::testing::WithParamInterface<GoodCase> {};

TEST_P(CliAgrees, ForwardAndBackwardMatchNaiveFloat64) {
  const GoodCase c = GetParam();
  // Odd lengths, GQA, S_q != S_kv for the non-ring impls.
  const std::int64_t sq = c.impl == "ring" ? 37 : 29, skv = 37;
  const auto q = random<double>({2, sq, 4, 16}), k = random<double>({2, skv, 2, 16}),
             v = random<double>({2, skv, 2, 16}), dout = random<double>({2, sq, 4, 16});
  save_npy(path("q.npy"), q);
  save_npy(path("k.npy"), k);
  save_npy(path("v.npy"), v);
  save_npy(path("do.npy"), dout);
  std::string args = "attention --q " + path("q.npy") + " --k " + path("k.npy") + " --v " + path("v.npy") +
                     " --out " + path("o.npy") + " --lse " + path("lse.npy") + " --dout " + path("do.npy") +
                     " --dq " + path("dq.npy") + " --dk " + path("dk.npy") + " --dv " + path("dv.npy") +
                     " --impl " + c.impl + (c.causal ? " --causal" : "") + " --block-q 5 --block-kv 7";
  if (c.impl == "ring") args += " --layout " + c.layout + " --ranks " + std::to_string(c.ranks);
  const CliRun r = run(args);
  ASSERT_EQ(r.code, 0) << r.err;
  ref::AttentionOptions o;
  o.causal = c.causal;
  const auto want = ref::naive_forward(q, k, v, o);
  const auto g = ref::naive_backward(q, k, v, want.out, want.lse, dout, o);
  EXPECT_TRUE(Near(load_npy_as<double>(path("o.npy")), want.out, 1e-12));
  EXPECT_TRUE(Near(load_npy_as<double>(path("lse.npy")), want.lse, 1e-12));
  EXPECT_TRUE(Near(load_npy_as<double>(path("dq.npy")), g.dq, 1e-12));
  EXPECT_TRUE(Near(load_npy_as<double>(path("dk.npy")), g.dk, 1e-12));
  EXPECT_TRUE(Near(load_npy_as<double>(path("dv.npy")), g.dv, 1e-12));
}

std::vector<GoodCase> good_cases() {
  std::vector<GoodCase> v;
  for (bool causal : {false, true}) {
    v.push_back({"naive", "", 0, causal});
    v.push_back({"blockwise", "", 0, causal});
    for (const char* layout : {"contiguous", "striped", "zigzag"}) {
      for (int n : {1, 2, 3, 4, 8}) {
        if (std::string(layout) == "zigzag" && 2 * n > 37) continue;
        v.push_back({"ring", layout, n, causal});
      }
    }
  }
  return v;
}

INSTANTIATE_TEST_SUITE_P(AllPaths, CliAgrees, ::testing::ValuesIn(good_cases()),
                         [](const ::testing::TestParamInfo<GoodCase>& i) {
                           std::string n = i.param.impl;
                           if (!i.param.layout.empty()) n += "_" + i.param.layout + "_" + std::to_string(i.param.ranks);
                           return n + (i.param.causal ? "_causal" : "_full");
                         });

TEST_F(CliTest, DecodeMatchesNaive) {
  const auto q = random<double>({2, 1, 8, 16}), k = random<double>({2, 301, 2, 16}), v = random<double>({2, 301, 2, 16});
  save_npy(path("q.npy"), q);
  save_npy(path("k.npy"), k);
  save_npy(path("v.npy"), v);
  for (int splits : {1, 7, 301, 400}) {
    for (bool causal : {false, true}) {
      const CliRun r = run("decode --q " + path("q.npy") + " --k " + path("k.npy") + " --v " + path("v.npy") +
                        " --splits " + std::to_string(splits) + " --out " + path("o.npy") + " --lse " +
                        path("lse.npy") + (causal ? " --causal" : ""));
      ASSERT_EQ(r.code, 0) << r.err;
      ref::AttentionOptions o;
      o.causal = causal;
      const auto want = ref::naive_forward(q, k, v, o);
      EXPECT_TRUE(Near(load_npy_as<double>(path("o.npy")), want.out, 1e-12)) << splits;
      EXPECT_TRUE(Near(load_npy_as<double>(path("lse.npy")), want.lse, 1e-12)) << splits;
    }
  }
}

TEST_F(CliTest, Float32InputsGiveFloat32Outputs) {
  save_npy(path("q.npy"), random<float>({1, 16, 2, 8}));
  save_npy(path("k.npy"), random<float>({1, 16, 2, 8}));
  save_npy(path("v.npy"), random<float>({1, 16, 2, 8}));
  const CliRun r = run("attention --impl ring --layout zigzag --ranks 2 --causal --q " + path("q.npy") + " --k " +
                    path("k.npy") + " --v " + path("v.npy") + " --out " + path("o.npy"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(dtype_of(load_npy(path("o.npy"))), DType::Float32);
}

// ---- --impl cuda ----------------------------------------------------------------------------

// With a GPU: the CUDA path against naive float64 on the same float64 files, each dtype and
// kernel, forward and backward, and decode. The tolerances are for the plumbing (upload with
// conversion, output in the input's dtype, every output written); cuda_kernel_test judges the
// kernels' accuracy.
TEST_F(CliTest, CudaMatchesNaive) {
#if !RINGATTN_CLI_TEST_HAVE_CUDA
  GTEST_SKIP() << "this build has no CUDA";
#else
  std::string why;
  if (ringattn::cuda::device_count(&why) == 0) GTEST_SKIP() << "no CUDA device: " << why;
  const auto q = random<double>({2, 37, 4, 64}), k = random<double>({2, 53, 2, 64}), v = random<double>({2, 53, 2, 64});
  const auto dout = random<double>({2, 37, 4, 64});
  save_npy(path("q.npy"), q);
  save_npy(path("k.npy"), k);
  save_npy(path("v.npy"), v);
  save_npy(path("do.npy"), dout);
  struct Run {
    std::string dtype, kernel;
    double tol, grad_tol;
  };
  for (const Run& c : {Run{"fp32", "simple", 1e-4, 1e-3}, Run{"fp32", "tiled", 1e-4, 1e-3},
                       Run{"fp32", "auto", 1e-4, 1e-3}, Run{"fp16", "simple", 1e-2, 3e-2},
                       Run{"bf16", "auto", 5e-2, 1e-1}}) {
    for (bool causal : {false, true}) {
      SCOPED_TRACE(c.dtype + " " + c.kernel + (causal ? " causal" : ""));
      const CliRun r = run("attention --impl cuda --dtype " + c.dtype + " --kernel " + c.kernel + " --q " +
                           path("q.npy") + " --k " + path("k.npy") + " --v " + path("v.npy") + " --out " +
                           path("o.npy") + " --lse " + path("lse.npy") + " --dout " + path("do.npy") + " --dq " +
                           path("dq.npy") + " --dk " + path("dk.npy") + " --dv " + path("dv.npy") +
                           (causal ? " --causal" : ""));
      ASSERT_EQ(r.code, 0) << r.err;
      EXPECT_EQ(dtype_of(load_npy(path("o.npy"))), DType::Float64);  // the inputs' dtype
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
  const auto q1 = random<float>({2, 1, 8, 16}), k1 = random<float>({2, 301, 2, 16}), v1 = random<float>({2, 301, 2, 16});
  save_npy(path("q1.npy"), q1);
  save_npy(path("k1.npy"), k1);
  save_npy(path("v1.npy"), v1);
  for (int splits : {1, 7, 400}) {
    const CliRun r = run("decode --impl cuda --q " + path("q1.npy") + " --k " + path("k1.npy") + " --v " +
                         path("v1.npy") + " --splits " + std::to_string(splits) + " --out " + path("o1.npy") +
                         " --lse " + path("lse1.npy"));
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(dtype_of(load_npy(path("o1.npy"))), DType::Float32);
    const auto widen = [](const Tensor<float>& t) {
      Tensor<double> d(t.shape());
      for (std::int64_t n = 0; n < t.size(); ++n) d[n] = t[n];
      return d;
    };
    const auto want = ref::naive_forward(widen(q1), widen(k1), widen(v1), {});
    EXPECT_TRUE(Near(load_npy_as<double>(path("o1.npy")), want.out, 1e-4)) << splits;
    EXPECT_TRUE(Near(load_npy_as<double>(path("lse1.npy")), want.lse, 1e-4)) << splits;
  }
#endif
}

// Without a GPU (or without CUDA in the build) --impl cuda is one clear line, exit 1, no file.
TEST_F(CliTest, CudaWithoutGpuIsOneLineError) {
#if RINGATTN_CLI_TEST_HAVE_CUDA
  std::string why;
  if (ringattn::cuda::device_count(&why) > 0) GTEST_SKIP() << "a CUDA device is visible: CudaMatchesNaive runs instead";
  const std::string expect = "no CUDA device: " + why;
#else
  const std::string expect = "built without CUDA";
#endif
  const std::vector<std::string> inputs = save_small_inputs(/*with_dout=*/true);
  const std::string qkv = " --q " + path("q.npy") + " --k " + path("k.npy") + " --v " + path("v.npy");
  for (const std::string& args :
       {"attention --impl cuda" + qkv + " --out " + path("o.npy"),
        "attention --impl cuda --dtype bf16 --kernel tiled --causal" + qkv + " --out " + path("o.npy") + " --lse " +
            path("lse.npy") + " --dout " + path("do.npy") + " --dq " + path("dq.npy") + " --dk " + path("dk.npy") +
            " --dv " + path("dv.npy"),
        "decode --impl cuda --splits 3 --dtype fp16" + qkv + " --out " + path("o.npy")}) {
    expect_refused(args, expect, inputs);
  }
}

// Without a GPU (or without CUDA in the build) --impl cuda-ring is one clear line, exit 1, no file,
// for attention and compare; in a CUDA build a split the layout cannot make is refused first (it
// needs no GPU to say so).
TEST_F(CliTest, CudaRingWithoutGpuIsOneLineError) {
#if RINGATTN_CLI_TEST_HAVE_CUDA
  std::string why;
  if (ringattn::cuda::device_count(&why) > 0) GTEST_SKIP() << "a CUDA device is visible: cli_gpu_test runs instead";
  const std::string expect = "no CUDA device: " + why;
#else
  const std::string expect = "built without CUDA";
#endif
  const std::vector<std::string> inputs = save_small_inputs(/*with_dout=*/true);
  const std::string qkv = " --q " + path("q.npy") + " --k " + path("k.npy") + " --v " + path("v.npy");
  const std::string bwd = " --dout " + path("do.npy") + " --dq " + path("dq.npy") + " --dk " + path("dk.npy") +
                          " --dv " + path("dv.npy");
  for (const std::string& args :
       {"attention --impl cuda-ring --ranks 2 --layout zigzag" + qkv + " --out " + path("o.npy"),
        "attention --impl cuda-ring --ranks 4 --layout striped --dtype bf16 --kernel tiled --causal" + qkv +
            " --out " + path("o.npy") + " --lse " + path("lse.npy") + bwd,
        std::string("compare --impl cuda-ring --ranks 2 --seq 64 --heads 2 --head-dim 16"),
        "compare --impl cuda-ring --ranks 2 --layout zigzag" + qkv}) {
    expect_refused(args, expect, inputs);
  }
#if RINGATTN_CLI_TEST_HAVE_CUDA
  // 16 tokens cannot be cut into 2 x 9 zigzag chunks: the layout's message, before the device.
  for (const std::string& args : {"attention --impl cuda-ring --ranks 9 --layout zigzag" + qkv + " --out " + path("o.npy"),
                                  "compare --impl cuda-ring --ranks 9 --layout zigzag" + qkv}) {
    expect_refused(args, "at least 18 tokens", inputs);
  }
#endif
}

// `mpirun -np 2 ringattn attention --impl cuda-ring` without a GPU: every rank stops, one line
// (from rank 0), exit 1, no file; without NCCL in the build it says so.
TEST_F(CliTest, CudaRingUnderMpirunWithoutGpuIsOneLineError) {
#if !RINGATTN_CLI_TEST_HAVE_CUDA || !defined(RINGATTN_CLI_TEST_MPIEXEC)
  GTEST_SKIP() << "needs a build with CUDA and MPI";
#else
  std::string why;
  if (ringattn::cuda::device_count(&why) > 0) GTEST_SKIP() << "a CUDA device is visible";
#if defined(RINGATTN_HAVE_NCCL) && defined(RINGATTN_HAVE_MPI)
  const std::string expect = "no CUDA device: " + why;
#else
  const std::string expect = "built without";
#endif
  const std::vector<std::string> inputs = save_small_inputs(/*with_dout=*/false);
  // What every mpirun of the tests needs (the top-level CMakeLists.txt explains each).
  const std::string env = "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
                          "OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl_vader_single_copy_mechanism=none ";
  const CliRun r = run("attention --impl cuda-ring --layout zigzag --timeout 60 --q " + path("q.npy") + " --k " +
                           path("k.npy") + " --v " + path("v.npy") + " --out " + path("o.npy"),
                       false, env + RINGATTN_CLI_TEST_MPIEXEC + " -np 2 ");
  EXPECT_EQ(r.code, 1);
  // One line of ours (mpirun adds its own report of the non-zero exit after it).
  std::istringstream lines(r.err);
  int ours = 0;
  for (std::string line; std::getline(lines, line);) ours += line.rfind("ringattn: error: ", 0) == 0;
  EXPECT_EQ(ours, 1) << r.err;
  EXPECT_NE(r.err.find(expect), std::string::npos) << "message: " << r.err;
  EXPECT_EQ(outputs_present(inputs), std::vector<std::string>{});
#endif
}

// ---- bad input: one line, non-zero exit, no output file ----------------------------------------

struct BadCase {
  std::string name;
  std::string args;  // {d} is replaced by the folder
  std::string expect;  // a fragment the message must contain
};

void PrintTo(const BadCase& c, std::ostream* os) { *os << c.name; }

class CliRejects : public CliTest, public ::testing::WithParamInterface<BadCase> {
 protected:
  void write_inputs() {
    save_npy(path("q.npy"), random<double>({1, 16, 4, 8}));
    save_npy(path("k.npy"), random<double>({1, 16, 2, 8}));
    save_npy(path("v.npy"), random<double>({1, 16, 2, 8}));
    save_npy(path("do.npy"), random<double>({1, 16, 4, 8}));
    save_npy(path("q32.npy"), random<float>({1, 16, 4, 8}));
    save_npy(path("q3d.npy"), random<double>({16, 4, 8}));
    save_npy(path("q3h.npy"), random<double>({1, 16, 3, 8}));
    save_npy(path("qd4.npy"), random<double>({1, 16, 4, 4}));
    save_npy(path("q0.npy"), random<double>({1, 0, 4, 8}));
    save_npy(path("k17.npy"), random<double>({1, 17, 2, 8}));
    save_npy(path("k5.npy"), random<double>({1, 5, 2, 8}));
    save_npy(path("v5.npy"), random<double>({1, 5, 2, 8}));
    auto nan = random<double>({1, 16, 2, 8});
    nan[37] = std::nan("");
    save_npy(path("knan.npy"), nan);
    auto inf = random<double>({1, 16, 4, 8});
    inf[5] = INFINITY;
    save_npy(path("qinf.npy"), inf);
    // A truncated file and a file that is not .npy at all.
    auto bytes = encode_npy(random<double>({1, 16, 4, 8}));
    bytes.resize(bytes.size() - 9);
    std::ofstream(path("trunc.npy"), std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()),
                                                             static_cast<std::streamsize>(bytes.size()));
    std::ofstream(path("text.npy")) << "not a numpy file\n";
    fs::create_directories(dir_ / "adir.npy");
    std::ofstream(path("bad.json")) << "{\"name\": \"x\", \"device\": {\n";
    std::ofstream(path("zero.json")) << R"({"name": "z", "device": {"name": "d", "peak_tflops": {"bf16": 100, "fp16": 100},
      "memory_gib": 80, "memory_bandwidth_gbps": 2000}, "intra_node_link": {"bandwidth_gbps": 0}})";
  }
};

TEST_F(CliTest, SimulateWritesTraceAndCsv) {
  const CliRun r = run("simulate --cluster dgx-h100-ib --devices 16 --seq-len 65536 --heads 8 --kv-heads 2 "
                       "--head-dim 128 --causal --layout zigzag --pass fwd+bwd --json --trace " + path("t.json") +
                       " --csv " + path("r.csv"));
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::is_regular_file(path("t.json")));
  EXPECT_GT(fs::file_size(path("t.json")), 1000u);
  std::ifstream csv(path("r.csv"));
  std::string header, row, extra;
  EXPECT_TRUE(std::getline(csv, header) && std::getline(csv, row));
  EXPECT_FALSE(std::getline(csv, extra));
  EXPECT_EQ(header.rfind("value,layout,devices,seq_len,block_size,total_time_s", 0), 0u);
  const CliRun s = run("simulate --cluster a100-nvlink --devices 8 --block-size 4096 --heads 8 --head-dim 128 --ideal "
                       "--sweep block-size --csv " + path("s.csv"));
  EXPECT_EQ(s.code, 0) << s.err;
  EXPECT_TRUE(fs::is_regular_file(path("s.csv")));
}

TEST_F(CliTest, SimulateDrawsSvg) {
  const CliRun r = run("simulate --cluster h100-ib --devices 4 --seq-len 16384 --heads 8 --head-dim 128 --causal "
                       "--layout zigzag --pass fwd+bwd --svg " + path("t.svg"));
  EXPECT_EQ(r.code, 0) << r.err;
  std::stringstream t;
  t << std::ifstream(path("t.svg")).rdbuf();
  const std::string text = t.str();
  EXPECT_EQ(text.rfind("<svg ", 0), 0u);
  EXPECT_NE(text.find("dev 3 compute"), std::string::npos);
  EXPECT_NE(text.find("</svg>"), std::string::npos);
  const CliRun s = run("simulate --cluster a100-ib --devices 8 --block-size 4096 --heads 8 --head-dim 128 --ideal "
                       "--sweep block-size --svg " + path("s.svg"));
  EXPECT_EQ(s.code, 0) << s.err;
  std::stringstream sf;
  sf << std::ifstream(path("s.svg")).rdbuf();
  const std::string sweep = sf.str();
  EXPECT_NE(sweep.find("recommended: 23544"), std::string::npos);  // as printed by the sweep
  EXPECT_NE(sweep.find("c = F/B = 24960"), std::string::npos);     // the paper's Table 2 value
}

TEST_P(CliRejects, OneLineNoOutput) {
  write_inputs();
  std::vector<std::string> inputs;
  for (const auto& e : fs::directory_iterator(dir_)) inputs.push_back(e.path().filename().string());
  std::string args = GetParam().args;
  for (std::size_t p; (p = args.find("{d}")) != std::string::npos;) args.replace(p, 3, dir_.string());
  const CliRun r = run(args);
  EXPECT_TRUE(OneLineError(r));
  EXPECT_NE(r.err.find(GetParam().expect), std::string::npos) << "message: " << r.err;
  EXPECT_EQ(outputs_present(inputs), std::vector<std::string>{});
}

const std::string kQKV = " --q {d}/q.npy --k {d}/k.npy --v {d}/v.npy --out {d}/o.npy --lse {d}/lse.npy";
const std::string kSimOut = " --trace {d}/trace.json --csv {d}/out.csv";
const std::string kBwd = " --dout {d}/do.npy --dq {d}/dq.npy --dk {d}/dk.npy --dv {d}/dv.npy";

INSTANTIATE_TEST_SUITE_P(
    BadInput, CliRejects,
    ::testing::Values(
        BadCase{"MissingFile", "attention --q {d}/nope.npy --k {d}/k.npy --v {d}/v.npy --out {d}/o.npy", "nope.npy"},
        BadCase{"Directory", "attention --q {d}/adir.npy --k {d}/k.npy --v {d}/v.npy --out {d}/o.npy", "adir.npy"},
        BadCase{"Truncated", "attention --q {d}/trunc.npy --k {d}/k.npy --v {d}/v.npy --out {d}/o.npy", "trunc.npy"},
        BadCase{"NotNpy", "attention --q {d}/text.npy --k {d}/k.npy --v {d}/v.npy --out {d}/o.npy", "text.npy"},
        BadCase{"MixedDtype", "attention --q {d}/q32.npy --k {d}/k.npy --v {d}/v.npy --out {d}/o.npy", "same dtype"},
        BadCase{"Rank3", "attention --q {d}/q3d.npy --k {d}/k.npy --v {d}/v.npy --out {d}/o.npy", "(B, S_q, H_q, D)"},
        BadCase{"HeadsNotMultiple", "attention --q {d}/q3h.npy --k {d}/k.npy --v {d}/v.npy --out {d}/o.npy", "multiple of H_kv"},
        BadCase{"HeadDimMismatch", "attention --q {d}/qd4.npy --k {d}/k.npy --v {d}/v.npy --out {d}/o.npy", "head dim"},
        BadCase{"KVMismatch", "attention --q {d}/q.npy --k {d}/k17.npy --v {d}/v.npy --out {d}/o.npy", "same shape"},
        BadCase{"ZeroDim", "attention --q {d}/q0.npy --k {d}/k.npy --v {d}/v.npy --out {d}/o.npy", "at least 1"},
        BadCase{"NaN", "attention --q {d}/q.npy --k {d}/knan.npy --v {d}/v.npy --out {d}/o.npy", "non-finite"},
        BadCase{"Inf", "attention --q {d}/qinf.npy --k {d}/k.npy --v {d}/v.npy --out {d}/o.npy", "non-finite"},
        BadCase{"ZigzagTooShort", "attention --impl ring --layout zigzag --ranks 3 --q {d}/q.npy --k {d}/k5.npy --v {d}/v5.npy --out {d}/o.npy", "at least 6 tokens"},
        BadCase{"ZeroRanks", "attention --impl ring --ranks 0" + kQKV, "at least 1 rank"},
        BadCase{"LayoutWithoutRing", "attention --layout zigzag" + kQKV, "only to --impl ring"},
        BadCase{"UnknownLayout", "attention --impl ring --layout zig-zag" + kQKV, "zig-zag"},
        BadCase{"UnknownImpl", "attention --impl fast" + kQKV, "fast"},
        BadCase{"PartialBackward", "attention --dout {d}/do.npy --dq {d}/dq.npy" + kQKV, "all of --dout"},
        BadCase{"DoutWrongShape", "attention --q {d}/q.npy --k {d}/k.npy --v {d}/v.npy --out {d}/o.npy --dout {d}/k.npy --dq {d}/dq.npy --dk {d}/dk.npy --dv {d}/dv.npy", "Q's shape"},
        BadCase{"NegativeScale", "attention --scale -1" + kQKV, "scale"},
        BadCase{"NanScale", "attention --scale nan" + kQKV, "scale"},
        BadCase{"ZeroBlock", "attention --block-q 0" + kQKV, "block_q"},
        BadCase{"OutputFolderMissing", "attention --q {d}/q.npy --k {d}/k.npy --v {d}/v.npy --out {d}/no/such/o.npy", "does not exist"},
        BadCase{"OutputOverwritesInput", "attention --q {d}/q.npy --k {d}/k.npy --v {d}/v.npy --out {d}/k.npy", "overwrite"},
        BadCase{"SameOutputTwice", "attention --q {d}/q.npy --k {d}/k.npy --v {d}/v.npy --out {d}/o.npy --lse {d}/o.npy", "own file"},
        BadCase{"MissingRequired", "attention --q {d}/q.npy --k {d}/k.npy --out {d}/o.npy", "--v"},
        BadCase{"DecodeZeroSplits", "decode --q {d}/q.npy --k {d}/k.npy --v {d}/v.npy --splits 0 --out {d}/o.npy", "splits"},
        BadCase{"DecodeBadSplits", "decode --q {d}/q.npy --k {d}/k.npy --v {d}/v.npy --splits two --out {d}/o.npy", "splits"},
        BadCase{"CudaBadDtype", "attention --impl cuda --dtype fp8" + kQKV, "fp8"},
        BadCase{"CudaUnknownKernel", "attention --impl cuda --kernel fast" + kQKV, "fast"},
        BadCase{"KernelWithoutCuda", "attention --kernel tiled" + kQKV, "only to --impl cuda"},
        BadCase{"DtypeWithoutCuda", "attention --impl ring --dtype bf16" + kQKV, "only to --impl cuda"},
        BadCase{"CudaBlockSizes", "attention --impl cuda --block-kv 64" + kQKV, "--block-q and --block-kv"},
        BadCase{"CudaLayout", "attention --impl cuda --layout zigzag" + kQKV, "only to --impl ring"},
        BadCase{"DecodeDtypeWithoutCuda", "decode --q {d}/q.npy --k {d}/k.npy --v {d}/v.npy --splits 2 --dtype bf16 --out {d}/o.npy", "only to --impl cuda"},
        BadCase{"DecodeUnknownImpl", "decode --impl gpu --q {d}/q.npy --k {d}/k.npy --v {d}/v.npy --splits 2 --out {d}/o.npy", "gpu"},
        BadCase{"CudaRingBlockSizes", "attention --impl cuda-ring --block-q 8" + kQKV, "--block-q and --block-kv"},
        BadCase{"TimeoutWithoutMpiOrCudaRing", "attention --impl ring --timeout 5" + kQKV, "mpi-ring and cuda-ring"},
        BadCase{"CompareMismatchedShapes", "compare --impl naive --q {d}/q.npy --k {d}/k17.npy --v {d}/v.npy", "same shape"},
        BadCase{"CompareDoutShape", "compare --impl naive --q {d}/q.npy --k {d}/k.npy --v {d}/v.npy --dout {d}/k.npy", "Q's shape"},
        BadCase{"CompareNaN", "compare --impl naive --q {d}/q.npy --k {d}/knan.npy --v {d}/v.npy", "non-finite"},
        BadCase{"CompareZigzagTooShort", "compare --impl ring --layout zigzag --ranks 3 --seq 5 --heads 2 --head-dim 8", "at least 6 tokens"},
        BadCase{"CompareZeroRanks", "compare --impl ring --ranks 0 --seq 8 --heads 2 --head-dim 8", "at least 1 rank"},
        BadCase{"CompareHeadsNotMultiple", "compare --impl naive --seq 8 --heads 3 --heads-kv 2 --head-dim 8", "multiple of H_kv"},
        BadCase{"CompareZeroSeq", "compare --impl naive --seq 0 --heads 2 --head-dim 8", "at least 1"},
        BadCase{"CompareDtypeOnCpu", "compare --impl ring --dtype bf16 --seq 8", "only to --impl cuda"},
        BadCase{"CompareKernelOnCpu", "compare --impl blockwise --kernel tiled --seq 8", "only to --impl cuda"},
        BadCase{"CompareLayoutOnNaive", "compare --impl naive --layout zigzag --seq 8", "only to --impl ring"},
        BadCase{"CompareFilesAndSizes", "compare --impl naive --q {d}/q.npy --k {d}/k.npy --v {d}/v.npy --seq 8", "does not apply"},
        BadCase{"ComparePartialFiles", "compare --impl naive --q {d}/q.npy --k {d}/k.npy", "all of --q, --k and --v"},
        BadCase{"CompareDoutWithoutFiles", "compare --impl naive --seq 8 --dout {d}/do.npy", "--dout needs"},
        BadCase{"CompareFullAndSampled", "compare --impl naive --seq 8 --full --sample-rows 4", "exclude"},
        BadCase{"CompareZeroSampleRows", "compare --impl naive --seq 8 --sample-rows 0", "--sample-rows"},
        BadCase{"CompareBadPerturb", "compare --impl naive --seq 8 --perturb x:1", "WHAT"},
        BadCase{"ComparePerturbRow", "compare --impl naive --seq 8 --heads 2 --head-dim 8 --perturb o:8", "outside"},
        BadCase{"ComparePerturbNoGrad", "compare --impl naive --seq 8 --heads 2 --head-dim 8 --perturb dq:1", "--backward"},
        BadCase{"CompareBadLogitScale", "compare --impl naive --seq 8 --logit-scale nan", "--logit-scale"},
        BadCase{"CompareNoImpl", "compare --seq 8", "--impl"},
        BadCase{"CompareUnknownImpl", "compare --impl mpi-ring --seq 8", "mpi-ring"},
        BadCase{"NoSubcommand", "", "subcommand"},
        BadCase{"SimUnknownPreset", "simulate --cluster h100 --devices 8 --seq-len 8192 --heads 8 --head-dim 128" + kSimOut, "not a preset"},
        BadCase{"SimMalformedJson", "simulate --cluster {d}/bad.json --devices 8 --seq-len 8192 --heads 8 --head-dim 128" + kSimOut, "bad.json"},
        BadCase{"SimZeroBandwidth", "simulate --cluster {d}/zero.json --devices 8 --seq-len 8192 --heads 8 --head-dim 128" + kSimOut, "bandwidth"},
        BadCase{"SimMissingFile", "simulate --cluster {d}/none.json --devices 8 --seq-len 8192 --heads 8 --head-dim 128" + kSimOut, "none.json"},
        BadCase{"SimSeqBlockDisagree", "simulate --cluster h100-nvlink --devices 8 --seq-len 1000 --block-size 64 --heads 8 --head-dim 128" + kSimOut, "disagree"},
        BadCase{"SimNoSequence", "simulate --cluster h100-nvlink --devices 8 --heads 8 --head-dim 128" + kSimOut, "--seq-len"},
        BadCase{"SimZigzagTooShort", "simulate --cluster h100-nvlink --devices 8 --seq-len 10 --layout zigzag --heads 8 --head-dim 128" + kSimOut, "zigzag"},
        BadCase{"SimOneBuffer", "simulate --cluster h100-nvlink --devices 8 --seq-len 8192 --buffers 1 --heads 8 --head-dim 128" + kSimOut, "receive buffers"},
        BadCase{"SimBadDtype", "simulate --cluster h100-nvlink --devices 8 --seq-len 8192 --dtype int8 --heads 8 --head-dim 128" + kSimOut, "int8"},
        BadCase{"SimNoFp32", "simulate --cluster tpu-v4 --devices 8 --seq-len 8192 --dtype fp32 --heads 8 --head-dim 128" + kSimOut, "fp32"},
        BadCase{"SimStragglerOutside", "simulate --cluster h100-nvlink --devices 8 --seq-len 8192 --straggler 9:2 --heads 8 --head-dim 128" + kSimOut, "straggler"},
        BadCase{"SimBadJitter", "simulate --cluster h100-nvlink --devices 8 --seq-len 8192 --jitter abc --heads 8 --head-dim 128" + kSimOut, "--jitter"},
        BadCase{"SimTraceAndSweep", "simulate --cluster h100-nvlink --devices 8 --seq-len 8192 --sweep layout --heads 8 --head-dim 128" + kSimOut, "cannot be combined"},
        BadCase{"SimLayersWithoutHidden", "simulate --cluster h100-nvlink --devices 8 --seq-len 8192 --layers 4 --heads 8 --head-dim 128" + kSimOut, "--hidden"},
        BadCase{"SimHugeTrace", "simulate --cluster dgx-h100-ib --devices 4096 --block-size 64 --heads 8 --head-dim 128" + kSimOut, "4 million"},
        BadCase{"SimZeroDevices", "simulate --cluster h100-nvlink --devices 0 --seq-len 8192 --heads 8 --head-dim 128" + kSimOut, "--devices"},
        BadCase{"SimSvgLayoutSweep", "simulate --cluster h100-nvlink --devices 8 --seq-len 8192 --sweep layout --heads 8 --head-dim 128 --svg {d}/o.svg --csv {d}/o.csv", "block-size sweep"},
        BadCase{"SimSvgHugeRing", "simulate --cluster dgx-h100-ib --devices 1024 --block-size 256 --heads 8 --head-dim 128 --svg {d}/o.svg", "200,000"},
        BadCase{"SimUnknownSweep", "simulate --cluster h100-nvlink --devices 8 --seq-len 8192 --sweep heads --heads 8 --head-dim 128 --csv {d}/o.csv", "heads"}),
    [](const ::testing::TestParamInfo<BadCase>& i) { return i.param.name; });

// ---- ringattn compare on the CPU paths -----------------------------------------------------------

// The rows of compare's table: output name -> (max|err|, rel err).
std::map<std::string, std::pair<double, double>> table(const std::string& out) {
  std::map<std::string, std::pair<double, double>> t;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    std::istringstream ls(line);
    std::string name, elements, max_err, rel;
    if (!(ls >> name >> elements >> max_err >> rel)) continue;
    if (name != "O" && name != "LSE" && name != "dQ" && name != "dK" && name != "dV") continue;
    t[name] = {std::stod(max_err), std::stod(rel)};
  }
  return t;
}

struct CompareCase {
  std::string name;
  std::string args;  // after "compare"
};

void PrintTo(const CompareCase& c, std::ostream* os) { *os << c.name; }

class ComparePasses : public CliTest, public ::testing::WithParamInterface<CompareCase> {};

// A correct implementation passes: every output line "ok", a final OK, exit 0; fresh seed each run.
TEST_P(ComparePasses, OkAndExitZero) {
  const std::string args = "compare " + GetParam().args + " --seed " + std::to_string(gen_() % 1000000);
  SCOPED_TRACE(args);  // the seed, to reproduce a failure
  const CliRun r = run(args, true);
  EXPECT_EQ(r.code, 0) << args << "\n" << r.out << r.err;
  EXPECT_NE(r.out.find("\nOK\n"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("FAILED"), std::string::npos) << r.out;
  const auto t = table(r.out);
  const bool backward = GetParam().args.find("--backward") != std::string::npos;
  EXPECT_EQ(t.size(), backward ? 5u : 2u) << r.out;
  const bool sampled = GetParam().args.find("--sample-rows") != std::string::npos;
  EXPECT_EQ(r.out.find("query rows") != std::string::npos, sampled) << r.out;
  for (const auto& [name, e] : t) EXPECT_GT(e.first, 0.0) << name << ": a float32 path has some error";
}

INSTANTIATE_TEST_SUITE_P(
    CpuPaths, ComparePasses,
    ::testing::Values(
        CompareCase{"naive_full", "--impl naive --seq 37 --heads 4 --heads-kv 2 --head-dim 16"},
        CompareCase{"blockwise_full_causal_bwd", "--impl blockwise --seq 45 --seq-kv 61 --heads 4 --heads-kv 1 --head-dim 8 --causal --backward --block-q 7 --block-kv 11"},
        CompareCase{"blockwise_full_sq_gt_skv_causal", "--impl blockwise --seq 40 --seq-kv 23 --heads 2 --head-dim 16 --causal --backward --block-q 8 --block-kv 5"},
        CompareCase{"blockwise_large_logits", "--impl blockwise --batch 2 --seq 33 --heads 2 --head-dim 16 --logit-scale 30 --causal --backward --block-q 8 --block-kv 8"},
        CompareCase{"ring_zigzag_full_causal_bwd", "--impl ring --layout zigzag --ranks 3 --seq 61 --heads 4 --heads-kv 2 --head-dim 16 --causal --backward --block-q 5 --block-kv 7"},
        CompareCase{"ring_striped_sampled_causal_bwd", "--impl ring --layout striped --ranks 4 --seq 203 --heads 4 --heads-kv 2 --head-dim 16 --causal --backward --sample-rows 16 --block-q 16 --block-kv 16"},
        CompareCase{"ring_contiguous_sampled_bwd", "--impl ring --layout contiguous --ranks 3 --batch 2 --seq 151 --heads 2 --head-dim 8 --backward --sample-rows 9"},
        CompareCase{"ring_zigzag_sampled_fwd", "--impl ring --layout zigzag --ranks 2 --seq 129 --heads 8 --heads-kv 2 --head-dim 32 --causal --sample-rows 12"},
        CompareCase{"naive_sampled_sq_ne_skv_causal_bwd", "--impl naive --seq 70 --seq-kv 91 --heads 3 --heads-kv 1 --head-dim 16 --causal --backward --sample-rows 10"}),
    [](const ::testing::TestParamInfo<CompareCase>& i) { return i.param.name; });

// compare on .npy files (float64 files: the CPU paths run them in float32), with and without dO.
TEST_F(CliTest, CompareOnFiles) {
  save_npy(path("q.npy"), random<double>({2, 29, 4, 16}));
  save_npy(path("k.npy"), random<double>({2, 31, 2, 16}));
  save_npy(path("v.npy"), random<double>({2, 31, 2, 16}));
  save_npy(path("do.npy"), random<double>({2, 29, 4, 16}));
  const std::string qkv = " --q " + path("q.npy") + " --k " + path("k.npy") + " --v " + path("v.npy");
  for (const std::string& extra : {std::string(" --causal"), " --dout " + path("do.npy"),
                                   std::string(" --backward --sample-rows 5 --causal --seed 7")}) {
    const CliRun r = run("compare --impl blockwise --block-q 4 --block-kv 8" + qkv + extra, true);
    EXPECT_EQ(r.code, 0) << extra << "\n" << r.out << r.err;
    EXPECT_NE(r.out.find("\nOK\n"), std::string::npos) << r.out;
  }
}

// A wrong result is caught: one perturbed row of any output (1e-3 relative, or NaN), in full mode
// and in sampled mode (rows the sampling always includes: first, last, segment boundaries).
TEST_F(CliTest, CompareCatchesAWrongRow) {
  // zigzag over 3 ranks of 61 tokens: chunks of 10 or 11 tokens; 30 is the last of chunk 2.
  const std::string base = "compare --impl ring --layout zigzag --ranks 3 --seq 61 --heads 4 --heads-kv 2 "
                           "--head-dim 16 --causal --backward --block-q 5 --block-kv 7 --seed " +
                           std::to_string(gen_() % 1000000);
  struct Wrong {
    std::string perturb, output;
  };
  for (const std::string mode : {"", " --sample-rows 8"}) {
    for (const Wrong& w : {Wrong{"o:60", "O"}, Wrong{"o:30", "O"}, Wrong{"lse:0:1e-3", "LSE"}, Wrong{"lse:60", "LSE"},
                           Wrong{"dq:60", "dQ"}, Wrong{"dk:0", "dK"}, Wrong{"dk:30", "dK"}, Wrong{"dv:60", "dV"},
                           Wrong{"dv:0:nan", "dV"}, Wrong{"o:all:nan", "O"}, Wrong{"dq:all:1e-4", "dQ"}}) {
      const std::string args = base + mode + " --perturb " + w.perturb;
      const CliRun r = run(args, true);
      EXPECT_EQ(r.code, 1) << args << "\n" << r.out << r.err;
      EXPECT_NE(r.out.find("\nFAILED\n"), std::string::npos) << args << "\n" << r.out;
      // The perturbed output's line says FAILED and a line names the first bad element.
      bool named = false;
      std::istringstream in(r.out);
      for (std::string line; std::getline(in, line);) {
        if (line.rfind(w.output + " ", 0) == 0) {
          EXPECT_NE(line.find("FAILED"), std::string::npos) << line;
        }
        if (line.rfind(w.output + ": ", 0) == 0) named = true;
      }
      EXPECT_TRUE(named) << args << "\n" << r.out;
    }
  }
}

// Sampled mode agrees with full mode: checking every row through the sampled path gives the same
// errors for O, LSE and dQ (two independent float64 references of the same result); with fewer
// rows the errors are those of a subset; dK/dV (checked given the implementation's LSE/O) agree
// within what the implementation's LSE/O errors move that reference.
TEST_F(CliTest, CompareSampledAgreesWithFull) {
  const std::string base = "compare --impl ring --layout striped --ranks 3 --seq 47 --seq-kv 53 --heads 4 --heads-kv 2 "
                           "--head-dim 16 --causal --backward --block-q 8 --block-kv 8 --seed " +
                           std::to_string(gen_() % 1000000);
  SCOPED_TRACE(base);  // the seed, to reproduce a failure
  const CliRun full = run(base + " --full", true), all = run(base + " --sample-rows 1000", true),
               some = run(base + " --sample-rows 6", true);
  ASSERT_EQ(full.code, 0) << full.out << full.err;
  ASSERT_EQ(all.code, 0) << all.out << all.err;
  ASSERT_EQ(some.code, 0) << some.out << some.err;
  const auto f = table(full.out), a = table(all.out), s = table(some.out);
  ASSERT_EQ(f.size(), 5u) << full.out;
  ASSERT_EQ(a.size(), 5u) << all.out;
  ASSERT_EQ(s.size(), 5u) << some.out;
  for (const char* name : {"O", "LSE", "dQ"}) {
    EXPECT_NEAR(a.at(name).first, f.at(name).first, 0.01 * f.at(name).first) << name;
    EXPECT_NEAR(a.at(name).second, f.at(name).second, 0.01 * f.at(name).second) << name;
    EXPECT_LE(s.at(name).first, f.at(name).first * 1.01) << name;
  }
  // Sampled dK/dV are measured against a reference built from the implementation's own LSE and O,
  // which differs from the float64 one by about their errors times the gradient's size: the two
  // measurements may differ by that much (seen: up to 1.5x (LSE err + O err) over 800 seeds), and
  // the subset's error is that of a subset of the same rows.
  const double shift = 4.0 * (f.at("LSE").first + f.at("O").first);
  for (const char* name : {"dK", "dV"}) {
    EXPECT_NEAR(a.at(name).first, f.at(name).first, f.at(name).first + shift) << name;
    EXPECT_LE(s.at(name).first, a.at(name).first * 1.01) << name;
  }
}

}  // namespace
