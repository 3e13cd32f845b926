// A strict reader and writer for NumPy .npy files.
//
// The format (numpy.lib.format, NEP 1):
//
//   offset 0   6 bytes   magic "\x93NUMPY"
//   offset 6   2 bytes   version major, minor: 1.0, 2.0 or 3.0
//   offset 8   2 bytes   HEADER_LEN, little-endian uint16 (version 1.0)
//              4 bytes   HEADER_LEN, little-endian uint32 (versions 2.0 and 3.0)
//   then       HEADER_LEN bytes: a Python dict literal, padded with spaces, ending in '\n':
//                {'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }
//              (3.0 only differs in that the header may be UTF-8 rather than latin-1)
//   then       the elements in C order: exactly count(shape) * itemsize bytes, nothing after.
//
// Files come from users and may be truncated, corrupted or simply something else, so nothing
// here trusts a length before it has been checked against the bytes that are really there:
// the header is parsed by a small recursive-descent parser (no eval, no regex), and the data
// size the header declares is compared with the file's size before any tensor is allocated.
// Every problem is a ringattn::Error with a one-line message "<file>: <problem>".
#include "ringattn/core/npy.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <limits>
#include <new>
#include <optional>
#include <stdexcept>
#include <system_error>
#include <utility>

#include "ringattn/core/error.hpp"

