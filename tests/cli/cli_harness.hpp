// The command line as a user drives it, shared by cli_test (label cpu) and cli_gpu_test (label
// gpu): run `ringattn` in a fresh folder per test, capture its exit code, stderr (and stdout), and
// check the one-line error contract.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "ringattn/core/npy.hpp"
#include "ringattn/core/tensor.hpp"

namespace {

namespace fs = std::filesystem;
using namespace ringattn;

struct CliRun {
  int code = 0;
  std::string err;
  std::string out;  // stdout, when asked for
};

[[maybe_unused]] ::testing::AssertionResult OneLineError(const CliRun& r) {
  if (r.code == 0) return ::testing::AssertionFailure() << "exit code 0, stderr: " << r.err;
  if (r.code >= 128) return ::testing::AssertionFailure() << "crashed (" << r.code << "): " << r.err;
  const auto lines = std::count(r.err.begin(), r.err.end(), '\n');
  if (lines != 1 || r.err.rfind("ringattn: error: ", 0) != 0) {
    return ::testing::AssertionFailure() << "expected one 'ringattn: error:' line, got: [" << r.err << "]";
  }
  return ::testing::AssertionSuccess() << r.err;
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string(info->test_suite_name()) + "_" + info->name();
    for (char& c : name) {
      if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
    }
    dir_ = fs::temp_directory_path() / ("ringattn_cli_" + name + "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& f) const { return (dir_ / f).string(); }

  // Runs `ringattn <args>`, after @p launcher when given (e.g. "mpirun -np 2 "); stdout is kept
  // when @p keep_stdout (else discarded).
  CliRun run(const std::string& args, bool keep_stdout = false, const std::string& launcher = "") const {
    const std::string err = path("stderr.txt"), out = path("stdout.txt");
    const std::string cmd = launcher + RINGATTN_CLI + " " + args + " >" +
                            (keep_stdout ? out : std::string("/dev/null")) + " 2>" + err;
    const int status = std::system(cmd.c_str());
    CliRun r;
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    const auto slurp = [](const std::string& f) {
      std::ifstream in(f);
      std::stringstream ss;
      ss << in.rdbuf();
      return ss.str();
    };
    r.err = slurp(err);
    fs::remove(err);
    if (keep_stdout) {
      r.out = slurp(out);
      fs::remove(out);
    }
    return r;
  }

  template <class T>
  Tensor<T> random(std::vector<std::int64_t> shape, double mul = 1.0) {
    Tensor<T> t(std::move(shape));
    std::normal_distribution<double> n;
    for (auto& x : t.values()) x = static_cast<T>(mul * n(gen_));
    return t;
  }

  // Writes a small random q.npy, k.npy, v.npy (B 1, S 16, H_q 4, H_kv 2, D 8) and, when asked,
  // do.npy; returns their names (the inputs outputs_present() leaves out).
  std::vector<std::string> save_small_inputs(bool with_dout) {
    save_npy(path("q.npy"), random<double>({1, 16, 4, 8}));
    save_npy(path("k.npy"), random<double>({1, 16, 2, 8}));
    save_npy(path("v.npy"), random<double>({1, 16, 2, 8}));
    if (!with_dout) return {"q.npy", "k.npy", "v.npy"};
    save_npy(path("do.npy"), random<double>({1, 16, 4, 8}));
    return {"q.npy", "k.npy", "v.npy", "do.npy"};
  }

  // `ringattn <args>` is refused: exit 1, one "ringattn: error:" line containing @p expect, and
  // no file written besides @p inputs.
  void expect_refused(const std::string& args, const std::string& expect, const std::vector<std::string>& inputs) {
    const CliRun r = run(args);
    EXPECT_EQ(r.code, 1) << args;
    EXPECT_TRUE(OneLineError(r)) << args;
    EXPECT_NE(r.err.find(expect), std::string::npos) << "message: " << r.err;
    EXPECT_EQ(outputs_present(inputs), std::vector<std::string>{}) << args;
  }

  // Files in the folder other than the inputs the test wrote.
  std::vector<std::string> outputs_present(const std::vector<std::string>& inputs) const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir_)) {
      const std::string n = e.path().filename().string();
      if (std::find(inputs.begin(), inputs.end(), n) == inputs.end()) out.push_back(n);
    }
    return out;
  }

  fs::path dir_;
  std::mt19937_64 gen_{std::random_device{}()};
};

[[maybe_unused]] ::testing::AssertionResult Near(const Tensor<double>& got, const Tensor<double>& want, double tol) {
  if (got.shape() != want.shape()) {
    return ::testing::AssertionFailure() << "shape " << shape_string(got.shape()) << " != "
                                         << shape_string(want.shape());
  }
  for (std::int64_t i = 0; i < got.size(); ++i) {
    const bool both_inf = std::isinf(got[i]) && got[i] == want[i];
    if (!both_inf && !(std::abs(got[i] - want[i]) <= tol)) {
      return ::testing::AssertionFailure() << "element " << i << ": " << got[i] << " vs " << want[i];
    }
  }
  return ::testing::AssertionSuccess();
}

}  // namespace
