// Input and output of the command line: loading .npy inputs with the checks every subcommand
// shares, and writing all outputs or none.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "ringattn/core/npy.hpp"

namespace ringattn::cli {

/// A named input file: the flag it came from and its path.
struct InputFile {
  std::string flag;  ///< e.g. "--q"
  std::string path;  ///< file path
};

/// Loads every file; throws ringattn::Error if one is unreadable, malformed, holds a non-finite
/// value, or if the files do not all hold the same dtype.
std::vector<AnyTensor> load_inputs(const std::vector<InputFile>& files);

/// Throws ringattn::Error naming the first NaN or infinity in @p t (read from @p name).
template <class T>
void check_finite(const Tensor<T>& t, const std::string& name);

/// Outputs to write once everything has been computed. Paths are checked up front (distinct,
/// folder exists) so bad arguments fail before any work; commit() writes each file atomically
/// and, if one write fails, removes the ones already written, so a run leaves all or nothing.
class OutputSet {
 public:
  /// Registers an output path for a flag; throws if it repeats another output or an input.
  void expect(const std::string& flag, const std::string& path, const std::vector<InputFile>& inputs);
  /// Queues the encoded contents of an expected path.
  void stage(const std::string& path, std::vector<std::byte> bytes);
  /// Writes every staged file; all or nothing.
  void commit();

 private:
  std::vector<std::pair<std::string, std::string>> expected_;  // flag, path
  std::vector<std::pair<std::string, std::vector<std::byte>>> staged_;
};

}  // namespace ringattn::cli