namespace ringattn {

// Element bytes are copied as they are: the file is little-endian and so is every host this
// project builds for (x86-64, AArch64). A big-endian port would byte-swap in copy_elements().
static_assert(std::endian::native == std::endian::little, "the .npy reader assumes a little-endian host");

namespace {

constexpr std::array<unsigned char, 6> kMagic{0x93, 'N', 'U', 'M', 'P', 'Y'};
constexpr std::size_t kMaxPreamble = 12;  // magic + version + 4-byte header length
constexpr std::size_t kAlign = 64;        // numpy pads the header so the data starts at 64*k
// numpy (>= 1.24) leaves room after the dict for the first dimension to grow to 21 digits.
constexpr std::size_t kGrowthAxisMaxDigits = 21;
// numpy's headers are a few hundred bytes (it refuses to read ones over 10000 by default); a
// larger length is a corrupted field, and refusing it early avoids reading megabytes of
// garbage. Generous enough for any shape the writer below produces in practice.
constexpr std::uint64_t kMaxHeaderLen = std::uint64_t{16} << 20;

std::string errno_message(int err) { return std::generic_category().message(err); }

// A shape for a message; a corrupted header may declare thousands of dimensions.
std::string shape_for_message(const std::vector<std::int64_t>& shape) {
  std::string s = shape_string(shape);
  if (s.size() > 120) s = s.substr(0, 120) + "...)";
  return s;
}

// Throws ringattn::Error "<name>: <parts...>". Parts must already be one line.
template <class... Parts>
[[noreturn]] void npy_fail(std::string_view name, Parts&&... parts) {
  fail(printable(name, false), ": ", std::forward<Parts>(parts)...);
}

unsigned byte_at(std::span<const std::byte> b, std::size_t i) { return std::to_integer<unsigned>(b[i]); }

std::string_view as_chars(std::span<const std::byte> b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

// ---- preamble: magic, version, header length ----------------------------------------------

struct Preamble {
  std::uint64_t header_start = 0;  // offset of the dict
  std::uint64_t header_len = 0;    // bytes of dict + padding + '\n'
};

// @p prefix holds the first min(file_size, kMaxPreamble) bytes of a file of @p file_size bytes.
Preamble parse_preamble(std::span<const std::byte> prefix, std::uint64_t file_size, std::string_view name) {
  const std::size_t n = prefix.size();
  for (std::size_t i = 0; i < std::min(n, kMagic.size()); ++i) {
    if (byte_at(prefix, i) != kMagic[i]) {
      npy_fail(name, "not a .npy file (it does not start with the magic bytes \\x93NUMPY)");
    }
  }
  if (n < kMagic.size() + 2) npy_fail(name, "too short to be a .npy file (", file_size, " bytes)");
  const unsigned major = byte_at(prefix, 6);
  const unsigned minor = byte_at(prefix, 7);
  if (major < 1 || major > 3 || minor != 0) {
    npy_fail(name, "unsupported .npy format version ", major, ".", minor, " (supported: 1.0, 2.0, 3.0)");
  }
  const std::size_t len_bytes = major == 1 ? 2 : 4;
  Preamble p;
  p.header_start = 8 + len_bytes;
  if (n < p.header_start) {
    npy_fail(name, "too short to be a .npy file (", file_size, " bytes): the header length is cut off");
  }
  for (std::size_t i = 0; i < len_bytes; ++i) p.header_len |= std::uint64_t{byte_at(prefix, 8 + i)} << (8 * i);
  if (p.header_len == 0) npy_fail(name, "header length is 0 (a .npy header is a dict that ends in a newline)");
  if (p.header_len > file_size - p.header_start) {
    npy_fail(name, "header length ", p.header_len, " runs past the end of the file (only ",
             file_size - p.header_start, " bytes follow the header length field)");
  }
  if (p.header_len > kMaxHeaderLen) {
    npy_fail(name, "header length ", p.header_len, " is implausibly large (the file is corrupted)");
  }
  return p;
}

// ---- header: a Python dict literal --------------------------------------------------------

struct Header {
  DType dtype = DType::Float32;
  std::vector<std::int64_t> shape;
};

// Names a NumPy type string such as '<i4' for a message ("int32"); empty if it is not one.
std::string describe_descr(std::string_view d) {
  if (d.size() < 2 || std::string_view("<>|=").find(d[0]) == std::string_view::npos) return {};
  const char kind = d[1];
  const std::string_view digits = d.substr(2);
  int size = 0;
  for (const char c : digits) {
    if (c < '0' || c > '9' || size > 1000) return {};
    size = size * 10 + (c - '0');
  }
  const std::string bits = std::to_string(size * 8);
  if (d[0] == '=') return "native byte order";  // numpy itself never writes '='
  switch (kind) {
    case 'f': return digits.empty() ? "" : "float" + bits;
    case 'i': return digits.empty() ? "" : "int" + bits;
    case 'u': return digits.empty() ? "" : "uint" + bits;
    case 'c': return digits.empty() ? "" : "complex" + bits;
    case 'b': return "bool";
    case 'O': return "Python objects";
    case 'U': return "unicode strings";
    case 'S': return "byte strings";
    case 'M': return "datetime64";
    case 'm': return "timedelta64";
    case 'V': return "raw/structured records";
    default: return {};
  }
}

DType dtype_from_descr(std::string_view descr, std::string_view name) {
  if (descr == "<f4") return DType::Float32;
  if (descr == "<f8") return DType::Float64;
  const std::string shown = printable(descr, true, 40);
  if (descr == ">f4" || descr == ">f8") {
    npy_fail(name, "big-endian dtype '", shown, "' is not supported: convert it with arr.astype('<",
             descr.substr(1), "')");
  }
  const std::string what = describe_descr(descr);
  npy_fail(name, "dtype '", shown, "'", what.empty() ? "" : " (" + what + ")",
           " is not supported: only float32 ('<f4') and float64 ('<f8') are; convert it with "
           "arr.astype(np.float32)");
}

// Recursive-descent parser for exactly the dict numpy writes, in Python literal syntax:
//   header := ws '{' ws [ entry (ws ',' ws entry)* ws [','] ] ws '}' ws        (ends in '\n')
//   entry  := string ws ':' ws value         keys: 'descr', 'fortran_order', 'shape', once each
//   string := '...' | "..."                  (no escapes, no control characters)
//   value  := string | True | False | '(' ')' | '(' dim ws ',' ws ')' | '(' dim (ws ',' ws dim)+ ws [','] ws ')'
//   dim    := [0-9]+ [L]                     (L: Python 2 long, as NumPy wrote under Python 2)
class HeaderParser {
 public:
  HeaderParser(std::string_view text, std::string_view name) : text_(text), name_(name) {}

  Header parse() {
    if (text_.empty() || text_.back() != '\n') {
      npy_fail(name_, "malformed header: it does not end with a newline (in header \"", excerpt(), "\")");
    }
    skip_ws();
    expect('{', "expected '{' (the header is a Python dict)");
    std::optional<std::string> descr;
    std::optional<bool> fortran_order;
    std::optional<std::vector<std::int64_t>> shape;
    skip_ws();
    while (!at('}')) {
      const std::string key = parse_string("expected a quoted key or '}'");
      skip_ws();
      expect(':', "expected ':' after a key");
      skip_ws();
      const auto duplicate = [&] { npy_fail(name_, "malformed header: key '", key, "' appears twice"); };
      if (key == "descr") {
        if (descr) duplicate();
        if (at('[')) {
          npy_fail(name_, "structured dtypes (a 'descr' list) are not supported: only float32 and "
                          "float64 arrays are");
        }
        descr = parse_string("expected a quoted type string such as '<f4' for 'descr'");
      } else if (key == "fortran_order") {
        if (fortran_order) duplicate();
        fortran_order = parse_bool();
      } else if (key == "shape") {
        if (shape) duplicate();
        shape = parse_shape();
      } else {
        npy_fail(name_, "unknown key '", printable(key, true, 40),
                 "' in header (a .npy header has exactly the keys 'descr', 'fortran_order' and 'shape')");
      }
      skip_ws();
      if (eat(',')) {
        skip_ws();
        continue;
      }
      if (!at('}')) malformed("expected ',' or '}' after the value of '" + key + "'");
    }
    ++pos_;  // the '}'
    skip_ws();
    if (pos_ != text_.size()) malformed("unexpected text after the closing '}'");

    for (const auto& [present, key] : {std::pair{descr.has_value(), "descr"},
                                       std::pair{fortran_order.has_value(), "fortran_order"},
                                       std::pair{shape.has_value(), "shape"}}) {
      if (!present) npy_fail(name_, "malformed header: the key '", key, "' is missing");
    }
    Header h;
    h.dtype = dtype_from_descr(*descr, name_);
    if (*fortran_order) {
      npy_fail(name_, "Fortran-order arrays are not supported: save np.ascontiguousarray(arr) instead");
    }
    h.shape = std::move(*shape);
    return h;
  }

 private:
  [[nodiscard]] std::string excerpt() const {
    std::string_view t = text_;
    while (!t.empty() && (t.back() == ' ' || t.back() == '\n')) t.remove_suffix(1);
    return printable(t, true, 100);
  }

  [[noreturn]] void malformed(std::string_view what) const {
    npy_fail(name_, "malformed header: ", what, " at column ", pos_ + 1, " (in header \"", excerpt(), "\")");
  }

  [[nodiscard]] bool at(char c) const { return pos_ < text_.size() && text_[pos_] == c; }
  [[nodiscard]] bool at_digit() const { return pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9'; }

  bool eat(char c) {
    if (!at(c)) return false;
    ++pos_;
    return true;
  }

  void expect(char c, std::string_view what) {
    if (!eat(c)) malformed(what);
  }

  // Python's whitespace between tokens (newlines are allowed inside brackets).
  void skip_ws() {
    while (pos_ < text_.size()) {
      const char c = text_[pos_];
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r' && c != '\f') break;
      ++pos_;
    }
  }

  std::string parse_string(std::string_view what) {
    if (!at('\'') && !at('"')) malformed(what);
    const char quote = text_[pos_++];
    const std::size_t start = pos_;
    while (pos_ < text_.size() && text_[pos_] != quote) {
      const auto c = static_cast<unsigned char>(text_[pos_]);
      if (c == '\\') malformed("escape sequences are not supported in header strings");
      if (c == '\n' || c == '\r') malformed("unterminated string");
      if (c < 0x20 || c == 0x7f) malformed("control character in a string");
      ++pos_;
    }
    if (pos_ >= text_.size()) malformed("unterminated string");
    std::string s(text_.substr(start, pos_ - start));
    ++pos_;  // the closing quote
    return s;
  }

  bool parse_bool() {
    const std::size_t start = pos_;
    while (pos_ < text_.size()) {
      const char c = text_[pos_];
      if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')) break;
      ++pos_;
    }
    const std::string_view word = text_.substr(start, pos_ - start);
    if (word == "True") return true;
    if (word == "False") return false;
    pos_ = start;
    malformed("expected True or False for 'fortran_order'");
  }

  std::vector<std::int64_t> parse_shape() {
    expect('(', "expected a tuple such as (2, 3) for 'shape'");
    std::vector<std::int64_t> dims;
    skip_ws();
    if (eat(')')) return dims;  // () : a scalar
    for (;;) {
      dims.push_back(parse_dim());
      skip_ws();
      if (at(')')) {
        if (dims.size() == 1) malformed("a one-dimensional shape needs a trailing comma, as in (5,)");
        ++pos_;
        return dims;
      }
      expect(',', "expected ',' or ')' in 'shape'");
      skip_ws();
      if (eat(')')) return dims;
    }
  }

  std::int64_t parse_dim() {
    const bool negative = eat('-');
    const std::size_t start = pos_;
    if (!at_digit()) malformed("expected a non-negative integer in 'shape'");
    std::int64_t value = 0;
    bool overflow = false;
    while (at_digit()) {
      const int digit = text_[pos_] - '0';
      if (value > (std::numeric_limits<std::int64_t>::max() - digit) / 10) {
        overflow = true;
      } else {
        value = value * 10 + digit;
      }
      ++pos_;
    }
    const std::string_view digits = text_.substr(start, pos_ - start);
    if (digits.size() > 1 && digits[0] == '0') {
      pos_ = start;
      malformed("leading zeros are not allowed in 'shape'");
    }
    if (at('L')) ++pos_;
    if (negative) {
      npy_fail(name_, "shape has a negative dimension -", printable(digits, true, 30), " (in header \"",
               excerpt(), "\")");
    }
    if (overflow) {
      npy_fail(name_, "shape has a dimension too large for a 64-bit integer (", printable(digits, true, 30), ")");
    }
    return value;
  }

  std::string_view text_;
  std::string_view name_;
  std::size_t pos_ = 0;
};

// The number of data bytes the header declares; checks that it equals @p available (the bytes
// after the header) so that nothing is allocated for a size the file does not back up.
std::size_t checked_data_bytes(const Header& h, std::uint64_t available, std::string_view name) {
  constexpr auto kMax = std::numeric_limits<std::int64_t>::max();
  std::int64_t count = 1;
  for (const std::int64_t d : h.shape) {  // the same order and test as Tensor::count
    if (d != 0 && count > kMax / d) {
      npy_fail(name, "shape ", shape_for_message(h.shape), " is too large (its element count overflows)");
    }
    count *= d;
  }
  const auto itemsize = static_cast<std::uint64_t>(dtype_bytes(h.dtype));
  const auto ucount = static_cast<std::uint64_t>(count);
  if (ucount > std::numeric_limits<std::size_t>::max() / itemsize) {
    npy_fail(name, "shape ", shape_for_message(h.shape), " is too large (its size in bytes overflows)");
  }
  const std::uint64_t expected = ucount * itemsize;
  if (available < expected) {
    npy_fail(name, "truncated data: shape ", shape_for_message(h.shape), " ", to_string(h.dtype), " needs ",
             expected, " bytes but only ", available, " follow the header");
  }
  if (available > expected) {
    npy_fail(name, "unexpected trailing data: shape ", shape_for_message(h.shape), " ", to_string(h.dtype),
             " needs ", expected, " bytes but ", available, " follow the header (", available - expected,
             " extra)");
  }
  return static_cast<std::size_t>(expected);
}

// A zero-filled tensor of @p shape; an allocation failure becomes a ringattn::Error.
template <class T>
Tensor<T> allocate(const std::vector<std::int64_t>& shape, std::string_view name) {
  try {
    return Tensor<T>(shape);
  } catch (const std::bad_alloc&) {
  } catch (const std::length_error&) {  // more elements than a std::vector can hold
  }
  npy_fail(name, "not enough memory for a ", to_string(dtype_of<T>()), " tensor of shape ", shape_for_message(shape));
}

// Allocates the tensor for @p h and lets @p fill write its nbytes bytes of data.
template <class Fill>
AnyTensor build(const Header& h, std::size_t nbytes, std::string_view name, Fill&& fill) {
  const auto make = [&](auto tag) -> AnyTensor {
    using T = decltype(tag);
    Tensor<T> t = allocate<T>(h.shape, name);
    if (nbytes > 0) fill(reinterpret_cast<std::byte*>(t.data()), nbytes);
    return t;
  };
  if (h.dtype == DType::Float32) return make(float{});
  return make(double{});
}

// ---- POSIX file helpers -------------------------------------------------------------------

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  [[nodiscard]] int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

void read_exact(int fd, std::byte* dst, std::size_t n, std::uint64_t offset, std::string_view name) {
  while (n > 0) {
    const std::size_t chunk = std::min<std::size_t>(n, std::size_t{1} << 30);
    const ssize_t r = ::pread(fd, dst, chunk, static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      npy_fail(name, "read failed: ", errno_message(errno));
    }
    if (r == 0) npy_fail(name, "the file ended early (did it change while it was being read?)");
    const auto got = static_cast<std::size_t>(r);
    dst += got;
    n -= got;
    offset += got;
  }
}

// A short random suffix for a temporary file name; uniqueness is enforced by O_EXCL.
std::string temp_suffix() {
  static std::atomic<std::uint64_t> counter{0};
  const auto now = static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  std::uint64_t x = now ^ (static_cast<std::uint64_t>(::getpid()) << 32) ^
                    (counter.fetch_add(1) * 0x9E3779B97F4A7C15ULL);
  static constexpr char kChars[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  std::string s;
  for (int i = 0; i < 6; ++i) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 29;
    s += kChars[x % (sizeof(kChars) - 1)];
  }
  return s;
}

}  // namespace

// ---- DType --------------------------------------------------------------------------------

std::string_view to_string(DType dtype) { return dtype == DType::Float32 ? "float32" : "float64"; }

DType parse_dtype(std::string_view name) {
  if (name == "float32" || name == "f32" || name == "fp32") return DType::Float32;
  if (name == "float64" || name == "f64" || name == "fp64") return DType::Float64;
  fail("unknown dtype '", printable(name, true, 40), "': expected float32 (f32, fp32) or float64 (f64, fp64)");
}

int dtype_bytes(DType dtype) { return dtype == DType::Float32 ? 4 : 8; }

DType dtype_of(const AnyTensor& t) {
  return std::holds_alternative<Tensor<float>>(t) ? DType::Float32 : DType::Float64;
}

const std::vector<std::int64_t>& shape_of(const AnyTensor& t) {
  return std::visit([](const auto& x) -> const std::vector<std::int64_t>& { return x.shape(); }, t);
}

// ---- reading ------------------------------------------------------------------------------

AnyTensor parse_npy(std::span<const std::byte> bytes, std::string_view name) {
  const Preamble p = parse_preamble(bytes.first(std::min(bytes.size(), kMaxPreamble)), bytes.size(), name);
  const auto header_start = static_cast<std::size_t>(p.header_start);
  const auto header_len = static_cast<std::size_t>(p.header_len);  // <= bytes.size(), checked
  const Header h = HeaderParser(as_chars(bytes.subspan(header_start, header_len)), name).parse();
  const std::span<const std::byte> data = bytes.subspan(header_start + header_len);
  const std::size_t nbytes = checked_data_bytes(h, data.size(), name);
  return build(h, nbytes, name, [&](std::byte* dst, std::size_t n) { std::memcpy(dst, data.data(), n); });
}

AnyTensor load_npy(const std::string& path) {
  const std::string_view name = path;
  if (path.empty()) fail("cannot read a .npy file from an empty path");
  const Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    const int err = errno;
    if (err == ENOENT) npy_fail(name, "no such file");
    npy_fail(name, "cannot open: ", errno_message(err));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) npy_fail(name, "cannot read: ", errno_message(errno));
  if (S_ISDIR(st.st_mode)) npy_fail(name, "is a directory, not a .npy file");
  if (!S_ISREG(st.st_mode)) npy_fail(name, "is not a regular file");
  const auto file_size = static_cast<std::uint64_t>(st.st_size);

  // Read only what each step has validated: the preamble, then the header it declares (which
  // fits in the file), then the data once its declared size matches the file's size.
  std::array<std::byte, kMaxPreamble> prefix{};
  const auto prefix_len = static_cast<std::size_t>(std::min<std::uint64_t>(file_size, kMaxPreamble));
  read_exact(fd.get(), prefix.data(), prefix_len, 0, name);
  const Preamble p = parse_preamble(std::span<const std::byte>(prefix.data(), prefix_len), file_size, name);

  std::vector<std::byte> header(static_cast<std::size_t>(p.header_len));
  read_exact(fd.get(), header.data(), header.size(), p.header_start, name);
  const Header h = HeaderParser(as_chars(header), name).parse();

  const std::uint64_t data_offset = p.header_start + p.header_len;
  const std::size_t nbytes = checked_data_bytes(h, file_size - data_offset, name);
  return build(h, nbytes, name,
               [&](std::byte* dst, std::size_t n) { read_exact(fd.get(), dst, n, data_offset, name); });
}

template <class T>
Tensor<T> load_npy_as(const std::string& path) {
  AnyTensor any = load_npy(path);
  if (auto* t = std::get_if<Tensor<T>>(&any)) return std::move(*t);
  npy_fail(path, "holds ", to_string(dtype_of(any)), " but ", to_string(dtype_of<T>()),
           " was expected (convert it with arr.astype(np.", to_string(dtype_of<T>()), "))");
}

// ---- writing ------------------------------------------------------------------------------

template <class T>
std::vector<std::byte> encode_npy(const Tensor<T>& t) {
  const std::vector<std::int64_t>& shape = t.shape();
  const std::int64_t count = Tensor<T>::count(shape);
  require(static_cast<std::uint64_t>(count) == t.values().size(), "cannot encode a tensor of shape ",
          shape_for_message(shape), " that holds ", t.values().size(), " elements (its shape needs ", count, ")");

  // Byte for byte what numpy.save writes (numpy >= 1.24): keys sorted, trailing ", ", room for
  // the first dimension to grow, then spaces and '\n' up to a multiple of 64 bytes.
  std::string dict = "{'descr': '";
  dict += dtype_of<T>() == DType::Float32 ? "<f4" : "<f8";
  dict += "', 'fortran_order': False, 'shape': ";
  dict += shape_string(shape);
  dict += ", }";
  if (!shape.empty()) {
    const std::size_t digits = std::to_string(shape[0]).size();
    if (digits < kGrowthAxisMaxDigits) dict.append(kGrowthAxisMaxDigits - digits, ' ');
  }
  const auto header_len = [&](std::size_t preamble) {
    const std::size_t unpadded = dict.size() + 1;  // + '\n'
    return unpadded + (kAlign - (preamble + unpadded) % kAlign);
  };
  // Version 1.0 unless the header outgrows its 16-bit length (thousands of dimensions).
  std::size_t preamble = 10;
  std::size_t hlen = header_len(preamble);
  unsigned char major = 1;
  if (hlen > 0xffff) {
    preamble = 12;
    hlen = header_len(preamble);
    major = 2;
  }

  const std::size_t data_bytes = t.values().size() * sizeof(T);
  std::vector<std::byte> out;
  out.reserve(preamble + hlen + data_bytes);
  const auto put = [&](unsigned c) { out.push_back(static_cast<std::byte>(c & 0xffU)); };
  for (const unsigned char c : kMagic) put(c);
  put(major);
  put(0);
  for (std::size_t i = 0; i < preamble - 8; ++i) put(static_cast<unsigned>(hlen >> (8 * i)));
  for (const char c : dict) put(static_cast<unsigned char>(c));
  while (out.size() < preamble + hlen - 1) put(' ');
  put('\n');
  out.resize(out.size() + data_bytes);
  if (data_bytes > 0) std::memcpy(out.data() + preamble + hlen, t.data(), data_bytes);
  return out;
}

void write_file_atomic(const std::string& path, std::span<const std::byte> bytes) {
  const auto cannot = [&](int err) -> void { fail("cannot write ", printable(path, false), ": ", errno_message(err)); };
  if (path.empty()) fail("cannot write a file with an empty path");

  // The temporary file lives in the destination's folder so that rename() stays on one file
  // system and is atomic: readers see the old file or the whole new one, never a part.
  // open(O_EXCL, 0666) rather than mkstemp so the final file gets the usual umask permissions.
  std::string tmp;
  int raw = -1;
  for (int attempt = 0; attempt < 64; ++attempt) {
    tmp = path + ".tmp." + temp_suffix();
    raw = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (raw >= 0 || errno != EEXIST) break;
  }
  if (raw < 0) cannot(errno);
  Fd fd(raw);
  const auto give_up = [&](int err) {
    if (fd.get() >= 0) ::close(fd.release());
    ::unlink(tmp.c_str());
    cannot(err);
  };

  const std::byte* p = bytes.data();
  std::size_t left = bytes.size();
  while (left > 0) {
    const ssize_t w = ::write(fd.get(), p, std::min<std::size_t>(left, std::size_t{1} << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      give_up(errno);
    }
    p += w;
    left -= static_cast<std::size_t>(w);
  }
  if (::fsync(fd.get()) != 0) give_up(errno);
  if (::close(fd.release()) != 0) give_up(errno);
  if (::rename(tmp.c_str(), path.c_str()) != 0) give_up(errno);

  // Make the rename itself durable (best effort: some file systems cannot fsync a folder).
  const std::size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  const Fd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir_fd.get() >= 0) (void)::fsync(dir_fd.get());
}

template <class T>
void save_npy(const std::string& path, const Tensor<T>& t) {
  write_file_atomic(path, encode_npy(t));
}

template Tensor<float> load_npy_as<float>(const std::string&);
template Tensor<double> load_npy_as<double>(const std::string&);
template std::vector<std::byte> encode_npy<float>(const Tensor<float>&);
template std::vector<std::byte> encode_npy<double>(const Tensor<double>&);
template void save_npy<float>(const std::string&, const Tensor<float>&);
template void save_npy<double>(const std::string&, const Tensor<double>&);

}  // namespace ringattn
