/// @file communicator.hpp
/// @brief How ring ranks exchange blocks: one interface, two implementations.
///
/// - LocalCommunicator: N virtual ranks inside this process, on one GPU or spread round-robin
///   over the visible ones; a shift is a device-to-device copy per rank on the receiver's
///   communication stream, ordered by events. This is how a single-GPU machine runs and measures
///   the ring (NCCL refuses two ranks on one GPU).
/// - NcclCommunicator (nccl_communicator.hpp, built with RINGATTN_WITH_NCCL): one NCCL rank per
///   GPU, either one process per GPU (mpirun; MPI broadcasts the NCCL unique id) or one process
///   driving several GPUs; a shift is a grouped ncclSend to rank + 1 and ncclRecv from rank - 1
///   on the communication stream.
///
/// Both give a shift the same meaning, the one RingPlan's hazard checker assumes: rank r's send
/// starts after everything queued before it on r's communication stream and its receive after
/// everything queued before it on the receiver's; work queued afterwards on either stream starts
/// after the transfer has finished (the send buffer may be reused, the receive buffer read).
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ringattn/cuda/attention.hpp"

namespace ringattn::cuda {

/// One region a rank sends to the next rank in a shift, and where the next rank puts it.
struct ShiftBuffers {
  const void* send = nullptr;  ///< on this rank's device
  void* recv = nullptr;        ///< on this rank's device: what rank - 1 sends lands here
  std::size_t bytes = 0;       ///< this rank's send size (rank - 1 sends recv_bytes)
  std::size_t recv_bytes = 0;  ///< what this rank receives from rank - 1
};

/// The ranks one process drives and how they talk.
class Communicator {
 public:
  virtual ~Communicator() = default;
  /// N: ranks in the ring.
  [[nodiscard]] virtual int world_size() const = 0;
  /// The global ranks this process drives, in order (all N for local virtual ranks, one for a
  /// process per GPU).
  [[nodiscard]] virtual const std::vector<int>& local_ranks() const = 0;
  /// The CUDA device of local rank @p local (an index into local_ranks()).
  [[nodiscard]] virtual int device(int local) const = 0;
  /// "local" or "nccl".
  [[nodiscard]] virtual std::string name() const = 0;
  /// Every local rank sends parts[local][i].send to the next rank and receives
  /// parts[local][i].recv from the previous one, on streams[local]. Each rank must pass the same
  /// number of parts, in the same order as its peers. Asynchronous: returns after queuing.
  virtual void shift(std::span<const std::vector<ShiftBuffers>> parts,
                     std::span<const ringattn_cuda_stream_t> streams) = 0;
  /// Agreement across all ranks of all processes: returns normally only if every rank passed
  /// ok = true; otherwise throws ringattn::Error on every rank with the message of the first
  /// failing rank ("rank 3: ..."). A collective: every process must call it.
  virtual void agree(bool ok, const std::string& message) = 0;
  /// Called when a process fails after queuing transfers: abort the transfers so that peers
  /// fail instead of waiting forever (NCCL: ncclCommAbort). The communicator is unusable after.
  virtual void abort() noexcept = 0;
  /// Polls for an asynchronous communication error (NCCL: ncclCommGetAsyncError); throws
  /// ringattn::Error if one happened.
  virtual void check_async() = 0;
};

/// N virtual ranks in this process. Rank r runs on device devices[r % devices.size()]; with no
/// devices given, every visible device is used round-robin (one GPU: all ranks share it).
class LocalCommunicator final : public Communicator {
 public:
  /// Throws ringattn::Error if @p ranks < 1, there is no CUDA device, or a device index is out
  /// of range.
  explicit LocalCommunicator(int ranks, std::vector<int> devices = {});
  ~LocalCommunicator() override;
  LocalCommunicator(const LocalCommunicator&) = delete;             ///< owns CUDA events
  LocalCommunicator& operator=(const LocalCommunicator&) = delete;  ///< owns CUDA events
  [[nodiscard]] int world_size() const override { return static_cast<int>(ranks_.size()); }
  [[nodiscard]] const std::vector<int>& local_ranks() const override { return ranks_; }
  [[nodiscard]] int device(int local) const override;
  [[nodiscard]] std::string name() const override { return "local"; }
  void shift(std::span<const std::vector<ShiftBuffers>> parts,
             std::span<const ringattn_cuda_stream_t> streams) override;
  /// One process: throws with @p message unless @p ok.
  void agree(bool ok, const std::string& message) override;
  void abort() noexcept override {}
  void check_async() override {}

 private:
  std::vector<int> ranks_;
  std::vector<int> devices_;
  struct Events;
  std::unique_ptr<Events> events_;
};

}  // namespace ringattn::cuda
