/// @file error.hpp
/// @brief The one exception type every ringattn entry point throws for bad input.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace ringattn {

/// A problem the caller can act on: a bad shape, a malformed file, an impossible option.
/// The message is one line that names the problem and, where it helps, the fix.
class Error : public std::runtime_error {
 public:
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

}  // namespace ringattn
