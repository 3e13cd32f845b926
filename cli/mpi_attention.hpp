// `ringattn attention --impl mpi-ring` (and `--impl cuda-ring` under mpirun): the same .npy
// contract as the other impls, run by every rank of an mpirun job. Rank 0 reads the files and
// scatters the shards of the layout; every rank runs its part of the ring (the MPI ring on the
// CPU, or one NCCL rank of the CUDA ring); rank 0 gathers the results and writes them.
#pragma once

#include <cstdint>
#include <cstdlib>
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

/// Everything `attention --impl cuda-ring` under mpirun needs.
struct CudaRingMpiRequest : MpiAttentionRequest {
  std::string dtype = "fp32";   ///< compute dtype
  std::string kernel = "auto";  ///< forward kernel
  std::optional<int> ranks;     ///< --ranks if given: must equal the number of processes
};

/// Runs the CUDA ring with one NCCL rank per process of MPI_COMM_WORLD (initializing and
/// finalizing MPI). Built with MPI, CUDA, the CUDA ring and NCCL. Returns the exit code; errors are
/// printed as one line. A problem one rank sees is agreed on (Communicator::agree, or MPI with a
/// deadline) and every rank stops in order; a rank stuck or failing inside the ring aborts the job.
int run_attention_cuda_ring_mpi(const CudaRingMpiRequest& request);

/// The number of processes the MPI launcher started, read from its environment (Open MPI's
/// OMPI_COMM_WORLD_SIZE, MPICH/Intel MPI's PMI_SIZE, MVAPICH's MV2_COMM_WORLD_SIZE); 0 when not
/// started by one.
inline int mpi_launcher_world_size() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"}) {
    if (const char* v = std::getenv(name)) {
      char* end = nullptr;
      const long n = std::strtol(v, &end, 10);
      if (end != v && *end == '\0' && n > 0 && n < 1000000) return static_cast<int>(n);
    }
  }
  return 0;
}

}  // namespace ringattn::cli
