#include "mpi_attention.hpp"

#include <mpi.h>

#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <iostream>
#include <memory>
#include <sstream>

#include "cli_io.hpp"
#include "ringattn/core/error.hpp"
#include "ringattn/reference/mpi_ring.hpp"
#if defined(RINGATTN_HAVE_CUDA_BUILD) && defined(RINGATTN_HAVE_NCCL)
#include "cuda_ring_cmd.hpp"
#include "ringattn/cuda/attention.hpp"
#include "ringattn/cuda/nccl_communicator.hpp"
#endif

namespace ringattn::cli {
namespace {

namespace rm = ringattn::ref::mpi;
constexpr int kTagScatter = 7201, kTagGather = 7202;
constexpr int kTextBytes = 1024;

struct World {
  int rank = 0, ranks = 1;
  double timeout_s = 300;
};

// Rank 0's verdict on the inputs, broadcast so that every rank stops together on bad input.
void broadcast_verdict(const World& w, std::string& error) {
  std::array<char, kTextBytes> buf{};
  if (w.rank == 0) std::memcpy(buf.data(), error.data(), std::min<std::size_t>(error.size(), kTextBytes - 1));
  MPI_Request req;
  MPI_Ibcast(buf.data(), kTextBytes, MPI_CHAR, 0, MPI_COMM_WORLD, &req);
  rm::wait_all(1, &req, w.timeout_s, "verdict on the inputs", 0);
  error = buf.data();
  if (!error.empty()) throw rm::CollectiveError(error);
}

template <class T>
MPI_Datatype mpi_type() {
  return std::is_same_v<T, float> ? MPI_FLOAT : MPI_DOUBLE;
}

// Rank 0 sends every other rank its shard of `full`; others receive theirs (sized by the layout).
template <class T>
Tensor<T> scatter_rows(const World& w, const Tensor<T>* full, const SequenceLayout& layout,
                       const std::vector<std::int64_t>& shape, const char* what) {
  if (w.rank == 0) {
    std::vector<Tensor<T>> shards;
    std::vector<MPI_Request> reqs;
    for (int r = 1; r < w.ranks; ++r) {
      shards.push_back(ref::shard_rows(*full, layout, r));
      reqs.emplace_back();
      MPI_Isend(shards.back().data(), static_cast<int>(shards.back().size()), mpi_type<T>(), r, kTagScatter,
                MPI_COMM_WORLD, &reqs.back());
    }
    if (!reqs.empty()) rm::wait_all(static_cast<int>(reqs.size()), reqs.data(), w.timeout_s, std::string("receipt of ") + what, -1);
    return ref::shard_rows(*full, layout, 0);
  }
  Tensor<T> shard({shape[0], layout.shard_length(w.rank), shape[2], shape[3]});
  MPI_Request req;
  MPI_Irecv(shard.data(), static_cast<int>(shard.size()), mpi_type<T>(), 0, kTagScatter, MPI_COMM_WORLD, &req);
  rm::wait_all(1, &req, w.timeout_s, std::string("shard of ") + what, 0);
  return shard;
}

// Rank 0 collects every rank's shard into the full tensor (rows or LSE entries).
template <class T>
void gather(const World& w, const Tensor<T>& mine, const SequenceLayout& layout, Tensor<T>* full, bool lse,
            const char* what) {
  if (w.rank != 0) {
    MPI_Request req;
    MPI_Isend(mine.data(), static_cast<int>(mine.size()), mpi_type<T>(), 0, kTagGather, MPI_COMM_WORLD, &req);
    rm::wait_all(1, &req, w.timeout_s, std::string("receipt of ") + what, 0);
    return;
  }
  auto put = [&](const Tensor<T>& shard, int r) {
    if (lse) {
      ref::unshard_lse(shard, layout, r, *full);
    } else {
      ref::unshard_rows(shard, layout, r, *full);
    }
  };
  put(mine, 0);
  for (int r = 1; r < w.ranks; ++r) {
    std::vector<std::int64_t> shape = mine.shape();
    shape[lse ? 2 : 1] = layout.shard_length(r);
    Tensor<T> shard(shape);
    MPI_Request req;
    MPI_Irecv(shard.data(), static_cast<int>(shard.size()), mpi_type<T>(), r, kTagGather, MPI_COMM_WORLD, &req);
    rm::wait_all(1, &req, w.timeout_s, std::string("shard of ") + what, r);
    put(shard, r);
  }
}

template <class T>
void run_typed(const World& w, const MpiAttentionRequest& a, const std::vector<AnyTensor>& in,
               const std::array<std::int64_t, 6>& dims, OutputSet* outputs) {
  const AttentionShape sh{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5]};
  const bool backward = !a.dout.empty();
  rm::MpiRingOptions o;
  o.causal = a.causal;
  o.scale = a.scale;
  o.block_q = a.block_q;
  o.block_kv = a.block_kv;
  o.layout = parse_layout(a.layout);
  o.seq_q = sh.seq_q;
  o.seq_kv = sh.seq_kv;
  o.timeout_s = a.timeout_s;
  const RingSchedule sched = RingSchedule::for_shape(sh, o.layout, w.ranks, o.causal);
  const auto full = [&](std::size_t i) -> const Tensor<T>* { return w.rank == 0 ? &std::get<Tensor<T>>(in[i]) : nullptr; };
  const std::vector<std::int64_t> qs = {sh.batch, sh.seq_q, sh.heads_q, sh.head_dim};
  const std::vector<std::int64_t> ks = {sh.batch, sh.seq_kv, sh.heads_kv, sh.head_dim};
  const Tensor<T> q = scatter_rows<T>(w, full(0), sched.q_layout(), qs, "Q");
  const Tensor<T> k = scatter_rows<T>(w, full(1), sched.kv_layout(), ks, "K");
  const Tensor<T> v = scatter_rows<T>(w, full(2), sched.kv_layout(), ks, "V");
  const ref::ForwardResult<T> f = rm::ring_forward(MPI_COMM_WORLD, q, k, v, o);
  Tensor<T> out_full, lse_full;
  if (w.rank == 0) {
    out_full = Tensor<T>(qs);
    lse_full = Tensor<T>({sh.batch, sh.heads_q, sh.seq_q});
  }
  gather(w, f.out, sched.q_layout(), &out_full, false, "O");
  gather(w, f.lse, sched.q_layout(), &lse_full, true, "LSE");
  Tensor<T> dq_full, dk_full, dv_full;
  if (backward) {
    const Tensor<T> dout = scatter_rows<T>(w, full(3), sched.q_layout(), qs, "dO");
    const ref::Gradients<T> g = rm::ring_backward(MPI_COMM_WORLD, q, k, v, f.out, f.lse, dout, o);
    if (w.rank == 0) {
      dq_full = Tensor<T>(qs);
      dk_full = Tensor<T>(ks);
      dv_full = Tensor<T>(ks);
    }
    gather(w, g.dq, sched.q_layout(), &dq_full, false, "dQ");
    gather(w, g.dk, sched.kv_layout(), &dk_full, false, "dK");
    gather(w, g.dv, sched.kv_layout(), &dv_full, false, "dV");
  }
  if (w.rank == 0) {
    outputs->stage(a.out, encode_npy(out_full));
    if (!a.lse.empty()) outputs->stage(a.lse, encode_npy(lse_full));
    if (backward) {
      outputs->stage(a.dq, encode_npy(dq_full));
      outputs->stage(a.dk, encode_npy(dk_full));
      outputs->stage(a.dv, encode_npy(dv_full));
    }
    outputs->commit();
  }
}

// Rank 0 reads and checks the inputs (and runs @p extra_checks); its verdict reaches every rank
// (a CollectiveError on all of them if it found a problem). Returns the dtype and shape of the
// inputs on every rank: dtype, B, S_q, S_kv, H_q, H_kv, D.
std::array<std::int64_t, 7> read_on_rank0(const World& w, const MpiAttentionRequest& a, bool cpu_tiles,
                                          std::vector<AnyTensor>& in, OutputSet& outputs,
                                          const std::function<void()>& extra_checks = {}) {
  const bool backward = !a.dout.empty();
  std::array<std::int64_t, 7> header{};  // dtype, B, S_q, S_kv, H_q, H_kv, D
  std::string error;
  if (w.rank == 0) {
    try {
      std::vector<InputFile> inputs = {{"--q", a.q}, {"--k", a.k}, {"--v", a.v}};
      if (backward) inputs.push_back({"--dout", a.dout});
      outputs.expect("--out", a.out, inputs);
      if (!a.lse.empty()) outputs.expect("--lse", a.lse, inputs);
      if (backward) {
        outputs.expect("--dq", a.dq, inputs);
        outputs.expect("--dk", a.dk, inputs);
        outputs.expect("--dv", a.dv, inputs);
      }
      in = load_inputs(inputs);
      const AttentionShape sh = std::visit(
          [&](const auto& q) {
            using Tn = std::decay_t<decltype(q)>;
            const AttentionShape s = ref::check_qkv(q, std::get<Tn>(in[1]), std::get<Tn>(in[2]));
            if (backward) {
              const auto& d = std::get<Tn>(in[3]);
              require(d.shape() == q.shape(), a.dout, " is ", shape_string(d.shape()), " but dO must have Q's shape ",
                      shape_string(q.shape()));
            }
            return s;
          },
          in[0]);
      ref::AttentionOptions o;
      o.scale = a.scale;
      if (cpu_tiles) {
        o.block_q = a.block_q;
        o.block_kv = a.block_kv;
      }
      ref::check_options(o);
      if (extra_checks) extra_checks();
      require(a.timeout_s > 0, "--timeout must be positive, got ", a.timeout_s);
      (void)RingSchedule::for_shape(sh, parse_layout(a.layout), w.ranks, a.causal);  // refuse a bad split now
      header = {static_cast<std::int64_t>(dtype_of(in[0])), sh.batch, sh.seq_q, sh.seq_kv, sh.heads_q, sh.heads_kv,
                sh.head_dim};
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  broadcast_verdict(w, error);
  MPI_Request req;
  MPI_Ibcast(header.data(), 7, MPI_INT64_T, 0, MPI_COMM_WORLD, &req);
  rm::wait_all(1, &req, w.timeout_s, "shape of the inputs", 0);
  return header;
}

int run(const World& w, const MpiAttentionRequest& a) {
  const bool backward = !a.dout.empty();
  // 1. Every rank parsed its own command line: they must agree.
  std::ostringstream flags;
  flags.precision(17);
  flags << "layout=" << a.layout << " causal=" << a.causal << " scale=" << (a.scale ? std::to_string(*a.scale) : "default")
        << " block-q=" << a.block_q << " block-kv=" << a.block_kv << " backward=" << backward
        << " lse=" << !a.lse.empty() << " timeout=" << a.timeout_s;
  rm::check_agreement(MPI_COMM_WORLD, flags.str(), w.timeout_s);
  // 2. Rank 0 reads and checks everything; its verdict reaches every rank.
  std::vector<AnyTensor> in;
  OutputSet outputs;
  const std::array<std::int64_t, 7> header = read_on_rank0(w, a, true, in, outputs);
  const std::array<std::int64_t, 6> dims = {header[1], header[2], header[3], header[4], header[5], header[6]};
  if (static_cast<DType>(header[0]) == DType::Float32) {
    run_typed<float>(w, a, in, dims, &outputs);
  } else {
    run_typed<double>(w, a, in, dims, &outputs);
  }
  return 0;
}

// Runs @p body as one process of an MPI job: a problem every rank agreed on (CollectiveError) is
// printed once by rank 0 and every rank stops in order; a problem only this rank knows of (a
// peer died or is stuck, a write failed) ends the whole job.
template <class Body>
int run_in_mpi_job(double timeout_s, double default_timeout_s, Body&& body) {
  int provided = 0;
  MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
  World w;
  MPI_Comm_rank(MPI_COMM_WORLD, &w.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &w.ranks);
  w.timeout_s = timeout_s > 0 ? timeout_s : default_timeout_s;
  try {
    body(w);
    MPI_Finalize();
    return 0;
  } catch (const rm::CollectiveError& e) {
    if (w.rank == 0) std::cerr << "ringattn: error: " << e.what() << "\n";
    MPI_Finalize();
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "ringattn: error: rank " << w.rank << ": " << e.what() << "\n" << std::flush;
    MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
  }
}

}  // namespace

int run_attention_mpi(const MpiAttentionRequest& request) {
  return run_in_mpi_job(request.timeout_s, 300, [&](World& w) { run(w, request); });
}

#if defined(RINGATTN_HAVE_CUDA_BUILD) && defined(RINGATTN_HAVE_NCCL)
namespace {

// This process's rank of the CUDA ring: its shards scattered from rank 0, the ring over NCCL, the
// results gathered to rank 0, which writes them.
template <class T>
void run_cuda_ring_typed(const World& w, cuda::Communicator& comm, const CudaRingMpiRequest& a,
                         const std::vector<AnyTensor>& in, const std::array<std::int64_t, 6>& dims, OutputSet* outputs) {
  const AttentionShape sh{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5]};
  const bool backward = !a.dout.empty();
  const RingSchedule sched = RingSchedule::for_shape(sh, parse_layout(a.layout), w.ranks, a.causal);
  const auto full = [&](std::size_t i) -> const Tensor<T>* { return w.rank == 0 ? &std::get<Tensor<T>>(in[i]) : nullptr; };
  const std::vector<std::int64_t> qs = {sh.batch, sh.seq_q, sh.heads_q, sh.head_dim};
  const std::vector<std::int64_t> ks = {sh.batch, sh.seq_kv, sh.heads_kv, sh.head_dim};
  std::vector<RingShardInputs<T>> shard(1);
  shard[0].q = scatter_rows<T>(w, full(0), sched.q_layout(), qs, "Q");
  shard[0].k = scatter_rows<T>(w, full(1), sched.kv_layout(), ks, "K");
  shard[0].v = scatter_rows<T>(w, full(2), sched.kv_layout(), ks, "V");
  if (backward) shard[0].dout = scatter_rows<T>(w, full(3), sched.q_layout(), qs, "dO");
  CudaRingOptions o;
  o.dtype = a.dtype;
  o.kernel = a.kernel;
  o.causal = a.causal;
  o.scale = a.scale;
  o.layout = a.layout;
  o.ranks = w.ranks;
  o.timeout_s = a.timeout_s;
  const std::vector<RingShardOutputs<T>> r = cuda_ring_shards(comm, sh, o, shard);
  shard.clear();
  Tensor<T> out_full, lse_full, dq_full, dk_full, dv_full;
  if (w.rank == 0) {
    out_full = Tensor<T>(qs);
    lse_full = Tensor<T>({sh.batch, sh.heads_q, sh.seq_q});
    if (backward) dq_full = Tensor<T>(qs), dk_full = Tensor<T>(ks), dv_full = Tensor<T>(ks);
  }
  gather(w, r[0].out, sched.q_layout(), &out_full, false, "O");
  gather(w, r[0].lse, sched.q_layout(), &lse_full, true, "LSE");
  if (backward) {
    gather(w, r[0].dq, sched.q_layout(), &dq_full, false, "dQ");
    gather(w, r[0].dk, sched.kv_layout(), &dk_full, false, "dK");
    gather(w, r[0].dv, sched.kv_layout(), &dv_full, false, "dV");
  }
  // Rank 0 writes; whether that worked reaches every rank, so all exit alike.
  std::string error;
  if (w.rank == 0) {
    try {
      const auto nan_free = [](const Tensor<T>& t, const char* name) {
        for (std::int64_t n = 0; n < t.size(); ++n) {
          require(!std::isnan(t[n]), "the CUDA ring returned NaN in ", name, " at flat index ", n,
                  ": an element it did not write or a numerical fault");
        }
      };
      nan_free(out_full, "O");
      nan_free(lse_full, "LSE");
      outputs->stage(a.out, encode_npy(out_full));
      if (!a.lse.empty()) outputs->stage(a.lse, encode_npy(lse_full));
      if (backward) {
        nan_free(dq_full, "dQ");
        nan_free(dk_full, "dK");
        nan_free(dv_full, "dV");
        outputs->stage(a.dq, encode_npy(dq_full));
        outputs->stage(a.dk, encode_npy(dk_full));
        outputs->stage(a.dv, encode_npy(dv_full));
      }
      outputs->commit();
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  rm::fail_together(MPI_COMM_WORLD, error, w.timeout_s);
}

void run_cuda_ring(const World& w, const CudaRingMpiRequest& a) {
  const bool backward = !a.dout.empty();
  // 1. Every rank parsed its own command line: they must agree.
  std::ostringstream flags;
  flags.precision(17);
  flags << "impl=cuda-ring layout=" << a.layout << " causal=" << a.causal
        << " scale=" << (a.scale ? std::to_string(*a.scale) : "default") << " dtype=" << a.dtype << " kernel=" << a.kernel
        << " ranks=" << (a.ranks ? std::to_string(*a.ranks) : "default") << " backward=" << backward
        << " lse=" << !a.lse.empty() << " timeout=" << a.timeout_s;
  rm::check_agreement(MPI_COMM_WORLD, flags.str(), w.timeout_s);
  // 2. Every rank needs a GPU before NCCL starts (a rank without one would leave the others
  //    waiting in NCCL's initialization).
  std::string why;
  const int devices = cuda::device_count(&why);
  rm::fail_together(MPI_COMM_WORLD, devices > 0 ? std::string() : "no CUDA device: " + why, w.timeout_s);
  std::unique_ptr<cuda::NcclCommunicator> comm;
  std::string error;
  try {
    comm = cuda::NcclCommunicator::from_mpi();
  } catch (const std::exception& e) {
    error = e.what();
  }
  rm::fail_together(MPI_COMM_WORLD, error, w.timeout_s);
  // 3. Rank 0 reads and checks everything; its verdict reaches every rank.
  std::vector<AnyTensor> in;
  OutputSet outputs;
  const std::array<std::int64_t, 7> header = read_on_rank0(w, a, false, in, outputs, [&] {
    require(!a.ranks || *a.ranks == w.ranks, "--ranks ", a.ranks.value_or(0), " but mpirun started ", w.ranks,
            " processes: under mpirun each process is one rank of the CUDA ring");
  });
  const std::array<std::int64_t, 6> dims = {header[1], header[2], header[3], header[4], header[5], header[6]};
  // 4. The ring.
  try {
    if (static_cast<DType>(header[0]) == DType::Float32) {
      run_cuda_ring_typed<float>(w, *comm, a, in, dims, &outputs);
    } else {
      run_cuda_ring_typed<double>(w, *comm, a, in, dims, &outputs);
    }
  } catch (const RingCollectiveError& e) {
    throw rm::CollectiveError(e.what());  // every rank has it: stop in order
  }
}

}  // namespace

int run_attention_cuda_ring_mpi(const CudaRingMpiRequest& request) {
  return run_in_mpi_job(request.timeout_s, 600, [&](World& w) { run_cuda_ring(w, request); });
}
#endif

}  // namespace ringattn::cli
