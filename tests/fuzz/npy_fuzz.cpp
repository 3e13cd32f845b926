// libFuzzer target for the .npy reader (core/src/npy.cpp).
//
// Feeds arbitrary bytes to ringattn::parse_npy. A ringattn::Error is the expected answer to a
// bad file; anything else is a finding: a crash or sanitizer report (out-of-bounds read,
// overflow, huge allocation), another exception type (escapes and aborts), an error message
// that is not one line starting with the file name, or a parsed file that does not survive
// encode -> parse unchanged.
//
// Built by tests/fuzz/CMakeLists.txt with clang++ -fsanitize=fuzzer,address,undefined; run
//   build/tests/fuzz/npy_fuzz -dict=tests/fuzz/npy.dict <work-corpus-dir> tests/fuzz/corpus/npy
// (ctest -R npy_fuzz_smoke runs it for 20 seconds). Seeds in corpus/npy/ were written by numpy.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <variant>

#include "ringattn/core/error.hpp"
#include "ringattn/core/npy.hpp"

namespace {

constexpr const char* kName = "fuzz.npy";

[[noreturn]] void finding(const char* what, const std::string& detail) {
  std::fprintf(stderr, "npy_fuzz finding: %s: %s\n", what, detail.c_str());
  std::abort();
}

// The data of a tensor as raw bytes, for a bit-exact comparison (NaN payloads included).
std::span<const std::byte> data_bytes(const ringattn::AnyTensor& t) {
  return std::visit(
      [](const auto& x) {
        return std::as_bytes(std::span(x.values().data(), x.values().size()));
      },
      t);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  ringattn::AnyTensor t;
  try {
    t = ringattn::parse_npy(bytes, kName);
  } catch (const ringattn::Error& e) {
    const std::string msg = e.what();
    if (msg.find('\n') != std::string::npos || msg.find('\r') != std::string::npos) {
      finding("error message is not one line", msg);
    }
    if (msg.rfind(std::string(kName) + ": ", 0) != 0) finding("error message does not name the file", msg);
    return 0;
  }

  // Accepted: the tensor must be exactly the bytes after the header, and re-encoding it must
  // give a file that parses back to the same tensor.
  const std::size_t nbytes = data_bytes(t).size();
  if (nbytes > size) finding("tensor larger than the input", std::to_string(nbytes));
  if (nbytes > 0 && std::memcmp(data_bytes(t).data(), data + (size - nbytes), nbytes) != 0) {
    finding("tensor data differs from the file's last bytes", std::to_string(nbytes));
  }
  const auto encoded = std::visit([](const auto& x) { return ringattn::encode_npy(x); }, t);
  const ringattn::AnyTensor back = ringattn::parse_npy(encoded, "re-encoded");
  if (back.index() != t.index() || ringattn::shape_of(back) != ringattn::shape_of(t)) {
    finding("re-encoded file has another dtype or shape", ringattn::shape_string(ringattn::shape_of(back)));
  }
  const auto a = data_bytes(t);
  const auto b = data_bytes(back);
  if (a.size() != b.size() || (a.size() > 0 && std::memcmp(a.data(), b.data(), a.size()) != 0)) {
    finding("re-encoded file has other data", std::to_string(b.size()));
  }
  return 0;
}
