// The NCCL communicator: a ring shift is ncclSend to rank + 1 and ncclRecv from rank - 1 for
// every local rank inside one ncclGroupStart/End, on each rank's communication stream, so the
// sends and receives of one step progress together (no rank waits for its send before it
// receives, which would deadlock a ring). Under MPI, rank 0 creates the unique id and MPI
// broadcasts it; failures during set-up are agreed over MPI so every rank reports the same error.
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <string>
#include <vector>

#if defined(RINGATTN_HAVE_MPI)
#include <mpi.h>
#endif

#include "ringattn/core/error.hpp"
#include "ringattn/cuda/device.hpp"
#include "ringattn/cuda/nccl_communicator.hpp"

namespace ringattn::cuda {

struct NcclCommunicator::State {
  std::vector<ncclComm_t> comms;  // one per local rank
  bool aborted = false;
};

namespace {

void check_nccl(ncclResult_t r, const char* what) {
  if (r != ncclSuccess && r != ncclInProgress) fail("NCCL error in ", what, ": ", ncclGetErrorString(r));
}
#define RINGATTN_NCCL_CHECK(call) check_nccl((call), #call)

#if defined(RINGATTN_HAVE_MPI)
// Every rank learns whether all succeeded; if not, every rank throws the first failing rank's
// message (MPI_Allreduce of the failing rank, then a broadcast of its message).
void mpi_agree(bool ok, const std::string& message) {
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int mine = ok ? size : rank, first = size;
  MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (first == size) return;
  char text[512] = {};
  if (rank == first) std::strncpy(text, message.c_str(), sizeof text - 1);
  MPI_Bcast(text, sizeof text, MPI_CHAR, first, MPI_COMM_WORLD);
  if (std::strncmp(text, "rank ", 5) == 0) fail(text);  // it already names its rank
  fail("rank ", first, ": ", text);
}
#endif

}  // namespace

std::unique_ptr<NcclCommunicator> NcclCommunicator::from_mpi(int device) {
#if defined(RINGATTN_HAVE_MPI)
  int initialized = 0;
  MPI_Initialized(&initialized);
  require(initialized, "NCCL over MPI: MPI is not initialized (run under mpirun)");
  std::unique_ptr<NcclCommunicator> c(new NcclCommunicator());
  c->state_ = std::make_unique<State>();
  c->mpi_ = true;
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  c->world_ = size;
  c->ranks_ = {rank};
  std::string error;
  try {
    std::string why;
    const int visible = device_count(&why);
    require(visible > 0, "no CUDA device: ", why);
    const int d = device >= 0 ? device : rank % visible;
    require(d < visible, "device ", d, " does not exist: ", visible, " CUDA device(s) are visible");
    c->devices_ = {d};
  } catch (const std::exception& e) {
    error = e.what();
  }
  mpi_agree(error.empty(), error);
  ncclUniqueId id{};
  if (rank == 0) RINGATTN_NCCL_CHECK(ncclGetUniqueId(&id));
  MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
  try {
    DeviceGuard guard;
    RINGATTN_CUDA_CHECK(cudaSetDevice(c->devices_[0]));
    ncclComm_t comm = nullptr;
    RINGATTN_NCCL_CHECK(ncclCommInitRank(&comm, size, id, rank));
    c->state_->comms.push_back(comm);
  } catch (const std::exception& e) {
    error = e.what();
  }
  mpi_agree(error.empty(), error);
  return c;
#else
  (void)device;
  fail("NCCL over MPI: this build has no MPI (configure with RINGATTN_WITH_MPI=ON)");
#endif
}

std::unique_ptr<NcclCommunicator> NcclCommunicator::single_process(const std::vector<int>& devices) {
  require(!devices.empty(), "NCCL: no device given");
  std::string why;
  const int visible = device_count(&why);
  require(visible > 0, "no CUDA device: ", why);
  for (std::size_t i = 0; i < devices.size(); ++i) {
    require(devices[i] >= 0 && devices[i] < visible, "device ", devices[i], " does not exist: ", visible,
            " CUDA device(s) are visible");
    for (std::size_t j = 0; j < i; ++j) {
      require(devices[i] != devices[j], "NCCL needs one GPU per rank, but device ", devices[i],
              " appears twice (use local virtual ranks to share a GPU)");
    }
  }
  std::unique_ptr<NcclCommunicator> c(new NcclCommunicator());
  c->state_ = std::make_unique<State>();
  c->world_ = static_cast<int>(devices.size());
  c->devices_ = devices;
  for (int r = 0; r < c->world_; ++r) c->ranks_.push_back(r);
  c->state_->comms.assign(devices.size(), nullptr);
  DeviceGuard guard;
  RINGATTN_NCCL_CHECK(ncclCommInitAll(c->state_->comms.data(), c->world_, devices.data()));
  return c;
}

NcclCommunicator::~NcclCommunicator() {
  if (!state_) return;
  for (ncclComm_t comm : state_->comms) {
    if (!comm) continue;
    if (state_->aborted) continue;  // ncclCommAbort already freed it
    (void)ncclCommDestroy(comm);
  }
}

int NcclCommunicator::device(int local) const {
  require(local >= 0 && static_cast<std::size_t>(local) < devices_.size(), "local rank ", local,
          " is not driven by this process");
  return devices_[static_cast<std::size_t>(local)];
}

void NcclCommunicator::shift(std::span<const std::vector<ShiftBuffers>> parts,
                             std::span<const ringattn_cuda_stream_t> streams) {
  require(!state_->aborted, "NCCL: the communicator was aborted after an earlier failure");
  require(parts.size() == ranks_.size() && streams.size() == ranks_.size(),
          "shift: expected parts and streams for the ", ranks_.size(), " local ranks");
  DeviceGuard guard;
  RINGATTN_NCCL_CHECK(ncclGroupStart());
  try {
    for (std::size_t li = 0; li < ranks_.size(); ++li) {
      const int r = ranks_[li];
      const int next = (r + 1) % world_, prev = (r + world_ - 1) % world_;
      RINGATTN_CUDA_CHECK(cudaSetDevice(devices_[li]));
      auto s = static_cast<cudaStream_t>(streams[li]);
      for (const ShiftBuffers& p : parts[li]) {
        if (p.bytes > 0) RINGATTN_NCCL_CHECK(ncclSend(p.send, p.bytes, ncclUint8, next, state_->comms[li], s));
        if (p.recv_bytes > 0) RINGATTN_NCCL_CHECK(ncclRecv(p.recv, p.recv_bytes, ncclUint8, prev, state_->comms[li], s));
      }
    }
  } catch (...) {
    (void)ncclGroupEnd();
    throw;
  }
  RINGATTN_NCCL_CHECK(ncclGroupEnd());
}

void NcclCommunicator::agree(bool ok, const std::string& message) {
#if defined(RINGATTN_HAVE_MPI)
  if (mpi_) {
    mpi_agree(ok, message);
    return;
  }
#endif
  if (!ok) throw Error(message);
}

void NcclCommunicator::abort() noexcept {
  if (!state_ || state_->aborted) return;
  for (ncclComm_t comm : state_->comms) {
    if (comm) (void)ncclCommAbort(comm);
  }
  state_->aborted = true;
}

void NcclCommunicator::check_async() {
  if (state_->aborted) return;
  for (ncclComm_t comm : state_->comms) {
    ncclResult_t async = ncclSuccess;
    RINGATTN_NCCL_CHECK(ncclCommGetAsyncError(comm, &async));
    if (async != ncclSuccess && async != ncclInProgress) {
      abort();
      fail("NCCL asynchronous error: ", ncclGetErrorString(async), " (a peer failed or the network broke)");
    }
  }
}

}  // namespace ringattn::cuda
