// `ringattn attention --impl mpi-ring`: the same .npy contract as the other impls, run by every
// rank of an mpirun job. Rank 0 reads the files and scatters the shards of the layout; every rank
// runs the MPI ring; rank 0 gathers the results and writes them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace ringattn::cli {

/// Everything `attention --impl mpi-ring` needs from the command line.
struct MpiAttentionRequest {
  std::string q, k, v, out, lse, dout, dq, dk, dv;
  bool causal = false;
  std::optional<double> scale;
  std::string layout = "contiguous";
  std::int64_t block_q = 0, block_kv = 0;
  double timeout_s = 300;
};

/// Runs the request on MPI_COMM_WORLD (initializing and finalizing MPI). Returns the exit code;
/// errors are printed as one line. A problem every rank sees ends the job in order; a rank that
/// times out waiting for a peer aborts the whole job (MPI_Abort), so nothing hangs.
int run_attention_mpi(const MpiAttentionRequest& request);

}  // namespace ringattn::cli
