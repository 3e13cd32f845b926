// Tutorial 10's kernels: attention forward in float32, two versions, each checked by
// 10_cuda_vs_reference.cpp against the CPU reference before it is timed.
//
//   v1 attention_row_per_thread  one thread per (batch, head, query row); it streams over every
//                                key in global memory with the online softmax of tutorial 04
//                                (running max m, sum l, output O in registers).
//   v2 attention_shared_tiles    a block of Br threads owns Br query rows; the keys are walked in
//                                tiles of Bc rows, each K/V tile loaded once into shared memory
//                                and used by all Br rows: FlashAttention's tile loop (Dao et al.
//                                2022, Algorithm 1), names as in the paper.
//
// Both are the simplest correct versions, not fast ones: no tensor cores, no warp-level
// reductions, no split over keys. cuda/ is where the production kernels go (DESIGN.md).
// Tensors are row-major BSHD: Q (B, S_q, H_q, D), K and V (B, S_kv, H_kv, D), O like Q,
// LSE (B, H_q, S_q) natural log. GQA: query head h reads K/V head h / (H_q / H_kv).
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#include "10_cuda_kernels.hpp"

// Every CUDA call is checked: a failure becomes an exception naming the call, the line and
// CUDA's own reason (cudaGetErrorString), instead of garbage results later.
#define CUDA_CHECK(call) ::tut10::check_cuda((call), #call, __FILE__, __LINE__)

namespace tut10 {

void check_cuda(cudaError_t status, const char* call, const char* file, int line) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string(call) + " failed (" + file + ":" + std::to_string(line) +
                             "): " + cudaGetErrorString(status));
  }
}

