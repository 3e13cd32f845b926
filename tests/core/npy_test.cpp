// Tests of the .npy reader and writer (core/src/npy.cpp).
//
// The writer must produce exactly numpy.save's bytes (checked against bytes numpy 2.x wrote);
// the reader must accept what numpy writes (versions 1.0, 2.0, 3.0) and reject everything
// else with a one-line ringattn::Error that names the file: every prefix of a valid file,
// every kind of header damage, random byte flips. File writes are atomic.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "ringattn/core/error.hpp"
#include "ringattn/core/npy.hpp"
#include "ringattn/core/tensor.hpp"

namespace ringattn {
namespace {

namespace fs = std::filesystem;
using Shape = std::vector<std::int64_t>;
using Bytes = std::vector<std::byte>;

Bytes to_bytes(std::string_view s) {
  Bytes b(s.size());
  if (!s.empty()) std::memcpy(b.data(), s.data(), s.size());
  return b;
}

std::string to_text(const Bytes& b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }

// A .npy file with the given header dict (padded with spaces to a multiple of 64, plus '\n')
// and raw data bytes, in format version @p major.
Bytes make_npy(std::string_view dict, std::string_view data, int major = 1) {
  const std::size_t preamble = major == 1 ? 10 : 12;
  std::string header(dict);
  while ((preamble + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string out = "\x93NUMPY";
  out += static_cast<char>(major);
  out += '\0';
  for (std::size_t i = 0; i < preamble - 8; ++i) out += static_cast<char>((header.size() >> (8 * i)) & 0xff);
  out += header;
  out += data;
  return to_bytes(out);
}

template <class T>
std::string raw(const std::vector<T>& v) {
  return {reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T)};
}

// Succeeds when @p f throws a ringattn::Error whose message is one line, starts with
// "<name>: " and contains @p expected.
::testing::AssertionResult ThrowsNpyError(const std::function<void()>& f, std::string_view name,
                                          std::string_view expected) {
  try {
    f();
  } catch (const Error& e) {
    const std::string msg = e.what();
    if (msg.find('\n') != std::string::npos || msg.find('\r') != std::string::npos) {
      return ::testing::AssertionFailure() << "message is not one line: \"" << msg << "\"";
    }
    if (msg.rfind(std::string(name) + ": ", 0) != 0) {
      return ::testing::AssertionFailure() << "message does not start with \"" << name << ": \": \"" << msg << "\"";
    }
    if (msg.find(expected) == std::string::npos) {
      return ::testing::AssertionFailure() << "message lacks \"" << expected << "\": \"" << msg << "\"";
    }
    return ::testing::AssertionSuccess() << msg;
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw a non-ringattn exception: " << e.what();
  }
  return ::testing::AssertionFailure() << "did not throw (expected an error containing \"" << expected << "\")";
}

::testing::AssertionResult RejectsNpy(const Bytes& bytes, std::string_view expected) {
  return ThrowsNpyError([&] { (void)parse_npy(bytes, "bad.npy"); }, "bad.npy", expected);
}

// Bit-exact comparison (NaN payloads and the sign of zero included); names the first mismatch.
template <class T>
::testing::AssertionResult SameTensor(const Tensor<T>& a, const Tensor<T>& b) {
  if (a.shape() != b.shape()) {
    return ::testing::AssertionFailure() << "shape " << shape_string(a.shape()) << " vs " << shape_string(b.shape());
  }
  if (a.values().size() != b.values().size()) return ::testing::AssertionFailure() << "element counts differ";
  for (std::size_t i = 0; i < a.values().size(); ++i) {
    if (std::memcmp(&a.values()[i], &b.values()[i], sizeof(T)) != 0) {
      return ::testing::AssertionFailure() << "element " << i << ": " << a.values()[i] << " vs " << b.values()[i];
    }
  }
  return ::testing::AssertionSuccess();
}

// A fresh empty directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() /
            ("ringattn_npy_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  [[nodiscard]] const fs::path& path() const { return path_; }
  [[nodiscard]] std::string file(const std::string& name) const { return (path_ / name).string(); }
  [[nodiscard]] std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(path_)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  fs::path path_;
};

void write_raw(const std::string& path, const Bytes& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

// (Not istreambuf_iterator: g++ 12 flags it under -Wnull-dereference.)
std::string read_raw(const std::string& path) {
  std::string s(static_cast<std::size_t>(fs::file_size(path)), '\0');
  std::ifstream f(path, std::ios::binary);
  f.read(s.data(), static_cast<std::streamsize>(s.size()));
  return s;
}

// Random values with the awkward ones mixed in: +-0, +-inf, NaN, denormals, extremes.
template <class T>
Tensor<T> random_tensor(const Shape& shape, std::uint32_t seed) {
  Tensor<T> t(shape);
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, 100.0);
  const T specials[] = {T(0), -T(0), std::numeric_limits<T>::infinity(), -std::numeric_limits<T>::infinity(),
                        std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::denorm_min(),
                        std::numeric_limits<T>::max(), std::numeric_limits<T>::lowest()};
  for (std::int64_t i = 0; i < t.size(); ++i) {
    t[i] = (i % 7 == 3) ? specials[static_cast<std::size_t>(i / 7) % std::size(specials)]
                        : static_cast<T>(normal(rng));
  }
  return t;
}

// The bytes numpy 2.4 wrote (np.save) for a few arrays; generated once with
// numpy.save(io.BytesIO(), a) and numpy.lib.format.write_array(..., version=(2, 0) / (3, 0)).
const std::string kNumpyArange6F8_2x3(
    "\x93" "NUMPY\x01\x00" "v\x00" "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }"
    "                                                          \x0a"
    "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xf0" "?\x00\x00\x00\x00\x00\x00\x00" "@"
    "\x00\x00\x00\x00\x00\x00\x08" "@\x00\x00\x00\x00\x00\x00\x10" "@\x00\x00\x00\x00\x00\x00\x14" "@",
    176);
const std::string kNumpyScalarF4(
    "\x93" "NUMPY\x01\x00" "v\x00" "{'descr': '<f4', 'fortran_order': False, 'shape': (), }"
    "                                                              \x0a\x00\x00\xc0" "?",
    132);
const std::string kNumpyArange5F4(
    "\x93" "NUMPY\x01\x00" "v\x00" "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }"
    "                                                            \x0a"
    "\x00\x00\x00\x00\x00\x00\x80" "?\x00\x00\x00" "@\x00\x00" "@@\x00\x00\x80" "@",
    148);
const std::string kNumpyEmptyF4_0x3(
    "\x93" "NUMPY\x01\x00" "v\x00" "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 3), }"
    "                                                          \x0a",
    128);
const std::string kNumpyOnesRank40F4(
    "\x93" "NUMPY\x01\x00\xf6\x00" "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1, 1, 1, 1, 1, "
    "1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1), }"
    "                                                                        \x0a\x00\x00\x80" "?",
    260);
const std::string kNumpyV2F4_2x2(
    "\x93" "NUMPY\x02\x00" "t\x00\x00\x00" "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }"
    "                                                        \x0a"
    "\x00\x00\x80" "?\x00\x00\x00\xc0\x00\x00\x00" "?\x00\x00" "@@",
    144);
const std::string kNumpyV3F8_3(
    "\x93" "NUMPY\x03\x00" "t\x00\x00\x00" "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }"
    "                                                          \x0a"
    "\x00\x00\x00\x00\x00\x00\xf0" "?\x00\x00\x00\x00\x00\x00\x00" "@\x00\x00\x00\x00\x00\x00\x08" "@",
    152);

// A small valid file the corruption tests start from: float32 (2, 3) = 0..5.
Bytes valid_f4_2x3() {
  return make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", raw(std::vector<float>{0, 1, 2, 3, 4, 5}));
}

// ---- round trips ----------------------------------------------------------------------------

struct RoundTripCase {
  DType dtype;
  Shape shape;
};

std::string case_name(const ::testing::TestParamInfo<RoundTripCase>& info) {
  std::string s(to_string(info.param.dtype));
  s += "_";
  if (info.param.shape.empty()) return s + "scalar";
  for (std::size_t i = 0; i < info.param.shape.size(); ++i) {
    if (i > 0) s += "x";
    s += std::to_string(info.param.shape[i]);
  }
  return s;
}

class NpyRoundTrip : public ::testing::TestWithParam<RoundTripCase> {
 protected:
  template <class T>
  void check() {
    const Shape& shape = GetParam().shape;
    const Tensor<T> t = random_tensor<T>(shape, 1234u + static_cast<std::uint32_t>(shape.size()));
    const Bytes bytes = encode_npy(t);
    EXPECT_EQ(bytes.size() % 64, (t.values().size() * sizeof(T)) % 64) << "header must be padded to 64 bytes";

    const AnyTensor parsed = parse_npy(bytes, "mem.npy");
    ASSERT_EQ(dtype_of(parsed), dtype_of<T>());
    EXPECT_EQ(shape_of(parsed), shape);
    EXPECT_TRUE(SameTensor(std::get<Tensor<T>>(parsed), t));

    TempDir dir;
    const std::string path = dir.file("t.npy");
    save_npy(path, t);
    EXPECT_EQ(dir.entries(), std::vector<std::string>{"t.npy"}) << "temporary files left behind";
    EXPECT_EQ(fs::file_size(path), bytes.size());
    EXPECT_TRUE(SameTensor(load_npy_as<T>(path), t));
    const AnyTensor loaded = load_npy(path);
    ASSERT_EQ(dtype_of(loaded), dtype_of<T>());
    EXPECT_TRUE(SameTensor(std::get<Tensor<T>>(loaded), t));
  }
};

TEST_P(NpyRoundTrip, EncodeParseSaveLoadIsBitExact) {
  if (GetParam().dtype == DType::Float32) {
    check<float>();
  } else {
    check<double>();
  }
}

std::vector<RoundTripCase> round_trip_cases() {
  const std::vector<Shape> shapes = {{},        {1},          {5},          {7, 3},       {2, 16, 4, 8},
                                     {2, 3, 1, 4, 5}, {0},    {3, 0, 2},    {0, 0}, {1, 1, 1, 1, 1, 1, 1, 1}};
  std::vector<RoundTripCase> cases;
  for (const DType d : {DType::Float32, DType::Float64}) {
    for (const Shape& s : shapes) cases.push_back({d, s});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Shapes, NpyRoundTrip, ::testing::ValuesIn(round_trip_cases()), case_name);

// ---- compatibility with numpy -------------------------------------------------------------

TEST(NpyNumpy, EncodeMatchesNumpyByteForByte) {
  Tensor<double> a({2, 3});
  for (int i = 0; i < 6; ++i) a[i] = i;
  EXPECT_EQ(to_text(encode_npy(a)), kNumpyArange6F8_2x3);

  Tensor<float> scalar({}, 1.5f);
  EXPECT_EQ(to_text(encode_npy(scalar)), kNumpyScalarF4);

  Tensor<float> v({5});
  for (int i = 0; i < 5; ++i) v[i] = static_cast<float>(i);
  EXPECT_EQ(to_text(encode_npy(v)), kNumpyArange5F4);

  EXPECT_EQ(to_text(encode_npy(Tensor<float>({0, 3}))), kNumpyEmptyF4_0x3);
  EXPECT_EQ(to_text(encode_npy(Tensor<float>(Shape(40, 1), 1.0f))), kNumpyOnesRank40F4);
}

TEST(NpyNumpy, ParsesWhatNumpyWrote) {
  const AnyTensor a = parse_npy(to_bytes(kNumpyArange6F8_2x3), "a.npy");
  ASSERT_EQ(dtype_of(a), DType::Float64);
  EXPECT_EQ(shape_of(a), (Shape{2, 3}));
  EXPECT_EQ(std::get<Tensor<double>>(a).values(), (std::vector<double>{0, 1, 2, 3, 4, 5}));

  const AnyTensor s = parse_npy(to_bytes(kNumpyScalarF4), "s.npy");
  EXPECT_EQ(shape_of(s), Shape{});
  EXPECT_EQ(std::get<Tensor<float>>(s).values(), std::vector<float>{1.5f});

  const AnyTensor e = parse_npy(to_bytes(kNumpyEmptyF4_0x3), "e.npy");
  EXPECT_EQ(shape_of(e), (Shape{0, 3}));
  EXPECT_EQ(std::get<Tensor<float>>(e).size(), 0);

  EXPECT_EQ(shape_of(parse_npy(to_bytes(kNumpyOnesRank40F4), "r.npy")), Shape(40, 1));
}

TEST(NpyNumpy, AcceptsFormatVersions2And3) {
  const AnyTensor v2 = parse_npy(to_bytes(kNumpyV2F4_2x2), "v2.npy");
  EXPECT_EQ(shape_of(v2), (Shape{2, 2}));
  EXPECT_EQ(std::get<Tensor<float>>(v2).values(), (std::vector<float>{1, -2, 0.5f, 3}));

  const AnyTensor v3 = parse_npy(to_bytes(kNumpyV3F8_3), "v3.npy");
  EXPECT_EQ(std::get<Tensor<double>>(v3).values(), (std::vector<double>{1, 2, 3}));

  const Bytes built = make_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }",
                               raw(std::vector<double>{-1, 7}), 2);
  EXPECT_EQ(std::get<Tensor<double>>(parse_npy(built, "b.npy")).values(), (std::vector<double>{-1, 7}));
}

TEST(NpyNumpy, AcceptsEveryValidSpellingOfTheHeader) {
  const std::string data = raw(std::vector<float>{1, 2, 3, 4, 5, 6});
  for (const std::string dict : {
           "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",   // numpy
           "{'shape': (2, 3), 'descr': '<f4', 'fortran_order': False}",     // any order, no trailing comma
           "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (2, 3)}",  // double quotes
           "{'descr':'<f4','fortran_order':False,'shape':(2,3,)}",          // tight, trailing comma in tuple
           "  {\t'descr' : '<f4' ,\n 'fortran_order' : False , 'shape' : ( 2 , 3 ) , }  ",  // whitespace
           "{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 3L), }",  // NumPy under Python 2
       }) {
    SCOPED_TRACE(dict);
    const AnyTensor t = parse_npy(make_npy(dict, data), "ok.npy");
    EXPECT_EQ(shape_of(t), (Shape{2, 3}));
    EXPECT_EQ(std::get<Tensor<float>>(t)[5], 6.0f);
  }
}

TEST(NpyNumpy, HugeRankFallsBackToVersion2) {
  // A header longer than 65535 bytes does not fit version 1.0's 16-bit length (numpy does the same).
  const Tensor<float> t(Shape(30000, 1), 2.5f);
  const Bytes bytes = encode_npy(t);
  EXPECT_EQ(std::to_integer<int>(bytes[6]), 2);
  const AnyTensor back = parse_npy(bytes, "big.npy");
  EXPECT_EQ(shape_of(back).size(), 30000u);
  EXPECT_EQ(std::get<Tensor<float>>(back).values(), std::vector<float>{2.5f});
}

// ---- rejection ------------------------------------------------------------------------------

TEST(NpyReject, BadMagic) {
  Bytes b = valid_f4_2x3();
  b[1] = std::byte{'X'};
  EXPECT_TRUE(RejectsNpy(b, "not a .npy file"));
  EXPECT_TRUE(RejectsNpy(to_bytes("PK\x03\x04 this is a zip file"), "not a .npy file"));
  EXPECT_TRUE(RejectsNpy(to_bytes("x"), "not a .npy file"));
}

TEST(NpyReject, TooShortOrEmpty) {
  EXPECT_TRUE(RejectsNpy({}, "too short"));
  EXPECT_TRUE(RejectsNpy(to_bytes("\x93NUM"), "too short"));
  EXPECT_TRUE(RejectsNpy(to_bytes("\x93NUMPY\x01"), "too short"));
  EXPECT_TRUE(RejectsNpy(to_bytes(std::string("\x93NUMPY\x01\x00\x10", 9)), "too short"));
  EXPECT_TRUE(RejectsNpy(to_bytes(std::string("\x93NUMPY\x02\x00\x10\x00", 10)), "too short"));
}

TEST(NpyReject, UnknownVersion) {
  for (const auto& [major, minor] : {std::pair{0, 0}, std::pair{4, 0}, std::pair{1, 1}, std::pair{2, 5}, std::pair{255, 255}}) {
    Bytes b = valid_f4_2x3();
    b[6] = static_cast<std::byte>(major);
    b[7] = static_cast<std::byte>(minor);
    EXPECT_TRUE(RejectsNpy(b, "unsupported .npy format version " + std::to_string(major) + "." + std::to_string(minor)));
  }
}

TEST(NpyReject, HeaderLengthBeyondTheFile) {
  Bytes b = valid_f4_2x3();
  b[8] = std::byte{0xff};
  b[9] = std::byte{0xff};
  EXPECT_TRUE(RejectsNpy(b, "header length 65535 runs past the end of the file"));
  Bytes v2 = to_bytes(kNumpyV2F4_2x2);
  v2[11] = std::byte{0x80};  // 2 GiB header in a 144-byte file
  EXPECT_TRUE(RejectsNpy(v2, "runs past the end of the file"));
  // A corrupted length field in a big file: 32 MiB of "header" is refused before it is parsed.
  Bytes absurd = make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", std::string(33u << 20, 'x'), 2);
  absurd[8] = absurd[9] = absurd[10] = std::byte{0};
  absurd[11] = std::byte{0x02};
  EXPECT_TRUE(RejectsNpy(absurd, "header length 33554432 is implausibly large"));
  Bytes zero = valid_f4_2x3();
  zero[8] = zero[9] = std::byte{0};
  EXPECT_TRUE(RejectsNpy(zero, "header length is 0"));
}

TEST(NpyReject, EveryTruncationOfAValidFile) {
  for (const Bytes& valid : {valid_f4_2x3(), to_bytes(kNumpyV2F4_2x2), to_bytes(kNumpyScalarF4)}) {
    for (std::size_t n = 0; n < valid.size(); ++n) {
      const Bytes prefix(valid.begin(), valid.begin() + static_cast<std::ptrdiff_t>(n));
      // The shortest cuts fail on the magic/length, cuts in the header on its length,
      // cuts in the data on the data size.
      EXPECT_TRUE(RejectsNpy(prefix, "")) << "prefix of " << n << " bytes";
    }
  }
  const Bytes valid = valid_f4_2x3();
  const Bytes cut(valid.begin(), valid.end() - 4);
  EXPECT_TRUE(RejectsNpy(cut, "truncated data: shape (2, 3) float32 needs 24 bytes but only 20 follow the header"));
}

TEST(NpyReject, TrailingBytes) {
  Bytes b = valid_f4_2x3();
  b.push_back(std::byte{0});
  EXPECT_TRUE(RejectsNpy(b, "needs 24 bytes but 25 follow the header (1 extra)"));
  const Bytes empty = make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (0,), }", "abcd");
  EXPECT_TRUE(RejectsNpy(empty, "trailing"));
}

TEST(NpyReject, BigEndian) {
  EXPECT_TRUE(RejectsNpy(make_npy("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", "12345678"),
                         "big-endian dtype '>f4' is not supported"));
  EXPECT_TRUE(RejectsNpy(make_npy("{'descr': '>f8', 'fortran_order': False, 'shape': (1,), }", "12345678"),
                         "big-endian dtype '>f8' is not supported"));
}

TEST(NpyReject, OtherDtypesAreNamed) {
  for (const std::string descr : {"<i4", "<f2", "|b1", "<c8", "|O", "<u8", "|u1", "<i8", "=f4", "float32", "", "<U5"}) {
    SCOPED_TRACE(descr);
    const Bytes b = make_npy("{'descr': '" + descr + "', 'fortran_order': False, 'shape': (2,), }", "12345678");
    EXPECT_TRUE(RejectsNpy(b, "dtype '" + descr + "'"));
    EXPECT_TRUE(RejectsNpy(b, "only float32 ('<f4') and float64 ('<f8') are"));
  }
  EXPECT_TRUE(RejectsNpy(make_npy("{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", "12345678"), "(int32)"));
  EXPECT_TRUE(RejectsNpy(make_npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", "12345678"),
                         "structured dtypes"));
}

TEST(NpyReject, FortranOrder) {
  EXPECT_TRUE(RejectsNpy(make_npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", std::string(24, '\0')),
                         "np.ascontiguousarray"));
}

TEST(NpyReject, MalformedHeaders) {
  const std::string data = raw(std::vector<float>{1, 2, 3, 4, 5, 6});
  const auto dict = [](std::string_view shape) {
    return "{'descr': '<f4', 'fortran_order': False, 'shape': " + std::string(shape) + ", }";
  };
  struct Case {
    std::string dict;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"{'descr': '<f4', 'fortran_order': False, }", "'shape' is missing"},
      {"{'fortran_order': False, 'shape': (6,), }", "'descr' is missing"},
      {"{'descr': '<f4', 'shape': (6,), }", "'fortran_order' is missing"},
      {"{}", "'descr' is missing"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (6,), 'foo': 1}", "unknown key 'foo'"},
      {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (6,), }", "'descr' appears twice"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (6,), 'shape': (6,)}", "'shape' appears twice"},
      {dict("(2 3)"), "expected ',' or ')'"},
      {dict("[2, 3]"), "expected a tuple"},
      {dict("(6)"), "trailing comma, as in (5,)"},
      {dict("(2,,3)"), "expected a non-negative integer"},
      {dict("(a,)"), "expected a non-negative integer"},
      {dict("(2.0, 3)"), "expected ',' or ')'"},
      {dict("(0x6,)"), "expected ',' or ')'"},
      {dict("(1_0,)"), "expected ',' or ')'"},
      {dict("(+6,)"), "expected a non-negative integer"},
      {dict("(06,)"), "leading zeros"},
      {dict("(2, 3"), "expected a non-negative integer"},
      {dict("(2, -3)"), "negative dimension -3"},
      {dict("(-1,)"), "negative dimension -1"},
      {dict("(99999999999999999999,)"), "too large for a 64-bit integer"},
      {dict("(4294967296, 4294967296)"), "is too large (its element count overflows)"},
      {dict("(3037000500, 3037000500, 0)"), "is too large"},
      {dict("(9223372036854775807,)"), "is too large (its size in bytes overflows)"},
      {dict("(1000000000000,)"), "needs 4000000000000 bytes but only 24 follow the header"},  // no allocation
      {"{'descr': '<f4', 'fortran_order': 0, 'shape': (6,)}", "expected True or False"},
      {"{'descr': '<f4', 'fortran_order': false, 'shape': (6,)}", "expected True or False"},
      {"{'descr': '<f4', 'fortran_order': Falsey, 'shape': (6,)}", "expected True or False"},
      {"{'descr': <f4, 'fortran_order': False, 'shape': (6,)}", "expected a quoted type string"},
      {"{'descr': '<f4\\x', 'fortran_order': False, 'shape': (6,)}", "escape sequences"},
      {"{'descr': '<f4, 'fortran_order': False, 'shape': (6,)}", "expected ',' or '}' after the value of 'descr'"},
      {"{'descr' '<f4', 'fortran_order': False, 'shape': (6,)}", "expected ':' after a key"},
      {"{'descr': '<f4' 'fortran_order': False, 'shape': (6,)}", "expected ',' or '}'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (6,),, }", "expected a quoted key or '}'"},
      {"{descr: '<f4', 'fortran_order': False, 'shape': (6,)}", "expected a quoted key"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (6,)", "expected ',' or '}'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (6,)} junk", "after the closing '}'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (6,)}}", "after the closing '}'"},
      {"['descr', '<f4']", "expected '{'"},
      {"", "expected '{'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }\n", ""},  // a newline inside is fine...
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.dict);
    if (c.expected.empty()) {
      EXPECT_NO_THROW((void)parse_npy(make_npy(c.dict, data), "bad.npy"));
    } else {
      EXPECT_TRUE(RejectsNpy(make_npy(c.dict, data), c.expected));
    }
  }
}

