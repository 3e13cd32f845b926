/// @file npy.hpp
/// @brief A small, strict reader and writer for NumPy .npy files.
///
/// Supported: format versions 1.0, 2.0 and 3.0; little-endian float32 ('<f4') and float64
/// ('<f8'); C order; any rank. Everything else (big-endian, other dtypes, Fortran order, a
/// header that does not parse or is over 16 MiB, a file shorter or longer than its header says,
/// a path that is not a regular file) is a ringattn::Error whose one-line message names the file
/// and the problem. The declared size is checked against the file before anything is allocated.
/// Writes go to a temporary file that is renamed into place, so a failed write never leaves a
/// partial file. POSIX only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "ringattn/core/tensor.hpp"

namespace ringattn {

/// Element types the project reads and writes.
enum class DType {
  Float32,  ///< IEEE binary32, '<f4' in a .npy header
  Float64,  ///< IEEE binary64, '<f8' in a .npy header
};

/// "float32" or "float64".
[[nodiscard]] std::string_view to_string(DType dtype);
/// Parses "float32"/"f32"/"fp32" or "float64"/"f64"/"fp64"; throws ringattn::Error otherwise.
[[nodiscard]] DType parse_dtype(std::string_view name);
/// 4 or 8.
[[nodiscard]] int dtype_bytes(DType dtype);
/// The DType of float or double (other types do not compile).
template <class T>
constexpr DType dtype_of() = delete;
/// float32
template <>
constexpr DType dtype_of<float>() { return DType::Float32; }
/// float64
template <>
constexpr DType dtype_of<double>() { return DType::Float64; }

/// A tensor read from a .npy file, in whichever precision the file holds.
using AnyTensor = std::variant<Tensor<float>, Tensor<double>>;

/// DType of an AnyTensor.
[[nodiscard]] DType dtype_of(const AnyTensor& t);
/// Shape of an AnyTensor.
[[nodiscard]] const std::vector<std::int64_t>& shape_of(const AnyTensor& t);

/// Parses the bytes of a whole .npy file. @p name is used in error messages (a file name).
[[nodiscard]] AnyTensor parse_npy(std::span<const std::byte> bytes, std::string_view name = "<memory>");
/// Reads a .npy file; throws ringattn::Error if it is missing, unreadable or malformed.
[[nodiscard]] AnyTensor load_npy(const std::string& path);
/// Reads a .npy file that must hold elements of type T (no silent conversion).
template <class T>
[[nodiscard]] Tensor<T> load_npy_as(const std::string& path);

/// The bytes of a .npy file holding @p t: C order, little-endian, byte for byte what
/// numpy.save (numpy >= 1.24) writes (version 1.0, or 2.0 when the header exceeds 65535 bytes).
template <class T>
[[nodiscard]] std::vector<std::byte> encode_npy(const Tensor<T>& t);
/// Writes @p t to @p path atomically (temporary file in the same folder, then rename).
template <class T>
void save_npy(const std::string& path, const Tensor<T>& t);

/// Writes @p bytes to @p path atomically: a temporary file in the same folder, flushed and
/// renamed into place. Throws ringattn::Error (and leaves nothing behind) if that fails.
void write_file_atomic(const std::string& path, std::span<const std::byte> bytes);

}  // namespace ringattn
