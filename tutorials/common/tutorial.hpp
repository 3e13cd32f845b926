/// @file tutorial.hpp
/// @brief What every numbered tutorial shares: stages that can pause for Enter (`--step`),
/// self-checks, small tables of numbers, and the final `Disposition:` line.
///
/// A tutorial is a `main` that builds a `Tutorial`, calls `stage()` before each part, `check()`
/// for every claim it makes about the numbers it printed, and returns `finish()`:
///
/// @code
/// int main(int argc, char** argv) {
///   ringattn::tutorial::Tutorial t(argc, argv, "01_softmax", "Softmax, and why the naive one overflows");
///   t.stage("The naive softmax");
///   ...
///   t.check(std::isnan(y[0]), "naive softmax of x*100 is nan");
///   return t.finish();
/// }
/// @endcode
///
/// Exit codes: 0 when every check passed, 1 when one failed, 77 when the tutorial skipped
/// (it needs a GPU or MPI that is not there), which CTest reports as skipped.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

namespace ringattn::tutorial {

/// Exit code of a tutorial that skipped (CTest's SKIP_RETURN_CODE).
inline constexpr int kSkipExitCode = 77;

/// printf into a std::string.
[[gnu::format(printf, 1, 2)]] inline std::string format(const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  va_list copy;
  va_copy(copy, args);
  const int n = std::vsnprintf(nullptr, 0, fmt, copy);
  va_end(copy);
  std::string out(n > 0 ? static_cast<std::size_t>(n) : 0, '\0');
  if (n > 0) std::vsnprintf(out.data(), out.size() + 1, fmt, args);
  va_end(args);
  return out;
}

/// The stages, checks and disposition of one tutorial.
class Tutorial {
 public:
  /// Parses `--step` (pause for Enter between stages) and `--help`; any other argument is an
  /// error (one line, exit 2), unless `accept_extra` is set, in which case the arguments are
  /// left in extra() for the tutorial to read.
  Tutorial(int argc, char** argv, std::string name, std::string title, std::string usage_extra = {},
           bool accept_extra = false)
      : name_(std::move(name)), title_(std::move(title)) {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--step") {
        step_ = true;
      } else if (a == "--help" || a == "-h") {
        std::printf("usage: %s [--step]%s%s\n  --step   pause for Enter between stages\n",
                    argv[0], usage_extra.empty() ? "" : " ", usage_extra.c_str());
        std::exit(0);
      } else if (accept_extra) {
        extra_.push_back(a);
      } else {
        std::fprintf(stderr, "%s: error: unknown argument '%s' (try --help)\n", argv[0], a.c_str());
        std::exit(2);
      }
    }
    std::printf("%s\n%s: %s\n%s\n", rule('=').c_str(), name_.c_str(), title_.c_str(),
                rule('=').c_str());
  }

  /// Arguments other than --step, when the constructor was asked to accept them.
  const std::vector<std::string>& extra() const { return extra_; }
  /// Whether --step was given.
  bool stepping() const { return step_; }

  /// Starts a stage: with --step, first waits for Enter (end of input continues).
  void stage(const std::string& title) {
    if (step_ && stages_ > 0) {
      std::printf("\n[--step] press Enter for the next stage ...");
      std::fflush(stdout);
      std::string line;
      std::getline(std::cin, line);
    }
    ++stages_;
    std::printf("\n--- Stage %d: %s\n", stages_, title.c_str());
  }

  /// Prints a line of explanation (indented two spaces).
  void say(const std::string& text) const { std::printf("  %s\n", text.c_str()); }

  /// Records one self-check and prints it; returns `ok`.
  bool check(bool ok, const std::string& what, const std::string& detail = {}) {
    ++checks_;
    if (!ok) ++failed_;
    std::printf("  [%s] %s%s%s\n", ok ? "ok" : "FAILED", what.c_str(), detail.empty() ? "" : ": ",
                detail.c_str());
    return ok;
  }

  /// Checks |got - want| <= tol * max(1, |want|) (relative above 1, absolute below).
  bool check_close(double got, double want, double tol, const std::string& what) {
    const double err = std::abs(got - want);
    const bool ok = err <= tol * std::max(1.0, std::abs(want));
    return check(ok, what, format("%.10g vs %.10g (|diff| %.2e, tolerance %.0e)", got, want, err, tol));
  }

  /// Checks that the largest |a_i - b_i| is at most `tol`; prints it.
  bool check_all_close(const std::vector<double>& a, const std::vector<double>& b, double tol,
                       const std::string& what) {
    double worst = a.size() == b.size() ? 0.0 : INFINITY;
    for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
      const double d = std::abs(a[i] - b[i]);
      if (std::isnan(d)) {  // a NaN anywhere fails the check; later finite values must not hide it
        worst = NAN;
        break;
      }
      worst = std::max(worst, d);
    }
    return check(worst <= tol, what, format("max |diff| %.2e (tolerance %.0e)", worst, tol));
  }

  /// Marks the tutorial as skipped with a reason; finish() then prints it and returns 77.
  void skip(const std::string& reason) { skip_reason_ = reason; }

  /// Prints the summary and the disposition line; returns the process exit code.
  int finish() const {
    std::printf("\n%s\n", rule('-').c_str());
    if (!skip_reason_.empty() && failed_ == 0) {
      std::printf("%s: skipped: %s\nDisposition: Skipped (%s)\n", name_.c_str(),
                  skip_reason_.c_str(), skip_reason_.c_str());
      std::fflush(stdout);
      return kSkipExitCode;
    }
    std::printf("%s: %d of %d checks passed\nDisposition: %s\n", name_.c_str(), checks_ - failed_,
                checks_, failed_ == 0 && checks_ > 0 ? "Passed" : "Failed");
    std::fflush(stdout);
    return failed_ == 0 && checks_ > 0 ? 0 : 1;
  }

 private:
  static std::string rule(char c) { return std::string(78, c); }

  std::string name_, title_;
  std::vector<std::string> extra_;
  bool step_ = false;
  int stages_ = 0, checks_ = 0, failed_ = 0;
  std::string skip_reason_;
};