TEST(NpyReject, HeaderMustEndInNewline) {
  Bytes b = valid_f4_2x3();
  const std::size_t header_end = 10 + std::to_integer<std::size_t>(b[8]);
  b[header_end - 1] = std::byte{' '};
  EXPECT_TRUE(RejectsNpy(b, "does not end with a newline"));
  b[header_end - 1] = std::byte{'\0'};
  EXPECT_TRUE(RejectsNpy(b, "does not end with a newline"));
}

TEST(NpyReject, ControlBytesInTheHeaderStayOnOneLine) {
  // The message quotes the header; a newline or NUL in it must not break the one-line rule.
  const Bytes b = make_npy("{'descr': '<f4', 'fortran_order': False,\n\r\x01 'shape': (6,\n\n), }junk\r\n", "x");
  EXPECT_TRUE(RejectsNpy(b, "expected a quoted key or '}'"));
  EXPECT_TRUE(RejectsNpy(make_npy("{'descr': '\xfe\xff', 'fortran_order': False, 'shape': (1,), }", "1234"),
                         "dtype '\\xfe\\xff'"));
  EXPECT_TRUE(RejectsNpy(make_npy("{'descr': '<f4\x01', 'fortran_order': False, 'shape': (1,), }", "1234"),
                         "control character in a string"));
  EXPECT_TRUE(RejectsNpy(make_npy("{'descr': '<f4\n', 'fortran_order': False, 'shape': (1,), }", "1234"),
                         "unterminated string"));
  EXPECT_TRUE(ThrowsNpyError([] { (void)parse_npy(Bytes{}, "a\nb.npy"); }, "a\\x0ab.npy", "too short"));
}

