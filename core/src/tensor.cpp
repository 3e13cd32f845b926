// Formatting helpers for tensors. The tensor itself is a header-only template (tensor.hpp).
#include "ringattn/core/tensor.hpp"

namespace ringattn {

// Formats like a Python tuple, so messages read the same as NumPy's: "()", "(5,)", "(2, 3)".
std::string shape_string(const std::vector<std::int64_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  s += ")";
  return s;
}

}  // namespace ringattn