namespace {

constexpr int kD = 64;    // head dimension the kernels are compiled for (registers hold a row)
constexpr int kBr = 64;   // v2: query rows per block, one thread each
constexpr int kBc = 32;   // v2: key rows per K/V tile in shared memory: 2 * Bc * D * 4 = 16 KiB
constexpr int kThreadsV1 = 128;

// ---- device code ------------------------------------------------------------------------------

struct Params {
  const float* q;  // (B, S_q, H_q, D)
  const float* k;  // (B, S_kv, H_kv, D)
  const float* v;  // (B, S_kv, H_kv, D)
  float* o;        // (B, S_q, H_q, D)
  float* lse;      // (B, H_q, S_q)
  int batch, seq_q, seq_kv, heads_q, heads_kv;
  int group;     // H_q / H_kv: query heads per K/V head
  int q_offset;  // S_kv - S_q: query i sits at key position q_offset + i (causal, end-aligned)
  bool causal;
  float scale;
};

// Offset of row (b, s, h) of a (B, S, H, D) tensor, in 64 bits (B S H D may pass 2^31).
__device__ __forceinline__ std::size_t row_offset(int b, int s, int h, int seq, int heads) {
  return ((static_cast<std::size_t>(b) * seq + s) * heads + h) * kD;
}

// Keys [0, end) that query row i may see: all of them, or those at positions <= q_offset + i.
__device__ __forceinline__ int visible_end(const Params& p, int i) {
  return p.causal ? min(p.seq_kv, max(0, p.q_offset + i + 1)) : p.seq_kv;
}

// v1. Tutorial 04's online softmax, one key at a time, for one query row:
//   s_j = scale q . k_j,  m' = max(m, s_j),  l' = l e^(m - m') + e^(s_j - m'),
//   o' = o e^(m - m') + e^(s_j - m') v_j;   at the end O = o / l and LSE = m + log l.
__global__ void attention_row_per_thread(Params p) {
  const long long row = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= static_cast<long long>(p.batch) * p.heads_q * p.seq_q) return;
  const int i = static_cast<int>(row % p.seq_q);
  const int h = static_cast<int>((row / p.seq_q) % p.heads_q);
  const int b = static_cast<int>(row / (static_cast<long long>(p.seq_q) * p.heads_q));
  const int hk = h / p.group;  // GQA
  // Consecutive threads take consecutive rows of one head: a warp reads the same key row at the
  // same time, which the cache serves once.
  float q[kD], o[kD];
  const float* q_row = p.q + row_offset(b, i, h, p.seq_q, p.heads_q);
#pragma unroll
  for (int d = 0; d < kD; ++d) {
    q[d] = q_row[d] * p.scale;  // the scale folded into q once: s_j = (scale q) . k_j
    o[d] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  const int end = visible_end(p, i);  // masked keys are not even read
  for (int j = 0; j < end; ++j) {
    const float* k_row = p.k + row_offset(b, j, hk, p.seq_kv, p.heads_kv);
    const float* v_row = p.v + row_offset(b, j, hk, p.seq_kv, p.heads_kv);
    float s = 0.0f;
#pragma unroll
    for (int d = 0; d < kD; ++d) s += q[d] * k_row[d];
    const float m_new = fmaxf(m, s);
    const float correction = expf(m - m_new);  // rescales what was summed under the old max; 0 at j = 0
    const float p_j = expf(s - m_new);
    l = l * correction + p_j;
#pragma unroll
    for (int d = 0; d < kD; ++d) o[d] = o[d] * correction + p_j * v_row[d];
    m = m_new;
  }
  // A row that sees no key gets O = 0 and LSE = -inf (DESIGN.md), not 0/0.
  const float inv_l = l > 0.0f ? 1.0f / l : 0.0f;
  float* o_row = p.o + row_offset(b, i, h, p.seq_q, p.heads_q);
#pragma unroll
  for (int d = 0; d < kD; ++d) o_row[d] = o[d] * inv_l;
  p.lse[(static_cast<std::size_t>(b) * p.heads_q + h) * p.seq_q + i] = l > 0.0f ? m + logf(l) : -INFINITY;
}

// v2. FlashAttention's tile loop (Algorithm 1). Block (tile, h, b) owns the query tile Q_i of
// Br rows, thread t its row tile * Br + t, and walks over the Tc key tiles K_j, V_j of Bc rows:
//   line 6   load K_j, V_j from HBM into on-chip shared memory (all threads of the block);
//   line 9   S_ij = Q_i K_j^T                               (each thread its row: Bc scores);
//   line 10  m~_ij = rowmax(S_ij), P~_ij = exp(S_ij - m~_ij), l~_ij = rowsum(P~_ij);
//   line 11  m_new = max(m_i, m~_ij), l_new = e^(m_i - m_new) l_i + e^(m~_ij - m_new) l~_ij;
//   line 12  O_i = diag(l_new)^-1 (diag(l_i) e^(m_i - m_new) O_i + e^(m~_ij - m_new) P~_ij V_j);
//   line 13  l_i = l_new, m_i = m_new.
// Algorithm 1 runs the K/V loop outside the Q loop and keeps O, l, m in HBM between the two;
// here each block keeps its tile's O, l, m in registers for its whole K/V loop (the order
// FlashAttention-2 adopted): the same arithmetic with fewer trips to global memory. The gain over
// v1: a key row is read from global memory once per block of Br rows instead of once per row.
__global__ void attention_shared_tiles(Params p) {
  __shared__ float k_tile[kBc][kD];
  __shared__ float v_tile[kBc][kD];
  const int tile = static_cast<int>(blockIdx.x);
  const int h = static_cast<int>(blockIdx.y);
  const int b = static_cast<int>(blockIdx.z);
  const int hk = h / p.group;  // GQA
  const int i = tile * kBr + static_cast<int>(threadIdx.x);
  // The last query tile may be partial: its spare threads still help load the K/V tiles and
  // reach every barrier, they just own no row.
  const bool has_row = i < p.seq_q;
  float q[kD], o[kD], s[kBc];
  if (has_row) {
    const float* q_row = p.q + row_offset(b, i, h, p.seq_q, p.heads_q);
#pragma unroll
    for (int d = 0; d < kD; ++d) q[d] = q_row[d] * p.scale;
  }
#pragma unroll
  for (int d = 0; d < kD; ++d) o[d] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  const int my_end = has_row ? visible_end(p, i) : 0;
  // Keys the block's last row sees: beyond them every row of the block is masked, so the loop
  // stops there. It depends only on the block, so all threads run the same number of tiles and
  // meet at the same barriers.
  const int block_end = visible_end(p, min(p.seq_q, (tile + 1) * kBr) - 1);
  const int Tc = (block_end + kBc - 1) / kBc;
  for (int j = 0; j < Tc; ++j) {
    const int key0 = j * kBc;
    // line 6: consecutive threads copy consecutive floats of a row (coalesced reads); rows past
    // S_kv are zero-filled and masked below.
    for (int e = static_cast<int>(threadIdx.x); e < kBc * kD; e += kBr) {
      const int r = e / kD, d = e % kD;
      const bool in_range = key0 + r < p.seq_kv;
      const std::size_t at = row_offset(b, key0 + r, hk, p.seq_kv, p.heads_kv) + d;
      k_tile[r][d] = in_range ? p.k[at] : 0.0f;
      v_tile[r][d] = in_range ? p.v[at] : 0.0f;
    }
    __syncthreads();  // the whole tile is in shared memory before any thread reads it
    if (has_row) {
      // lines 9-10. All threads of a warp read the same k_tile element at once: a broadcast,
      // no bank conflict.
      float m_tile = -INFINITY;
#pragma unroll
      for (int c = 0; c < kBc; ++c) {
        float score = -INFINITY;  // masked (causal, or past S_kv): exp(-inf) = 0 below
        if (key0 + c < my_end) {
          score = 0.0f;
#pragma unroll
          for (int d = 0; d < kD; ++d) score += q[d] * k_tile[c][d];
        }
        s[c] = score;
        m_tile = fmaxf(m_tile, score);
      }
      // A tile this row sees none of changes nothing; skipping it also avoids exp(-inf - -inf).
      if (m_tile > -INFINITY) {
        float l_tile = 0.0f;
#pragma unroll
        for (int c = 0; c < kBc; ++c) {
          s[c] = expf(s[c] - m_tile);  // P~_ij, in place of S_ij
          l_tile += s[c];
        }
        const float m_new = fmaxf(m, m_tile);                                    // line 11
        const float old_weight = expf(m - m_new);                                // 0 on the first tile
        const float tile_weight = expf(m_tile - m_new);
        const float l_new = old_weight * l + tile_weight * l_tile;
        const float inv_l_new = 1.0f / l_new;  // l_new >= tile_weight * l_tile > 0
#pragma unroll
        for (int d = 0; d < kD; ++d) {                                           // line 12
          float pv = 0.0f;
#pragma unroll
          for (int c = 0; c < kBc; ++c) pv += s[c] * v_tile[c][d];
          o[d] = (l * old_weight * o[d] + tile_weight * pv) * inv_l_new;
        }
        m = m_new;                                                               // line 13
        l = l_new;
      }
    }
    __syncthreads();  // every thread is done with this tile before the next load overwrites it
  }
  if (has_row) {
    // O is already normalized (line 12); a row that saw no key keeps O = 0 and gets LSE = -inf.
    float* o_row = p.o + row_offset(b, i, h, p.seq_q, p.heads_q);
#pragma unroll
    for (int d = 0; d < kD; ++d) o_row[d] = o[d];
    p.lse[(static_cast<std::size_t>(b) * p.heads_q + h) * p.seq_q + i] = l > 0.0f ? m + logf(l) : -INFINITY;
  }
}

// ---- host code --------------------------------------------------------------------------------

// Device memory that frees itself, so an exception on the way cannot leak it.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(std::size_t count) : bytes_(count * sizeof(float)) {
    CUDA_CHECK(cudaMalloc(&ptr_, bytes_));
  }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  [[nodiscard]] float* get() const { return static_cast<float*>(ptr_); }
  [[nodiscard]] std::size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_;
};

