// ringattn decode --q Q.npy --k K.npy --v V.npy --splits N --out O.npy [--lse LSE.npy] [--causal]
//     [--impl reference|cuda] [--dtype fp32|fp16|bf16] [--block-kv N]
#include <memory>
#include <optional>
#include <string>

#include "cli_io.hpp"
#include "commands.hpp"
#include "cuda_cmd.hpp"
#include "ringattn/core/error.hpp"
#include "ringattn/reference/attention.hpp"

namespace ringattn::cli {
namespace {

struct DecodeArgs {
  std::string q, k, v, out, lse;
  std::int64_t splits = 0;
  bool causal = false;
  std::optional<double> scale;
  std::int64_t block_kv = ref::AttentionOptions{}.block_kv;
  CLI::Option* block_kv_opt = nullptr;
  std::string impl = "reference";
  std::string dtype = "fp32";  // --impl cuda: compute dtype
  CLI::Option* dtype_opt = nullptr;
};

int run(const DecodeArgs& a) {
  require(a.splits >= 1, "--splits must be at least 1, got ", a.splits);
  const bool cuda = a.impl == "cuda";
  require(cuda || a.dtype_opt->count() == 0, "--dtype applies only to --impl cuda");
  if (cuda) {
    require(a.block_kv_opt->count() == 0, "--block-kv applies to the CPU reference; the CUDA kernels choose their own tiles");
#ifdef RINGATTN_HAVE_CUDA_BUILD
    require_cuda_device();  // before any input is read: "no CUDA device: <reason>"
#else
    fail("this ringattn was built without CUDA: install the CUDA toolkit (nvcc) and reconfigure");
#endif
  }
  const std::vector<InputFile> inputs = {{"--q", a.q}, {"--k", a.k}, {"--v", a.v}};
  OutputSet outputs;
  outputs.expect("--out", a.out, inputs);
  if (!a.lse.empty()) outputs.expect("--lse", a.lse, inputs);
  std::vector<AnyTensor> t = load_inputs(inputs);
  std::visit(
      [&](const auto& q) {
        using Tn = std::decay_t<decltype(q)>;
#ifdef RINGATTN_HAVE_CUDA_BUILD
        if (cuda) {
          const auto r = cuda_decode(q, std::get<Tn>(t[1]), std::get<Tn>(t[2]), a.splits,
                                     CudaOptions{a.dtype, "auto", a.causal, a.scale});
          outputs.stage(a.out, encode_npy(r.out));
          if (!a.lse.empty()) outputs.stage(a.lse, encode_npy(r.lse));
          return;
        }
#endif
        ref::AttentionOptions o;
        o.causal = a.causal;
        o.scale = a.scale;
        o.block_kv = a.block_kv;
        const auto r = ref::decode_forward(q, std::get<Tn>(t[1]), std::get<Tn>(t[2]), a.splits, o);
        outputs.stage(a.out, encode_npy(r.out));
        if (!a.lse.empty()) outputs.stage(a.lse, encode_npy(r.lse));
      },
      t[0]);
  outputs.commit();
  return 0;
}

}  // namespace

Runner add_decode_command(CLI::App& app) {
  auto a = std::make_shared<DecodeArgs>();
  CLI::App* cmd = app.add_subcommand("decode", "Flash-decoding: queries against a K/V cache split in pieces");
  cmd->add_option("--q", a->q, "queries (B, S_q, H_q, D), usually S_q = 1")->required();
  cmd->add_option("--k", a->k, "key cache (B, S_kv, H_kv, D)")->required();
  cmd->add_option("--v", a->v, "value cache (B, S_kv, H_kv, D)")->required();
  cmd->add_option("--splits", a->splits, "number of pieces the cache is split into")->required();
  cmd->add_option("--out", a->out, "output O (B, S_q, H_q, D)")->required();
  cmd->add_option("--lse", a->lse, "output log-sum-exp (B, H_q, S_q)");
  cmd->add_flag("--causal", a->causal, "queries are the last S_q positions of the cache");
  cmd->add_option("--scale", a->scale, "softmax scale (default 1/sqrt(D))");
  a->block_kv_opt =
      cmd->add_option("--block-kv", a->block_kv, "Bc: key rows per tile inside a split")->capture_default_str();
  cmd->add_option("--impl", a->impl, "reference (CPU) | cuda")
      ->check(CLI::IsMember({"reference", "cuda"}))
      ->capture_default_str();
  a->dtype_opt = cmd->add_option("--dtype", a->dtype, "cuda: compute dtype the inputs are converted to")
                     ->check(CLI::IsMember({"fp32", "fp16", "bf16"}))
                     ->capture_default_str();
  return [cmd, a] { return cmd->parsed() ? run(*a) : -1; };
}

}  // namespace ringattn::cli
