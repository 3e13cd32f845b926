/// @file check.hpp
/// @brief Test helpers: tensor comparisons that name the first bad element, random inputs with a
/// fresh, reported seed per test, and dtype conversion.
///
/// Every comparison returns ::testing::AssertionResult so a failure says *where*: flat index,
/// multi-index, both values, and the overall max |actual - expected| and relative norm error
/// (DESIGN.md, "How correctness is judged"). NaN never passes; infinities must match exactly.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "ringattn/core/layout.hpp"
#include "ringattn/core/tensor.hpp"

namespace ringattn {
/// gtest prints a Layout parameter by name ("zigzag") instead of as raw bytes.
inline void PrintTo(Layout layout, std::ostream* os) { *os << to_string(layout); }
}  // namespace ringattn

namespace ringattn::test {

// ---- formatting -------------------------------------------------------------------------------

/// "(1, 3, 0, 7)": the C-order multi-index of flat index @p flat in @p shape.
inline std::string multi_index(const std::vector<std::int64_t>& shape, std::int64_t flat) {
  std::vector<std::int64_t> idx(shape.size(), 0);
  for (std::size_t n = shape.size(); n-- > 0;) {
    const std::int64_t extent = shape[n] > 0 ? shape[n] : 1;
    idx[n] = flat % extent;
    flat /= extent;
  }
  std::ostringstream os;
  os << '(';
  for (std::size_t n = 0; n < idx.size(); ++n) os << (n ? ", " : "") << idx[n];
  os << ')';
  return os.str();
}

/// "(2, 3, 4)".
inline std::string shape_str(const std::vector<std::int64_t>& shape) {
  std::ostringstream os;
  os << '(';
  for (std::size_t n = 0; n < shape.size(); ++n) os << (n ? ", " : "") << shape[n];
  os << ')';
  return os.str();
}

// ---- comparisons ------------------------------------------------------------------------------

/// Passes when every element satisfies |a - e| <= atol + rtol * |e|, no element of either side is
/// NaN, and infinities match exactly (LSE = -inf must be -inf, not -1e30). On failure it names
/// the first bad flat index, its multi-index and both values, and how many elements are bad.
template <class A, class E>
::testing::AssertionResult AllClose(const Tensor<A>& actual, const Tensor<E>& expected,
                                    double atol, double rtol) {
  if (actual.shape() != expected.shape()) {
    return ::testing::AssertionFailure() << "shape mismatch: actual " << shape_str(actual.shape())
                                         << " vs expected " << shape_str(expected.shape());
  }
  std::int64_t first_bad = -1;
  std::int64_t bad = 0;
  double max_err = 0.0;
  long double diff2 = 0.0L;
  long double ref2 = 0.0L;
  std::string first_why;
  for (std::int64_t n = 0; n < actual.size(); ++n) {
    const double a = static_cast<double>(actual[n]);
    const double e = static_cast<double>(expected[n]);
    std::string why;
    if (std::isnan(a) || std::isnan(e)) {
      why = "NaN";
    } else if (std::isinf(a) || std::isinf(e)) {
      if (a != e) why = "infinity mismatch";
    } else {
      const double err = std::fabs(a - e);
      max_err = std::max(max_err, err);
      diff2 += static_cast<long double>(err) * err;
      ref2 += static_cast<long double>(e) * e;
      if (!(err <= atol + rtol * std::fabs(e))) why = "outside tolerance";
    }
    if (!why.empty()) {
      if (first_bad < 0) {
        first_bad = n;
        first_why = why;
      }
      ++bad;
    }
  }
  if (first_bad < 0) return ::testing::AssertionSuccess();
  std::ostringstream os;
  os.precision(17);
  const double a = static_cast<double>(actual[first_bad]);
  const double e = static_cast<double>(expected[first_bad]);
  os << bad << " of " << actual.size() << " elements differ (" << first_why
     << "); first at flat index " << first_bad << " = " << multi_index(actual.shape(), first_bad)
     << " of shape " << shape_str(actual.shape()) << ": actual " << a << ", expected " << e
     << ", |diff| " << std::fabs(a - e) << ", allowed " << atol + rtol * std::fabs(e)
     << " (atol " << atol << ", rtol " << rtol << "); max|diff| over finite elements " << max_err
     << ", ||diff||/||ref|| "
     << (ref2 > 0 ? static_cast<double>(std::sqrt(diff2 / ref2)) : static_cast<double>(diff2));
  return ::testing::AssertionFailure() << os.str();
}

/// Passes when every element is finite; names the first that is not.
template <class T>
::testing::AssertionResult AllFinite(const Tensor<T>& t) {
  for (std::int64_t n = 0; n < t.size(); ++n) {
    if (!std::isfinite(static_cast<double>(t[n]))) {
      return ::testing::AssertionFailure()
             << "element " << n << " = " << multi_index(t.shape(), n) << " of shape "
             << shape_str(t.shape()) << " is " << static_cast<double>(t[n]);
    }
  }
  return ::testing::AssertionSuccess();
}

/// Passes when every element equals @p value exactly (NaN never equals anything).
template <class T>
::testing::AssertionResult AllEqual(const Tensor<T>& t, double value) {
  for (std::int64_t n = 0; n < t.size(); ++n) {
    if (!(static_cast<double>(t[n]) == value)) {
      return ::testing::AssertionFailure()
             << "element " << n << " = " << multi_index(t.shape(), n) << " is "
             << static_cast<double>(t[n]) << ", expected exactly " << value;
    }
  }
  return ::testing::AssertionSuccess();
}

/// max |x| over the finite elements.
template <class T>
double max_abs(const Tensor<T>& t) {
  double m = 0.0;
  for (std::int64_t n = 0; n < t.size(); ++n) {
    const double x = static_cast<double>(t[n]);
    if (std::isfinite(x)) m = std::max(m, std::fabs(x));
  }
  return m;
}

// ---- conversion -------------------------------------------------------------------------------

/// Element-wise conversion to another element type (rounding to nearest for double -> float).
template <class To, class From>
Tensor<To> convert(const Tensor<From>& src) {
  Tensor<To> dst(src.shape());
  for (std::int64_t n = 0; n < src.size(); ++n) dst[n] = static_cast<To>(src[n]);
  return dst;
}

/// Widening copy, for handing a tensor of any dtype to the oracle.
template <class T>
Tensor<double> to_double(const Tensor<T>& t) {
  return convert<double>(t);
}

// ---- seeds and random inputs ------------------------------------------------------------------

/// Stable 64-bit hash of a string (FNV-1a): the same test name gives the same seed everywhere.
inline std::uint64_t fnv1a(const std::string& s) {
  std::uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

/// SplitMix64 finalizer: spreads nearby inputs over the whole 64-bit range.
inline std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

/// Full name of the running test ("Suite/Instance.Name/Param"), or "(no test)".
inline std::string current_test_name() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  if (info == nullptr) return "(no test)";
  return std::string(info->test_suite_name()) + "." + info->name();
}

/// A fresh seed per test and per draw: hash(test name) mixed with a counter that restarts for
/// each test, so a test gets the same seeds whether it runs alone or in the whole suite. Set
/// RINGATTN_TEST_SEED=<n> to move every test to other seeds (a soak run); the seed is printed
/// on failure via RINGATTN_SEEDED_RNG's SCOPED_TRACE.
inline std::uint64_t fresh_seed() {
  static std::string last_test;
  static std::uint64_t counter = 0;
  const std::string name = current_test_name();
  if (name != last_test) {
    last_test = name;
    counter = 0;
  }
  std::uint64_t base = fnv1a(name);
  if (const char* env = std::getenv("RINGATTN_TEST_SEED")) {
    base ^= splitmix64(std::strtoull(env, nullptr, 10));
  }
  return splitmix64(base + counter++);
}

/// The line SCOPED_TRACE prints with a seed.
inline std::string seed_message(std::uint64_t seed) {
  std::ostringstream os;
  os << "random seed " << seed << " (test " << current_test_name()
     << "; RINGATTN_TEST_SEED is " << (std::getenv("RINGATTN_TEST_SEED") ? "set" : "unset")
     << ")";
  return os.str();
}

/// Declares `std::mt19937_64 name` seeded with fresh_seed(), and a SCOPED_TRACE that prints the
/// seed with any failure in the enclosing scope.
#define RINGATTN_SEEDED_RNG(name)                                            \
  const std::uint64_t name##_seed = ::ringattn::test::fresh_seed();          \
  SCOPED_TRACE(::ringattn::test::seed_message(name##_seed));                 \
  std::mt19937_64 name(name##_seed)

/// Distribution of random tensor values.
enum class Dist {
  Normal,   ///< N(0, 1)
  Uniform,  ///< U(-1, 1)
};

/// A tensor of @p shape with random values (times @p multiplier, e.g. 100 for large logits),
/// drawn in double and rounded to T, so the oracle sees exactly the values T holds.
template <class T>
Tensor<T> random_tensor(const std::vector<std::int64_t>& shape, std::mt19937_64& rng,
                        Dist dist = Dist::Normal, double multiplier = 1.0) {
  Tensor<T> t(shape);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> uniform(-1.0, 1.0);
  for (std::int64_t n = 0; n < t.size(); ++n) {
    const double x = dist == Dist::Normal ? normal(rng) : uniform(rng);
    t[n] = static_cast<T>(multiplier * x);
  }
  return t;
}

// ---- tolerances -------------------------------------------------------------------------------

/// Absolute and relative tolerance of a comparison.
struct Tolerance {
  double atol = 0;
  double rtol = 0;
};

/// Tolerance for comparing a T path against the long-double oracle, for a result of size
/// @p magnitude (max |expected|) from logits of size @p max_logit (max |scale q.k|).
/// The error of a softmax grows with the size of its logits: an absolute error eps * |s| in a
/// score is a relative error of that size in its weight. So the base tolerance (1e-12 for
/// double, ~1e-5 for float: DESIGN.md) is for logits of size ~1..4 and grows linearly beyond.
/// @p base_double / @p base_float let the backward ask for more room.
template <class T>
Tolerance tolerance_for(double magnitude, double max_logit, double base_double = 2.5e-13,
                        double base_float = 2.5e-6) {
  const double base = std::is_same_v<T, double> ? base_double : base_float;
  return {base * (1.0 + max_logit) * std::max(1.0, magnitude), base};
}

/// Rows the oracle says see no key (expected LSE = -inf) must have LSE exactly -inf and an O row
/// of exact zeros in @p out (B, S_q, H_q, D) / @p lse (B, H_q, S_q). Also counts those rows, so a
/// test can assert it exercised some.
template <class T>
::testing::AssertionResult EmptyRowsExact(const Tensor<T>& out, const Tensor<T>& lse,
                                          const Tensor<double>& expected_lse,
                                          std::int64_t* empty_rows = nullptr) {
  if (lse.shape() != expected_lse.shape() || out.rank() != 4 || lse.rank() != 3) {
    return ::testing::AssertionFailure() << "shapes do not match";
  }
  const std::int64_t B = lse.dim(0), H = lse.dim(1), S = lse.dim(2), D = out.dim(3);
  std::int64_t count = 0;
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t h = 0; h < H; ++h) {
      for (std::int64_t i = 0; i < S; ++i) {
        const std::int64_t li = (b * H + h) * S + i;
        if (!(std::isinf(expected_lse[li]) && expected_lse[li] < 0)) continue;
        ++count;
        const double got = static_cast<double>(lse[li]);
        if (!(std::isinf(got) && got < 0)) {
          return ::testing::AssertionFailure() << "row (b " << b << ", h " << h << ", i " << i
                                               << ") sees no key but LSE is " << got;
        }
        for (std::int64_t x = 0; x < D; ++x) {
          const double o = static_cast<double>(out[((b * S + i) * H + h) * D + x]);
          if (!(o == 0.0)) {
            return ::testing::AssertionFailure() << "row (b " << b << ", h " << h << ", i " << i
                                                 << ") sees no key but O[" << x << "] = " << o;
          }
        }
      }
    }
  }
  if (empty_rows != nullptr) *empty_rows = count;
  return ::testing::AssertionSuccess();
}

// ---- test cases shared by the reference tests -------------------------------------------------

/// Element type a parameterized case runs in.
enum class Precision { Float, Double };

inline std::string to_string(Precision p) { return p == Precision::Float ? "float" : "double"; }
inline std::ostream& operator<<(std::ostream& os, Precision p) { return os << to_string(p); }

/// Sizes of one attention case.
struct ShapeCase {
  std::int64_t batch = 1;
  std::int64_t seq_q = 1;
  std::int64_t seq_kv = 1;
  std::int64_t heads_q = 1;
  std::int64_t heads_kv = 1;
  std::int64_t head_dim = 8;

  [[nodiscard]] std::vector<std::int64_t> q_shape() const {
    return {batch, seq_q, heads_q, head_dim};
  }
  [[nodiscard]] std::vector<std::int64_t> kv_shape() const {
    return {batch, seq_kv, heads_kv, head_dim};
  }
  [[nodiscard]] std::vector<std::int64_t> lse_shape() const { return {batch, heads_q, seq_q}; }
};

/// "B2_Sq7_Skv33_Hq4_Hkv2_D16": a valid gtest name fragment.
inline std::string to_string(const ShapeCase& c) {
  return "B" + std::to_string(c.batch) + "_Sq" + std::to_string(c.seq_q) + "_Skv" +
         std::to_string(c.seq_kv) + "_Hq" + std::to_string(c.heads_q) + "_Hkv" +
         std::to_string(c.heads_kv) + "_D" + std::to_string(c.head_dim);
}
inline std::ostream& operator<<(std::ostream& os, const ShapeCase& c) { return os << to_string(c); }

/// Random Q, K, V (and dO) for a case; Q is multiplied by @p q_multiplier (100 gives logits
/// ~100x larger than usual, which stresses the softmax's max-subtraction).
template <class T>
struct Inputs {
  Tensor<T> q, k, v, dout;
};

template <class T>
Inputs<T> random_inputs(const ShapeCase& c, std::mt19937_64& rng, double q_multiplier = 1.0,
                        Dist dist = Dist::Normal) {
  Inputs<T> in;
  in.q = random_tensor<T>(c.q_shape(), rng, dist, q_multiplier);
  in.k = random_tensor<T>(c.kv_shape(), rng, dist);
  in.v = random_tensor<T>(c.kv_shape(), rng, dist);
  in.dout = random_tensor<T>(c.q_shape(), rng, dist);
  return in;
}

/// True when the message is one line (ringattn::Error messages must be).
inline ::testing::AssertionResult OneLine(const std::string& message) {
  if (message.empty()) return ::testing::AssertionFailure() << "error message is empty";
  if (message.find('\n') != std::string::npos) {
    return ::testing::AssertionFailure() << "error message spans lines: \"" << message << "\"";
  }
  return ::testing::AssertionSuccess();
}

/// Passes when @p f throws ringattn::Error (not another exception, not nothing) whose message is
/// one line and contains every string in @p must_contain. The message is echoed on success too,
/// so a reader of the test log sees what users would see.
template <class F>
::testing::AssertionResult ThrowsError(F&& f, const std::vector<std::string>& must_contain = {}) {
  try {
    f();
  } catch (const ::ringattn::Error& e) {
    const std::string message = e.what();
    auto one = OneLine(message);
    if (!one) return one;
    for (const std::string& part : must_contain) {
      if (message.find(part) == std::string::npos) {
        return ::testing::AssertionFailure()
               << "message \"" << message << "\" does not mention \"" << part << "\"";
      }
    }
    return ::testing::AssertionSuccess() << "threw: " << message;
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure()
           << "threw a std::exception that is not ringattn::Error: " << e.what();
  } catch (...) {
    return ::testing::AssertionFailure() << "threw something that is not a std::exception";
  }
  return ::testing::AssertionFailure() << "did not throw";
}

}  // namespace ringattn::test