TEST(NpyReject, RandomByteFlipsNeverCrash) {
  // Each mutant either parses to a tensor backed by exactly the bytes after its header, or is
  // rejected with a proper Error. Anything else (a crash, another exception) fails the test.
  std::mt19937 rng(20240611u);
  int parsed = 0;
  int rejected = 0;
  for (const Bytes& valid : {valid_f4_2x3(), to_bytes(kNumpyArange6F8_2x3), to_bytes(kNumpyV2F4_2x2),
                             to_bytes(kNumpyScalarF4)}) {
    for (int iter = 0; iter < 3000; ++iter) {
      Bytes b = valid;
      const int flips = 1 + static_cast<int>(rng() % 4);
      for (int f = 0; f < flips; ++f) {
        // Mostly the preamble and header, where the parsing happens.
        const std::size_t limit = (rng() % 4 == 0) ? b.size() : std::min<std::size_t>(b.size(), 80);
        b[rng() % limit] = static_cast<std::byte>(rng() & 0xff);
      }
      if (rng() % 8 == 0) b.resize(rng() % (b.size() + 1));
      try {
        const AnyTensor t = parse_npy(b, "flip.npy");
        const auto count = static_cast<std::size_t>(Tensor<float>::count(shape_of(t)));
        const std::size_t bytes = count * static_cast<std::size_t>(dtype_bytes(dtype_of(t)));
        // The data is exactly what follows the header the (mutated) preamble declares.
        const bool v1 = std::to_integer<int>(b[6]) == 1;
        std::size_t data_offset = v1 ? 10 : 12;
        for (std::size_t i = 0; i < (v1 ? 2u : 4u); ++i) data_offset += std::to_integer<std::size_t>(b[8 + i]) << (8 * i);
        ASSERT_EQ(bytes, b.size() - data_offset);
        ++parsed;
      } catch (const Error& e) {
        const std::string msg = e.what();
        ASSERT_EQ(msg.find('\n'), std::string::npos) << msg;
        ASSERT_EQ(msg.rfind("flip.npy: ", 0), 0u) << msg;
        ++rejected;
      }
    }
  }
  EXPECT_GT(parsed, 0);
  EXPECT_GT(rejected, 0);
}