/// Runs `body` and turns an escaping exception into a one-line error and `Disposition: Failed`.
template <class Body>
int run(Body&& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    std::printf("\nerror: %s\nDisposition: Failed\n", e.what());
    return 1;
  }
}

/// Standard normal numbers from splitmix64 and Box-Muller: the same on every platform and rank,
/// unlike std::normal_distribution, so the numbers a tutorial prints are reproducible anywhere.
class Rng {
 public:
  /// A generator whose sequence is fixed by @p seed.
  explicit Rng(std::uint64_t seed) : state_(seed) {}
  /// The next standard normal number.
  double normal() {
    const double u1 = (static_cast<double>(next() >> 11) + 0.5) * 0x1.0p-53;
    const double u2 = static_cast<double>(next() >> 11) * 0x1.0p-53;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

 private:
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  std::uint64_t state_;
};

/// Prints a row vector: "  label  [ a  b  c ]" with `%9.4f`-style cells (fmt is the cell format).
inline void print_vector(const std::string& label, const std::vector<double>& x,
                         const char* fmt = "%9.4f") {
  std::printf("  %-14s [", label.c_str());
  for (double v : x) {
    std::printf(" ");
    std::printf(fmt, v);
  }
  std::printf(" ]\n");
}

/// Prints a row-major (rows x cols) matrix under a label, one row per line.
inline void print_matrix(const std::string& label, const std::vector<double>& m, int rows, int cols,
                         const char* fmt = "%9.4f") {
  std::printf("  %s (%d x %d)\n", label.c_str(), rows, cols);
  for (int r = 0; r < rows; ++r) {
    std::printf("    [");
    for (int c = 0; c < cols; ++c) {
      std::printf(" ");
      std::printf(fmt, m[static_cast<std::size_t>(r) * static_cast<std::size_t>(cols) + static_cast<std::size_t>(c)]);
    }
    std::printf(" ]\n");
  }
}

}  // namespace ringattn::tutorial
