#include "ringattn/core/shape.hpp"

#include <sstream>

#include "ringattn/core/error.hpp"

namespace ringattn {

void AttentionShape::validate() const {
  const struct {
    const char* name;
    std::int64_t value;
  } dims[] = {{"B (batch)", batch},   {"S_q (query length)", seq_q},  {"S_kv (key length)", seq_kv},
              {"H_q (query heads)", heads_q}, {"H_kv (key/value heads)", heads_kv},
              {"D (head dim)", head_dim}};
  for (const auto& d : dims) {
    require(d.value > 0, d.name, " is ", d.value, ": every dimension must be at least 1");
  }
  require(heads_q % heads_kv == 0, "K and V have ", heads_kv, " heads but Q has ", heads_q,
          ": H_q must be a multiple of H_kv");
}

std::string AttentionShape::to_string() const {
  std::ostringstream os;
  os << "B=" << batch << " S_q=" << seq_q << " S_kv=" << seq_kv << " H_q=" << heads_q
     << " H_kv=" << heads_kv << " D=" << head_dim;
  return os.str();
}

}  // namespace ringattn