// ---- files ----------------------------------------------------------------------------------

TEST(NpyFile, LoadMissingFile) {
  TempDir dir;
  const std::string path = dir.file("Q.npy");
  EXPECT_TRUE(ThrowsNpyError([&] { (void)load_npy(path); }, path, "no such file"));
  EXPECT_TRUE(ThrowsNpyError([&] { (void)load_npy_as<float>(path); }, path, "no such file"));
  EXPECT_TRUE(ThrowsNpyError([&] { (void)load_npy(dir.file("nope/Q.npy")); }, dir.file("nope/Q.npy"), "no such file"));
}

TEST(NpyFile, LoadDirectory) {
  TempDir dir;
  const std::string path = dir.path().string();
  EXPECT_TRUE(ThrowsNpyError([&] { (void)load_npy(path); }, path, "is a directory"));
}

TEST(NpyFile, LoadRejectsCorruptFilesWithTheFileName) {
  TempDir dir;
  const std::string empty = dir.file("empty.npy");
  write_raw(empty, {});
  EXPECT_TRUE(ThrowsNpyError([&] { (void)load_npy(empty); }, empty, "too short"));

  const Bytes valid = valid_f4_2x3();
  const std::string truncated = dir.file("truncated.npy");
  write_raw(truncated, Bytes(valid.begin(), valid.end() - 1));
  EXPECT_TRUE(ThrowsNpyError([&] { (void)load_npy(truncated); }, truncated, "needs 24 bytes but only 23"));

  Bytes longer = valid;
  longer.push_back(std::byte{1});
  const std::string trailing = dir.file("trailing.npy");
  write_raw(trailing, longer);
  EXPECT_TRUE(ThrowsNpyError([&] { (void)load_npy(trailing); }, trailing, "1 extra"));

  // A header that claims a petabyte of data is rejected before anything is allocated.
  const std::string huge = dir.file("huge.npy");
  write_raw(huge, make_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (1000000, 1000000, 1000), }", ""));
  EXPECT_TRUE(ThrowsNpyError([&] { (void)load_npy(huge); }, huge, "needs 8000000000000000 bytes but only 0"));

  Bytes long_header = valid;
  long_header[9] = std::byte{0x7f};
  const std::string past = dir.file("past.npy");
  write_raw(past, long_header);
  EXPECT_TRUE(ThrowsNpyError([&] { (void)load_npy(past); }, past, "runs past the end of the file"));

  // Every truncation, through the file path too.
  const std::string cut = dir.file("cut.npy");
  for (std::size_t n = 0; n < valid.size(); ++n) {
    write_raw(cut, Bytes(valid.begin(), valid.begin() + static_cast<std::ptrdiff_t>(n)));
    EXPECT_TRUE(ThrowsNpyError([&] { (void)load_npy(cut); }, cut, "")) << n << " bytes";
  }
}

