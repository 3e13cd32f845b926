// The presets compiled into the library (generated presets.cpp, from simulator/presets/*.json).
#pragma once

#include <string_view>
#include <utility>
#include <vector>

namespace ringattn::sim::detail {
/// (name, JSON text) of every shipped preset, sorted by name.
const std::vector<std::pair<std::string_view, std::string_view>>& embedded_presets();
}  // namespace ringattn::sim::detail