class Event {
 public:
  Event() { CUDA_CHECK(cudaEventCreate(&event_)); }
  ~Event() { cudaEventDestroy(event_); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  [[nodiscard]] cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

std::size_t elements(int b, int s, int h, int d) {
  return static_cast<std::size_t>(b) * static_cast<std::size_t>(s) * static_cast<std::size_t>(h) *
         static_cast<std::size_t>(d);
}

}  // namespace

GpuInfo probe_gpu() {
  GpuInfo g;
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    g.reason = std::string("cudaGetDeviceCount: ") + cudaGetErrorString(status);
    return g;
  }
  if (count == 0) {
    g.reason = "cudaGetDeviceCount found 0 devices";
    return g;
  }
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  g.available = true;
  g.name = prop.name;
  g.major = prop.major;
  g.minor = prop.minor;
  g.memory_gib = static_cast<double>(prop.totalGlobalMem) / static_cast<double>(1ULL << 30);
  g.multiprocessors = prop.multiProcessorCount;
  return g;
}

int compiled_head_dim() { return kD; }
int tile_rows() { return kBr; }
int tile_cols() { return kBc; }

KernelRun run_attention(Kernel kernel, const Problem& pr, const std::vector<float>& q,
                        const std::vector<float>& k, const std::vector<float>& v, int timed_launches) {
  if (pr.head_dim != kD) {
    throw std::invalid_argument("the kernels are compiled for D = " + std::to_string(kD) + ", got D = " +
                                std::to_string(pr.head_dim));
  }
  if (pr.heads_kv <= 0 || pr.heads_q % pr.heads_kv != 0) {
    throw std::invalid_argument("H_q = " + std::to_string(pr.heads_q) + " must be a multiple of H_kv = " +
                                std::to_string(pr.heads_kv));
  }
  const std::size_t nq = elements(pr.batch, pr.seq_q, pr.heads_q, kD);
  const std::size_t nkv = elements(pr.batch, pr.seq_kv, pr.heads_kv, kD);
  const std::size_t nlse = elements(pr.batch, pr.heads_q, pr.seq_q, 1);
  if (q.size() != nq || k.size() != nkv || v.size() != nkv) {
    throw std::invalid_argument("Q, K or V does not have the problem's number of elements");
  }
  DeviceBuffer dq(nq), dk(nkv), dv(nkv), dout(nq), dlse(nlse);
  CUDA_CHECK(cudaMemcpy(dq.get(), q.data(), dq.bytes(), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dk.get(), k.data(), dk.bytes(), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dv.get(), v.data(), dv.bytes(), cudaMemcpyHostToDevice));
  // Poison: all bits set is a NaN, so an element that no thread writes fails the comparison.
  CUDA_CHECK(cudaMemset(dout.get(), 0xFF, dout.bytes()));
  CUDA_CHECK(cudaMemset(dlse.get(), 0xFF, dlse.bytes()));

  const Params p{dq.get(), dk.get(), dv.get(), dout.get(), dlse.get(), pr.batch, pr.seq_q, pr.seq_kv,
                 pr.heads_q, pr.heads_kv, pr.heads_q / pr.heads_kv, pr.seq_kv - pr.seq_q, pr.causal,
                 pr.scale};
  const auto launch = [&] {
    if (kernel == Kernel::RowPerThread) {
      const long long rows = static_cast<long long>(pr.batch) * pr.heads_q * pr.seq_q;
      const auto blocks = static_cast<unsigned>((rows + kThreadsV1 - 1) / kThreadsV1);
      attention_row_per_thread<<<blocks, kThreadsV1>>>(p);
    } else {
      const dim3 grid(static_cast<unsigned>((pr.seq_q + kBr - 1) / kBr), static_cast<unsigned>(pr.heads_q),
                      static_cast<unsigned>(pr.batch));
      attention_shared_tiles<<<grid, kBr>>>(p);
    }
    CUDA_CHECK(cudaGetLastError());  // a bad launch configuration shows here
  };

  KernelRun run;
  launch();
  CUDA_CHECK(cudaDeviceSynchronize());  // an error inside the kernel shows here
  run.out.resize(nq);
  run.lse.resize(nlse);
  CUDA_CHECK(cudaMemcpy(run.out.data(), dout.get(), dout.bytes(), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(run.lse.data(), dlse.get(), dlse.bytes(), cudaMemcpyDeviceToHost));

  // Timing: the launches are queued back to back between two events on the same stream, so the
  // events measure GPU time, not the host's.
  const Event start, stop;
  CUDA_CHECK(cudaEventRecord(start.get()));
  for (int n = 0; n < timed_launches; ++n) launch();
  CUDA_CHECK(cudaEventRecord(stop.get()));
  CUDA_CHECK(cudaEventSynchronize(stop.get()));
  float ms = 0;
  CUDA_CHECK(cudaEventElapsedTime(&ms, start.get(), stop.get()));
  run.ms_per_launch = timed_launches > 0 ? static_cast<double>(ms) / timed_launches : 0.0;
  return run;
}

}  // namespace tut10