TEST(NpyFile, LoadAsChecksTheDtype) {
  TempDir dir;
  const std::string path = dir.file("K.npy");
  save_npy(path, Tensor<float>({2, 2}, 1.0f));
  EXPECT_TRUE(ThrowsNpyError([&] { (void)load_npy_as<double>(path); }, path, "holds float32 but float64 was expected"));
  EXPECT_EQ(load_npy_as<float>(path).shape(), (Shape{2, 2}));
  save_npy(path, Tensor<double>({3}, 2.0));
  EXPECT_TRUE(ThrowsNpyError([&] { (void)load_npy_as<float>(path); }, path, "holds float64 but float32 was expected"));
  EXPECT_EQ(load_npy_as<double>(path).values(), (std::vector<double>{2, 2, 2}));
}

TEST(NpyFile, SaveIntoMissingDirectoryThrowsAndLeavesNothing) {
  TempDir dir;
  const std::string path = dir.file("out/O.npy");
  try {
    save_npy(path, Tensor<float>({2}, 1.0f));
    FAIL() << "save_npy into a missing directory did not throw";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "cannot write " + path + ": No such file or directory");
  }
  EXPECT_FALSE(fs::exists(dir.path() / "out"));
  EXPECT_TRUE(dir.entries().empty());
}

TEST(NpyFile, SaveOntoADirectoryThrowsAndCleansUp) {
  TempDir dir;
  fs::create_directory(dir.path() / "O.npy");
  const std::string path = dir.file("O.npy");
  EXPECT_THROW(save_npy(path, Tensor<double>({2}, 1.0)), Error);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"O.npy"}) << "the temporary file was left behind";
  EXPECT_TRUE(fs::is_directory(path));
}

