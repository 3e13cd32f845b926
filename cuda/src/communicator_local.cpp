// Local virtual ranks: N ranks in this process, one GPU or several; a ring shift is one
// device-to-device copy per rank on the receiver's communication stream. Two events per rank
// give the shift the meaning communicator.hpp promises: the copy into rank r starts after the
// work queued before it on the streams of r and r - 1 ("pre" events), and later work on both
// streams starts after it ("post" events).
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "ringattn/core/error.hpp"
#include "ringattn/cuda/communicator.hpp"
#include "ringattn/cuda/device.hpp"

namespace ringattn::cuda {

struct LocalCommunicator::Events {
  std::vector<cudaEvent_t> pre, post;
};

LocalCommunicator::LocalCommunicator(int ranks, std::vector<int> devices) : events_(std::make_unique<Events>()) {
  require(ranks >= 1, "the ring needs at least 1 rank, got ", ranks);
  std::string why;
  const int visible = device_count(&why);
  require(visible > 0, "no CUDA device: ", why);
  if (devices.empty()) {
    for (int d = 0; d < visible; ++d) devices.push_back(d);
  }
  for (int d : devices) {
    require(d >= 0 && d < visible, "device ", d, " does not exist: ", visible, " CUDA device(s) are visible");
  }
  devices_ = std::move(devices);
  for (int r = 0; r < ranks; ++r) ranks_.push_back(r);
  DeviceGuard guard;
  events_->pre.assign(static_cast<std::size_t>(ranks), nullptr);
  events_->post.assign(static_cast<std::size_t>(ranks), nullptr);
  for (int r = 0; r < ranks; ++r) {
    RINGATTN_CUDA_CHECK(cudaSetDevice(device(r)));
    RINGATTN_CUDA_CHECK(cudaEventCreateWithFlags(&events_->pre[static_cast<std::size_t>(r)], cudaEventDisableTiming));
    RINGATTN_CUDA_CHECK(cudaEventCreateWithFlags(&events_->post[static_cast<std::size_t>(r)], cudaEventDisableTiming));
  }
  // Ranks on different GPUs copy directly where the hardware allows it (NVLink or PCIe P2P);
  // otherwise cudaMemcpyPeerAsync stages through the host, which is slower but correct.
  for (int a : devices_) {
    for (int b : devices_) {
      if (a == b) continue;
      int can = 0;
      RINGATTN_CUDA_CHECK(cudaDeviceCanAccessPeer(&can, a, b));
      if (!can) continue;
      RINGATTN_CUDA_CHECK(cudaSetDevice(a));
      const cudaError_t e = cudaDeviceEnablePeerAccess(b, 0);
      if (e == cudaErrorPeerAccessAlreadyEnabled) {
        (void)cudaGetLastError();
      } else {
        RINGATTN_CUDA_CHECK(e);
      }
    }
  }
}

LocalCommunicator::~LocalCommunicator() {
  for (cudaEvent_t e : events_->pre) {
    if (e) (void)cudaEventDestroy(e);
  }
  for (cudaEvent_t e : events_->post) {
    if (e) (void)cudaEventDestroy(e);
  }
}

int LocalCommunicator::device(int local) const {
  require(local >= 0 && local < world_size(), "rank ", local, " is not in the ring of ", world_size());
  return devices_[static_cast<std::size_t>(local) % devices_.size()];
}

void LocalCommunicator::shift(std::span<const std::vector<ShiftBuffers>> parts,
                              std::span<const ringattn_cuda_stream_t> streams) {
  const int n = world_size();
  require(static_cast<int>(parts.size()) == n && static_cast<int>(streams.size()) == n,
          "shift: expected parts and streams for all ", n, " local ranks");
  for (int r = 0; r < n; ++r) {
    const auto& mine = parts[static_cast<std::size_t>(r)];
    const auto& prev = parts[static_cast<std::size_t>((r + n - 1) % n)];
    require(mine.size() == prev.size(), "shift: rank ", r, " has ", mine.size(), " parts but its sender has ",
            prev.size());
    for (std::size_t i = 0; i < mine.size(); ++i) {
      require(mine[i].recv_bytes == prev[i].bytes, "shift: rank ", r, " expects ", mine[i].recv_bytes,
              " bytes in part ", i, " but rank ", (r + n - 1) % n, " sends ", prev[i].bytes);
    }
  }
  DeviceGuard guard;
  auto stream = [&](int r) { return static_cast<cudaStream_t>(streams[static_cast<std::size_t>(r)]); };
  // 1. Mark where every stream is: the transfers may start from there.
  for (int r = 0; r < n; ++r) {
    RINGATTN_CUDA_CHECK(cudaSetDevice(device(r)));
    RINGATTN_CUDA_CHECK(cudaEventRecord(events_->pre[static_cast<std::size_t>(r)], stream(r)));
  }
  // 2. The copy into rank r, on r's stream, after the sender's mark.
  for (int r = 0; r < n; ++r) {
    const int from = (r + n - 1) % n;
    RINGATTN_CUDA_CHECK(cudaSetDevice(device(r)));
    if (from != r) {
      RINGATTN_CUDA_CHECK(cudaStreamWaitEvent(stream(r), events_->pre[static_cast<std::size_t>(from)], 0));
    }
    const auto& src = parts[static_cast<std::size_t>(from)];
    const auto& dst = parts[static_cast<std::size_t>(r)];
    for (std::size_t i = 0; i < dst.size(); ++i) {
      if (dst[i].recv_bytes == 0) continue;
      if (device(from) == device(r)) {
        RINGATTN_CUDA_CHECK(
            cudaMemcpyAsync(dst[i].recv, src[i].send, dst[i].recv_bytes, cudaMemcpyDeviceToDevice, stream(r)));
      } else {
        RINGATTN_CUDA_CHECK(
            cudaMemcpyPeerAsync(dst[i].recv, device(r), src[i].send, device(from), dst[i].recv_bytes, stream(r)));
      }
    }
    RINGATTN_CUDA_CHECK(cudaEventRecord(events_->post[static_cast<std::size_t>(r)], stream(r)));
  }
  // 3. The sender may reuse its buffer once the copy out of it has finished.
  for (int r = 0; r < n; ++r) {
    const int to = (r + 1) % n;
    if (to == r) continue;
    RINGATTN_CUDA_CHECK(cudaSetDevice(device(r)));
    RINGATTN_CUDA_CHECK(cudaStreamWaitEvent(stream(r), events_->post[static_cast<std::size_t>(to)], 0));
  }
}

void LocalCommunicator::agree(bool ok, const std::string& message) {
  if (!ok) throw Error(message);
}

}  // namespace ringattn::cuda
