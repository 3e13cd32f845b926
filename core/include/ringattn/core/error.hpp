/// @file error.hpp
/// @brief The one exception type every ringattn entry point throws for bad input.
#pragma once

#include <cstddef>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

/// @brief Everything of ringattn: core's shared vocabulary (shapes, layouts, the ring schedule,
/// costs, tensors, .npy files) at the top, and one nested namespace per module: ref (the CPU
/// reference), sim (the simulator).
namespace ringattn {

/// A problem the caller can act on: a bad shape, a malformed file, an impossible option.
/// The message is one line that names the problem and, where it helps, the fix.
class Error : public std::runtime_error {
 public:
  /// An error with the one-line @p message that what() returns.
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

/// Builds a message from streamable parts and throws ringattn::Error with it.
template <class... Parts>
[[noreturn]] void fail(Parts&&... parts) {
  std::ostringstream os;
  (os << ... << std::forward<Parts>(parts));
  throw Error(os.str());
}

/// Throws ringattn::Error with the message built from @p parts unless @p condition holds.
template <class... Parts>
void require(bool condition, Parts&&... parts) {
  if (!condition) fail(std::forward<Parts>(parts)...);
}

/// Untrusted text (a path, a JSON key, a header field) made safe for a one-line message: control
/// bytes, and bytes >= 0x80 when @p escape_high, become `\xNN` (two hex digits); the result is
/// cut at @p max_len characters with "...".
[[nodiscard]] std::string printable(std::string_view text, bool escape_high = true,
                                    std::size_t max_len = std::string_view::npos);

}  // namespace ringattn