TEST(NpyFile, SaveReplacesAnExistingFileAndLeavesNoTemporaries) {
  TempDir dir;
  const std::string path = dir.file("O.npy");
  write_raw(path, to_bytes("old contents"));
  const Tensor<float> t = random_tensor<float>({4, 5}, 7);
  for (int i = 0; i < 3; ++i) save_npy(path, t);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"O.npy"});
  EXPECT_TRUE(SameTensor(load_npy_as<float>(path), t));
  const auto perms = fs::status(path).permissions();
  EXPECT_NE(perms & fs::perms::owner_read, fs::perms::none);
  EXPECT_NE(perms & fs::perms::owner_write, fs::perms::none);
}

TEST(NpyFile, WriteFileAtomicWritesExactBytes) {
  TempDir dir;
  const std::string path = dir.file("raw.bin");
  const Bytes bytes = to_bytes(std::string("\0\x01\x02 hello", 9));
  write_file_atomic(path, bytes);
  EXPECT_EQ(read_raw(path), to_text(bytes));
  write_file_atomic(path, {});
  EXPECT_EQ(fs::file_size(path), 0u);
  EXPECT_THROW(write_file_atomic("", bytes), Error);
}

// ---- dtype helpers and shape formatting ---------------------------------------------------

TEST(NpyDType, ParseAndPrint) {
  for (const char* n : {"float32", "f32", "fp32"}) EXPECT_EQ(parse_dtype(n), DType::Float32) << n;
  for (const char* n : {"float64", "f64", "fp64"}) EXPECT_EQ(parse_dtype(n), DType::Float64) << n;
  for (const char* n : {"", "float16", "bf16", "Float32", "f32 ", "<f4", "double"}) {
    EXPECT_THROW((void)parse_dtype(n), Error) << n;
  }
  try {
    (void)parse_dtype("int8");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown dtype 'int8'"), std::string::npos) << e.what();
  }
  EXPECT_EQ(to_string(DType::Float32), "float32");
  EXPECT_EQ(to_string(DType::Float64), "float64");
  EXPECT_EQ(parse_dtype(to_string(DType::Float64)), DType::Float64);
  EXPECT_EQ(dtype_bytes(DType::Float32), 4);
  EXPECT_EQ(dtype_bytes(DType::Float64), 8);
  static_assert(dtype_of<float>() == DType::Float32);
  static_assert(dtype_of<double>() == DType::Float64);

  const AnyTensor f = Tensor<float>({2, 3});
  const AnyTensor d = Tensor<double>({4});
  EXPECT_EQ(dtype_of(f), DType::Float32);
  EXPECT_EQ(dtype_of(d), DType::Float64);
  EXPECT_EQ(shape_of(f), (Shape{2, 3}));
  EXPECT_EQ(shape_of(d), (Shape{4}));
}

TEST(NpyShapeString, FormatsLikeNumpy) {
  EXPECT_EQ(shape_string({}), "()");
  EXPECT_EQ(shape_string({5}), "(5,)");
  EXPECT_EQ(shape_string({2, 3}), "(2, 3)");
  EXPECT_EQ(shape_string({2, 128, 8, 64}), "(2, 128, 8, 64)");
  EXPECT_EQ(shape_string({0, 1}), "(0, 1)");
}

TEST(NpyEncode, RejectsATensorWhoseStorageDisagreesWithItsShape) {
  Tensor<float> t({2, 3});
  t.values().resize(5);
  EXPECT_THROW((void)encode_npy(t), Error);
}

}  // namespace
}  // namespace ringattn
