/// @file nccl_communicator.hpp
/// @brief The NCCL communicator: one NCCL rank per GPU, a ring shift is a grouped ncclSend to
/// rank + 1 and ncclRecv from rank - 1 on the communication stream. Built with
/// RINGATTN_WITH_NCCL (the macro RINGATTN_HAVE_NCCL is then defined for users of ringattn::cuda).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ringattn/cuda/communicator.hpp"

namespace ringattn::cuda {

/// NCCL ranks driven by this process.
class NcclCommunicator final : public Communicator {
 public:
  /// One process per GPU under MPI: every process of MPI_COMM_WORLD is one rank (its MPI rank),
  /// on device @p device (default: the MPI rank modulo the visible devices, i.e. the local rank
  /// on a multi-GPU node when ranks fill nodes in order). MPI must be initialized; rank 0
  /// creates the NCCL unique id and MPI broadcasts it. Throws ringattn::Error (on every rank) if
  /// a rank has no device or NCCL fails to initialize.
  static std::unique_ptr<NcclCommunicator> from_mpi(int device = -1);
  /// One process driving @p devices (one rank per device, rank i on devices[i]):
  /// ncclCommInitAll. Throws ringattn::Error if a device repeats (NCCL refuses two ranks on one
  /// GPU) or does not exist.
  static std::unique_ptr<NcclCommunicator> single_process(const std::vector<int>& devices);

  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;             ///< owns NCCL communicators
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;  ///< owns NCCL communicators

  [[nodiscard]] int world_size() const override { return world_; }
  [[nodiscard]] const std::vector<int>& local_ranks() const override { return ranks_; }
  [[nodiscard]] int device(int local) const override;
  [[nodiscard]] std::string name() const override { return "nccl"; }
  void shift(std::span<const std::vector<ShiftBuffers>> parts,
             std::span<const ringattn_cuda_stream_t> streams) override;
  /// Under MPI: an MPI_Allreduce of the first failing rank, then its message broadcast; in one
  /// process: a local check.
  void agree(bool ok, const std::string& message) override;
  /// ncclCommAbort on every communicator of this process.
  void abort() noexcept override;
  /// ncclCommGetAsyncError on every communicator.
  void check_async() override;

 private:
  NcclCommunicator() = default;
  struct State;
  std::unique_ptr<State> state_;
  int world_ = 0;
  std::vector<int> ranks_;
  std::vector<int> devices_;
  bool mpi_ = false;
};

}  // namespace ringattn::cuda
