/// @file mpi_ring.hpp
/// @brief Ring attention across processes over MPI, forward and backward, with the K/V transfers
/// hidden behind the compute. Built when RINGATTN_WITH_MPI is ON.
///
/// For users who already hold one shard per rank, the way a training loop holds it: rank r of
/// the communicator holds the rows of Q, K, V (and O, LSE, dO for the backward) that the layout
/// gives it (see SequenceLayout and shard_rows()). Every rank runs the same core RingSchedule as
/// the in-process ring, so the results are identical to ring_forward/ring_backward.
///
/// Overlap: before computing on the K/V block it holds, a rank posts the non-blocking send of
/// that block to rank r+1 and the receive of the next one from rank r-1 into a second buffer.
/// MPI moves bytes only when the library is entered, so the kernels call MPI_Testall on the
/// in-flight requests after every key tile (explicit progress, no progress thread; see
/// docs/mpi-ring.md). In the backward pass dK/dV travel with their block: each rank accumulates
/// the block's gradient into a fresh buffer while the partial sum from rank r-1 is still in
/// flight, adds it when it arrives, and sends the sum on; after step N-1 every block's dK/dV
/// reach their owner. All messages are non-blocking and matched in order per (peer, tag), so no
/// ordering of the ranks can deadlock.
///
/// Faults: before any transfer the ranks compare their configuration (dtype, shape, layout,
/// causal, scale) and shard lengths; a disagreement makes every rank throw the same
/// ringattn::Error. Every wait has a deadline (timeout_s): a peer that never answers (killed,
/// stuck) makes the waiting rank throw ringattn::Error naming the peer and the message it was
/// waiting for, instead of hanging. After such an error the communicator is in an undefined
/// state: the caller should abort it (MPI_Abort), as the command line does.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <string>

#include "ringattn/reference/ring.hpp"

/// @brief Ring attention across processes over MPI (built when RINGATTN_WITH_MPI is ON): one
/// shard per rank, the K/V exchange overlapped with the compute, every wait with a deadline.
namespace ringattn::ref::mpi {

/// An error every rank of the communicator throws alike (a disagreement, an invalid call seen by
/// all ranks): the ranks can stop together in order, with no MPI_Abort.
class CollectiveError : public Error {
 public:
  /// The constructor of ringattn::Error: a one-line message.
  using Error::Error;
};

/// Options of the MPI ring.
struct MpiRingOptions : AttentionOptions {
  Layout layout = Layout::Contiguous;  ///< how the sequence is split over the ranks
  std::int64_t seq_q = 0;              ///< global S_q (sum of the query shard lengths)
  std::int64_t seq_kv = 0;             ///< global S_kv (sum of the key/value shard lengths)
  double timeout_s = 300;              ///< longest wait for any peer before giving up
};

/// Timing of one rank's ring, for the overlap benchmark.
struct RingTiming {
  double compute_s = 0;  ///< time inside the attention kernels (progress calls included)
  double wait_s = 0;     ///< time blocked waiting for transfers after the compute of a step
  double total_s = 0;    ///< wall time of the whole call
};

/// Forward ring attention of this rank's shards over @p comm. Returns this rank's O shard
/// (B, S_r, H_q, D) and LSE shard (B, H_q, S_r). Collective: every rank of @p comm calls it.
template <class T>
ForwardResult<T> ring_forward(MPI_Comm comm, const Tensor<T>& q_shard, const Tensor<T>& k_shard,
                              const Tensor<T>& v_shard, const MpiRingOptions& options,
                              RingTiming* timing = nullptr);

/// Backward ring attention: this rank's dQ shard, and the dK/dV of the K/V shard it owns (summed
/// over every rank's queries). @p out_shard and @p lse_shard are this rank's forward results.
template <class T>
Gradients<T> ring_backward(MPI_Comm comm, const Tensor<T>& q_shard, const Tensor<T>& k_shard,
                           const Tensor<T>& v_shard, const Tensor<T>& out_shard,
                           const Tensor<T>& lse_shard, const Tensor<T>& dout_shard,
                           const MpiRingOptions& options, RingTiming* timing = nullptr);

/// Waits for @p count requests with a deadline, testing them (which also drives MPI's progress).
/// Throws ringattn::Error("... no <what> from rank <peer> after <t> s ...") on timeout.
void wait_all(int count, MPI_Request* requests, double timeout_s, const std::string& what, int peer);

/// Collective with a deadline: every rank passes a description of its configuration as
/// space-separated `key=value` tokens; if any rank's differs from rank 0's, every rank throws the
/// same CollectiveError naming the rank and the first token that differs, e.g.
/// "ranks disagree on the ring attention call: rank 2 has causal=0 but rank 0 has causal=1".
void check_agreement(MPI_Comm comm, const std::string& mine, double timeout_s);

/// Collective with a deadline: every rank passes the error it found locally (empty if none); if
/// any rank found one, every rank throws the same CollectiveError "rank K: <its error>" (the
/// lowest such rank). This is how a problem one rank sees stops all of them together.
void fail_together(MPI_Comm comm, const std::string& local_error, double timeout_s);

/// Test-only fault injection, read from the environment variable RINGATTN_FAULT
/// ("RANK:STEP:ACTION", ACTION = exit | stop): at the start of ring step STEP the rank RANK
/// exits at once (a crashed peer) or stops itself with SIGSTOP (a stuck peer). Does nothing when
/// the variable is unset; used by the fault tests of the MPI ring.
void inject_fault_if_requested(int rank, int step);

}  // namespace ringattn::ref::mpi
