// ringattn attention --q Q.npy --k K.npy --v V.npy --out O.npy [--lse LSE.npy]
//     [--impl naive|blockwise|ring|mpi-ring|cuda|cuda-ring] [--causal] [--scale X] [--layout L]
//     [--ranks N] [--block-q N] [--block-kv N] [--dtype fp32|fp16|bf16]
//     [--kernel auto|simple|tiled|tensor-core] [--timeout S] [--dout dO.npy --dq dQ.npy --dk dK.npy --dv dV.npy]
// --impl cuda-ring runs --ranks virtual ranks on this machine's GPUs; started by mpirun (more than
// one process) it runs one NCCL rank per process instead (mpi_attention.cpp).
#include <cmath>
#include <iostream>
#include <memory>
#include <optional>
#include <string>

#include "cli_io.hpp"
#include "commands.hpp"
#include "cuda_cmd.hpp"
#include "mpi_attention.hpp"
#include "ringattn/core/error.hpp"
#include "ringattn/reference/ring.hpp"
#ifdef RINGATTN_HAVE_CUDA_BUILD
#include "cuda_ring_cmd.hpp"
#endif

namespace ringattn::cli {
namespace {

enum class Impl { Naive, Blockwise, Ring, Cuda, CudaRing };

struct AttentionArgs {
  std::string q, k, v, out, lse, dout, dq, dk, dv;
  std::string impl_name = "blockwise";
  Impl impl = Impl::Blockwise;
  bool causal = false;
  std::optional<double> scale;
  std::string layout = "contiguous";
  int ranks = 4;
  double timeout_s = 300;  // mpi-ring; cuda-ring: 600 unless given
  CLI::Option* timeout_opt = nullptr;
  std::int64_t block_q = ref::AttentionOptions{}.block_q;
  std::int64_t block_kv = ref::AttentionOptions{}.block_kv;
  CLI::Option* layout_opt = nullptr;
  CLI::Option* ranks_opt = nullptr;
  CLI::Option* block_q_opt = nullptr;
  CLI::Option* block_kv_opt = nullptr;
  std::string dtype = "fp32";   // --impl cuda, cuda-ring: compute dtype
  std::string kernel = "auto";  // --impl cuda, cuda-ring: forward kernel
  CLI::Option* dtype_opt = nullptr;
  CLI::Option* kernel_opt = nullptr;
};

// NaN in a result of the GPU is a fault (the outputs start as NaN, so an element the ring did not
// write shows up here): refuse to write it. LSE = -inf is a row that sees no key.
template <class T>
void require_no_nan(const Tensor<T>& t, const char* name) {
  for (std::int64_t n = 0; n < t.size(); ++n) {
    require(!std::isnan(t[n]), "the CUDA ring returned NaN in ", name, " at flat index ", n, " of ",
            shape_string(t.shape()), ": an element it did not write or a numerical fault");
  }
}

template <class T>
void run_typed(const AttentionArgs& a, const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
               const Tensor<T>* dout, OutputSet& outputs) {
  ref::RingOptions o;
  o.causal = a.causal;
  o.scale = a.scale;
  o.block_q = a.block_q;
  o.block_kv = a.block_kv;
  o.layout = parse_layout(a.layout);
  o.ranks = a.ranks;
  const AttentionShape shape = ref::check_qkv(q, k, v);
  ref::check_options(o);
  if (a.impl == Impl::Ring || a.impl == Impl::CudaRing) {
    // Refuse a split the layout cannot make before doing any work.
    (void)RingSchedule::for_shape(shape, o.layout, o.ranks, o.causal);
  }
  if (dout) {
    require(dout->shape() == q.shape(), a.dout, " is ", shape_string(dout->shape()),
            " but dO must have Q's shape ", shape_string(q.shape()));
  }

  if (a.impl == Impl::Cuda) {
#ifdef RINGATTN_HAVE_CUDA_BUILD
    const CudaAttentionResult<T> r = cuda_attention(q, k, v, dout, CudaOptions{a.dtype, a.kernel, a.causal, a.scale});
    outputs.stage(a.out, encode_npy(r.fwd.out));
    if (!a.lse.empty()) outputs.stage(a.lse, encode_npy(r.fwd.lse));
    if (r.grads) {
      outputs.stage(a.dq, encode_npy(r.grads->dq));
      outputs.stage(a.dk, encode_npy(r.grads->dk));
      outputs.stage(a.dv, encode_npy(r.grads->dv));
    }
    return;
#endif
  }
  if (a.impl == Impl::CudaRing) {
#ifdef RINGATTN_HAVE_CUDA_BUILD
    require_cuda_device();  // "no CUDA device: <reason>"
    CudaRingOptions ro;
    ro.dtype = a.dtype;
    ro.kernel = a.kernel;
    ro.causal = a.causal;
    ro.scale = a.scale;
    ro.layout = a.layout;
    ro.ranks = a.ranks;
    if (a.timeout_opt->count() > 0) ro.timeout_s = a.timeout_s;
    const CudaAttentionResult<T> r = cuda_ring_attention(q, k, v, dout, ro);
    require_no_nan(r.fwd.out, "O");
    require_no_nan(r.fwd.lse, "LSE");
    outputs.stage(a.out, encode_npy(r.fwd.out));
    if (!a.lse.empty()) outputs.stage(a.lse, encode_npy(r.fwd.lse));
    if (r.grads) {
      require_no_nan(r.grads->dq, "dQ");
      require_no_nan(r.grads->dk, "dK");
      require_no_nan(r.grads->dv, "dV");
      outputs.stage(a.dq, encode_npy(r.grads->dq));
      outputs.stage(a.dk, encode_npy(r.grads->dk));
      outputs.stage(a.dv, encode_npy(r.grads->dv));
    }
    return;
#endif
  }

  ref::ForwardResult<T> fwd;
  switch (a.impl) {
    case Impl::Naive: fwd = ref::naive_forward(q, k, v, o); break;
    case Impl::Blockwise: fwd = ref::blockwise_forward(q, k, v, o); break;
    case Impl::Ring: fwd = ref::ring_forward(q, k, v, o); break;
    case Impl::Cuda:
    case Impl::CudaRing: break;  // handled above
  }
  outputs.stage(a.out, encode_npy(fwd.out));
  if (!a.lse.empty()) outputs.stage(a.lse, encode_npy(fwd.lse));
  if (dout) {
    ref::Gradients<T> g;
    switch (a.impl) {
      case Impl::Naive: g = ref::naive_backward(q, k, v, fwd.out, fwd.lse, *dout, o); break;
      case Impl::Blockwise: g = ref::blockwise_backward(q, k, v, fwd.out, fwd.lse, *dout, o); break;
      case Impl::Ring: g = ref::ring_backward(q, k, v, fwd.out, fwd.lse, *dout, o); break;
      case Impl::Cuda:
      case Impl::CudaRing: break;  // handled above
    }
    outputs.stage(a.dq, encode_npy(g.dq));
    outputs.stage(a.dk, encode_npy(g.dk));
    outputs.stage(a.dv, encode_npy(g.dv));
  }
}

int run_mpi(const AttentionArgs& a) {
  require(a.ranks_opt->count() == 0, "--ranks applies to --impl ring; mpi-ring uses one rank per mpirun process");
#ifdef RINGATTN_HAVE_MPI
  MpiAttentionRequest r;
  r.q = a.q, r.k = a.k, r.v = a.v, r.out = a.out, r.lse = a.lse;
  r.dout = a.dout, r.dq = a.dq, r.dk = a.dk, r.dv = a.dv;
  r.causal = a.causal;
  r.scale = a.scale;
  r.layout = a.layout;
  r.block_q = a.block_q;
  r.block_kv = a.block_kv;
  r.timeout_s = a.timeout_s;
  return run_attention_mpi(r);
#else
  fail("this ringattn was built without MPI: install an MPI library (apt-get install libopenmpi-dev) and reconfigure");
#endif
}

// `mpirun -np N ringattn attention --impl cuda-ring`: one NCCL rank per process.
int run_cuda_ring_mpi(const AttentionArgs& a, int world) {
#if defined(RINGATTN_HAVE_MPI) && defined(RINGATTN_HAVE_CUDA_BUILD) && defined(RINGATTN_HAVE_NCCL)
  CudaRingMpiRequest r;
  r.q = a.q, r.k = a.k, r.v = a.v, r.out = a.out, r.lse = a.lse;
  r.dout = a.dout, r.dq = a.dq, r.dk = a.dk, r.dv = a.dv;
  r.causal = a.causal;
  r.scale = a.scale;
  r.layout = a.layout;
  r.timeout_s = a.timeout_opt->count() > 0 ? a.timeout_s : 600;
  r.dtype = a.dtype;
  r.kernel = a.kernel;
  if (a.ranks_opt->count() > 0) r.ranks = a.ranks;
  (void)world;  // MPI counts the processes itself
  return run_attention_cuda_ring_mpi(r);
#else
  (void)a;
  std::string missing;
#ifndef RINGATTN_HAVE_MPI
  missing += " MPI";
#endif
#ifndef RINGATTN_HAVE_NCCL
  missing += " NCCL";
#endif
  fail("--impl cuda-ring under mpirun (", world, " processes) runs one NCCL rank per process, but this ringattn was "
       "built without", missing, "; without mpirun, --ranks N runs N virtual ranks on this machine's GPUs");
#endif
}

int run(AttentionArgs& a) {
  const int grads_given = !a.dout.empty() + !a.dq.empty() + !a.dk.empty() + !a.dv.empty();
  require(grads_given == 0 || grads_given == 4,
          "the backward pass needs all of --dout, --dq, --dk and --dv (got ", grads_given, " of them)");
  const bool cuda = a.impl_name == "cuda";
  const bool cuda_ring = a.impl_name == "cuda-ring";
  require(cuda || cuda_ring || (a.dtype_opt->count() == 0 && a.kernel_opt->count() == 0),
          "--dtype and --kernel apply only to --impl cuda and cuda-ring");
  if (a.impl_name == "mpi-ring") return run_mpi(a);
  require(cuda_ring || a.timeout_opt->count() == 0, "--timeout applies only to --impl mpi-ring and cuda-ring");
  if (cuda_ring) {
    require(a.block_q_opt->count() == 0 && a.block_kv_opt->count() == 0,
            "--block-q and --block-kv apply to the CPU paths; the CUDA kernels choose their own tiles");
    require(a.timeout_s > 0, "--timeout must be positive, got ", a.timeout_s);
#ifndef RINGATTN_HAVE_CUDA_BUILD
    fail("this ringattn was built without CUDA: install the CUDA toolkit (nvcc) and reconfigure");
#endif
    if (const int world = mpi_launcher_world_size(); world > 1) return run_cuda_ring_mpi(a, world);
  }
  if (cuda) {
    require(a.block_q_opt->count() == 0 && a.block_kv_opt->count() == 0,
            "--block-q and --block-kv apply to the CPU paths; the CUDA kernels choose their own tiles");
    require(a.layout_opt->count() == 0 && a.ranks_opt->count() == 0,
            "--layout and --ranks apply only to --impl ring, cuda-ring and mpi-ring");
#ifdef RINGATTN_HAVE_CUDA_BUILD
    require_cuda_device();  // before any input is read: "no CUDA device: <reason>"
#else
    fail("this ringattn was built without CUDA: install the CUDA toolkit (nvcc) and reconfigure");
#endif
  }
  a.impl = a.impl_name == "naive" ? Impl::Naive
           : a.impl_name == "ring" ? Impl::Ring
           : cuda                  ? Impl::Cuda
           : cuda_ring             ? Impl::CudaRing
                                   : Impl::Blockwise;
  if (a.impl != Impl::Ring && a.impl != Impl::CudaRing) {
    require(a.layout_opt->count() == 0 && a.ranks_opt->count() == 0,
            "--layout and --ranks apply only to --impl ring, cuda-ring and mpi-ring");
  }
  const bool grads = grads_given == 4;
  std::vector<InputFile> inputs = {{"--q", a.q}, {"--k", a.k}, {"--v", a.v}};
  if (grads) inputs.push_back({"--dout", a.dout});
  OutputSet outputs;
  outputs.expect("--out", a.out, inputs);
  if (!a.lse.empty()) outputs.expect("--lse", a.lse, inputs);
  if (grads) {
    outputs.expect("--dq", a.dq, inputs);
    outputs.expect("--dk", a.dk, inputs);
    outputs.expect("--dv", a.dv, inputs);
  }
  std::vector<AnyTensor> t = load_inputs(inputs);
  std::visit(
      [&](const auto& q) {
        using Tn = std::decay_t<decltype(q)>;
        const auto* dout = grads ? &std::get<Tn>(t[3]) : nullptr;
        run_typed(a, q, std::get<Tn>(t[1]), std::get<Tn>(t[2]), dout, outputs);
      },
      t[0]);
  outputs.commit();
  return 0;
}

}  // namespace

Runner add_attention_command(CLI::App& app) {
  auto a = std::make_shared<AttentionArgs>();
  CLI::App* cmd = app.add_subcommand("attention", "Attention forward (and backward) on .npy files");
  cmd->add_option("--q", a->q, "queries (B, S_q, H_q, D), float32 or float64")->required();
  cmd->add_option("--k", a->k, "keys (B, S_kv, H_kv, D)")->required();
  cmd->add_option("--v", a->v, "values (B, S_kv, H_kv, D)")->required();
  cmd->add_option("--out", a->out, "output O (B, S_q, H_q, D)")->required();
  cmd->add_option("--lse", a->lse, "output log-sum-exp (B, H_q, S_q)");
  cmd->add_option("--impl", a->impl_name,
                  "naive | blockwise | ring | mpi-ring (run under mpirun) | cuda | cuda-ring (virtual ranks on this "
                  "machine's GPUs; under mpirun one NCCL rank per process)")
      ->check(CLI::IsMember({"naive", "blockwise", "ring", "mpi-ring", "cuda", "cuda-ring"}))
      ->capture_default_str();
  cmd->add_flag("--causal", a->causal, "mask keys after the query (queries aligned to the end of the keys)");
  cmd->add_option("--scale", a->scale, "softmax scale (default 1/sqrt(D))");
  a->layout_opt = cmd->add_option("--layout", a->layout, "ring layout: contiguous | striped | zigzag")
                      ->check(CLI::IsMember({"contiguous", "striped", "zigzag"}))
                      ->capture_default_str();
  a->ranks_opt = cmd->add_option("--ranks", a->ranks, "ring, cuda-ring: number of virtual ranks")->capture_default_str();
  a->timeout_opt = cmd->add_option("--timeout", a->timeout_s,
                                   "mpi-ring, cuda-ring: seconds to wait for a peer before giving up (cuda-ring: 600)")
                       ->capture_default_str();
  a->block_q_opt = cmd->add_option("--block-q", a->block_q, "Br: query rows per tile")->capture_default_str();
  a->block_kv_opt = cmd->add_option("--block-kv", a->block_kv, "Bc: key rows per tile")->capture_default_str();
  a->dtype_opt = cmd->add_option("--dtype", a->dtype, "cuda, cuda-ring: compute dtype the inputs are converted to")
                     ->check(CLI::IsMember({"fp32", "fp16", "bf16"}))
                     ->capture_default_str();
  a->kernel_opt = cmd->add_option("--kernel", a->kernel, "cuda, cuda-ring: forward kernel auto | simple | tiled | tensor-core")
                      ->check(CLI::IsMember({"auto", "simple", "tiled", "tensor-core"}))
                      ->capture_default_str();
  cmd->add_option("--dout", a->dout, "backward: upstream gradient dO (Q's shape)");
  cmd->add_option("--dq", a->dq, "backward: output dQ");
  cmd->add_option("--dk", a->dk, "backward: output dK");
  cmd->add_option("--dv", a->dv, "backward: output dV");
  return [cmd, a] { return cmd->parsed() ? run(*a) : -1; };
}

}  // namespace ringattn::cli
