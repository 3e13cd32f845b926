#include "cli_io.hpp"

#include <cmath>
#include <filesystem>
#include <sstream>
#include <system_error>

#include "ringattn/core/error.hpp"

namespace ringattn::cli {
namespace fs = std::filesystem;

namespace {
std::string index_string(std::int64_t flat, const std::vector<std::int64_t>& shape) {
  std::vector<std::int64_t> idx(shape.size());
  for (std::size_t d = shape.size(); d-- > 0;) {
    idx[d] = flat % shape[d];
    flat /= shape[d];
  }
  std::ostringstream os;
  os << "(";
  for (std::size_t d = 0; d < idx.size(); ++d) os << (d ? ", " : "") << idx[d];
  os << ")";
  return os.str();
}

fs::path normalized(const std::string& p) {
  std::error_code ec;
  fs::path abs = fs::weakly_canonical(fs::absolute(p), ec);
  return ec ? fs::path(p) : abs;
}
}  // namespace

template <class T>
void check_finite(const Tensor<T>& t, const std::string& name) {
  for (std::int64_t i = 0; i < t.size(); ++i) {
    if (!std::isfinite(t[i])) {
      fail(name, " has a non-finite value (", t[i], ") at index ", index_string(i, t.shape()),
           ": inputs must be finite");
    }
  }
}
template void check_finite<float>(const Tensor<float>&, const std::string&);
template void check_finite<double>(const Tensor<double>&, const std::string&);

std::vector<AnyTensor> load_inputs(const std::vector<InputFile>& files) {
  std::vector<AnyTensor> out;
  for (const InputFile& f : files) {
    require(!f.path.empty(), f.flag, " needs a file path");
    out.push_back(load_npy(f.path));
    std::visit([&](const auto& t) { check_finite(t, f.path); }, out.back());
  }
  for (std::size_t i = 1; i < out.size(); ++i) {
    require(dtype_of(out[i]) == dtype_of(out[0]), files[i].path, " holds ", to_string(dtype_of(out[i])),
            " but ", files[0].path, " holds ", to_string(dtype_of(out[0])),
            ": all inputs must have the same dtype");
  }
  return out;
}

void OutputSet::expect(const std::string& flag, const std::string& path, const std::vector<InputFile>& inputs) {
  require(!path.empty(), flag, " needs a file path");
  const fs::path p = normalized(path);
  for (const auto& [other_flag, other] : expected_) {
    require(normalized(other) != p, flag, " and ", other_flag, " both name ", path,
            ": every output needs its own file");
  }
  for (const InputFile& in : inputs) {
    require(normalized(in.path) != p, flag, " would overwrite the input ", in.flag, " (", path, ")");
  }
  const fs::path dir = fs::absolute(path).parent_path();
  std::error_code ec;
  require(fs::is_directory(dir, ec), "cannot write ", path, ": folder ", dir.string(), " does not exist");
  require(!fs::is_directory(fs::path(path), ec), "cannot write ", path, ": it is a folder");
  expected_.emplace_back(flag, path);
}

void OutputSet::stage(const std::string& path, std::vector<std::byte> bytes) {
  staged_.emplace_back(path, std::move(bytes));
}

void OutputSet::commit() {
  std::vector<std::string> written;
  try {
    for (const auto& [path, bytes] : staged_) {
      write_file_atomic(path, bytes);
      written.push_back(path);
    }
  } catch (...) {
    for (const std::string& p : written) {
      std::error_code ec;
      fs::remove(p, ec);
    }
    throw;
  }
}

}  // namespace ringattn::cli
