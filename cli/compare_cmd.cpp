// ringattn compare --impl cuda|cuda-ring|ring|blockwise|naive
//     (--q Q.npy --k K.npy --v V.npy [--dout dO.npy] | --batch B --seq S [--seq-kv S_kv] --heads H
//      [--heads-kv H_kv] --head-dim D [--logit-scale X]) [--seed N] [--causal] [--scale X] [--backward]
//     [--layout L --ranks N] [--dtype fp32|fp16|bf16] [--kernel K] [--block-q Br --block-kv Bc]
//     [--full | --sample-rows K] [--threads T] [--perturb WHAT[:ROW[:AMOUNT]]]
// Runs one implementation and checks its O, LSE (and dQ, dK, dV) against float64 attention on
// the same values (accuracy.hpp says how each output is judged). Prints the errors, the bound
// each is judged against, and a final OK (exit 0) or FAILED (exit 1) line.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>

#include "accuracy.hpp"
#include "cli_io.hpp"
#include "commands.hpp"
#include "cuda_cmd.hpp"
#include "ringattn/core/error.hpp"
#include "ringattn/core/schedule.hpp"
#include "ringattn/reference/ring.hpp"
#ifdef RINGATTN_HAVE_CUDA_BUILD
#include "cuda_ring_cmd.hpp"
#endif

namespace ringattn::cli {
namespace {

// Problems with B * H_q * S_q * S_kv * D up to this are checked on every element by default
// (about 2^28 multiply-adds: a second or two for the float64 reference on two cores).
constexpr std::int64_t kFullLimit = std::int64_t{1} << 28;

struct CompareArgs {
  std::string impl;
  std::string q, k, v, dout;
  std::int64_t batch = 1, seq = 1024, seq_kv = 0, heads = 8, heads_kv = 0, head_dim = 64;
  std::uint64_t seed = 0;
  double logit_scale = 1.0;
  bool causal = false, backward = false, full = false;
  std::optional<double> scale;
  int sample_rows = 64;
  std::string layout = "contiguous";
  int ranks = 4;
  std::string dtype = "fp32", kernel = "auto";
  std::int64_t block_q = ref::AttentionOptions{}.block_q, block_kv = ref::AttentionOptions{}.block_kv;
  int threads = 0;
  std::string perturb;
  CLI::Option *seed_opt = nullptr, *sample_opt = nullptr, *layout_opt = nullptr, *ranks_opt = nullptr,
              *dtype_opt = nullptr, *kernel_opt = nullptr, *block_q_opt = nullptr, *block_kv_opt = nullptr;
  std::vector<CLI::Option*> gen_opts;  // --batch ... --logit-scale
};

bool is_cuda(const std::string& impl) { return impl == "cuda" || impl == "cuda-ring"; }
bool is_ring(const std::string& impl) { return impl == "ring" || impl == "cuda-ring"; }

// --perturb WHAT[:ROW[:AMOUNT]]: for testing the checker, the implementation's WHAT (o, lse, dq,
// dk, dv) at sequence position ROW (all rows when absent or "all") gets x += AMOUNT max(1, |x|)
// (AMOUNT 1e-3 by default, or "nan").
struct Perturbation {
  std::string what;
  std::optional<std::int64_t> row;
  double amount = 1e-3;
  bool nan = false;
};

Perturbation parse_perturbation(const std::string& spec) {
  Perturbation p;
  std::vector<std::string> parts;
  std::stringstream ss(spec);
  for (std::string part; std::getline(ss, part, ':');) parts.push_back(part);
  require(!parts.empty() && parts.size() <= 3, "--perturb takes WHAT[:ROW[:AMOUNT]], got '", printable(spec), "'");
  p.what = parts[0];
  require(p.what == "o" || p.what == "lse" || p.what == "dq" || p.what == "dk" || p.what == "dv",
          "--perturb: WHAT must be o, lse, dq, dk or dv, got '", printable(p.what), "'");
  try {
    if (parts.size() >= 2 && parts[1] != "all") {
      std::size_t used = 0;
      p.row = std::stoll(parts[1], &used);
      require(used == parts[1].size() && *p.row >= 0, "bad row");
    }
    if (parts.size() == 3) {
      if (parts[2] == "nan") {
        p.nan = true;
      } else {
        std::size_t used = 0;
        p.amount = std::stod(parts[2], &used);
        require(used == parts[2].size() && std::isfinite(p.amount), "bad amount");
      }
    }
  } catch (const std::exception&) {
    fail("--perturb takes WHAT[:ROW[:AMOUNT]] with ROW a position or 'all' and AMOUNT a number or 'nan', got '",
         printable(spec), "'");
  }
  return p;
}

// Applies @p p to @p t, whose sequence dimension is @p seq_dim.
void apply(const Perturbation& p, Tensor<float>& t, int seq_dim, const char* name) {
  require(t.size() > 0, "--perturb ", p.what, ": there is no ", name, " (add --backward)");
  const std::int64_t seq = t.dim(seq_dim);
  require(!p.row || *p.row < seq, "--perturb: row ", p.row.value_or(0), " is outside ", name, "'s ", seq, " rows");
  std::int64_t inner = 1;
  for (int d = seq_dim + 1; d < t.rank(); ++d) inner *= t.dim(d);
  for (std::int64_t n = 0; n < t.size(); ++n) {
    if (p.row && (n / inner) % seq != *p.row) continue;
    float& x = t[n];
    x = p.nan ? std::nanf("") : static_cast<float>(x + p.amount * std::max(1.0, std::fabs(static_cast<double>(x))));
  }
}

// A (shape) tensor of normal values times @p mult, drawn in chunks with their own generators so
// the values depend on the seed only, not on the thread count.
Tensor<float> generate(const std::vector<std::int64_t>& shape, std::uint64_t seed, std::uint64_t stream, double mult,
                       int threads) {
  Tensor<float> t(shape);
  constexpr std::int64_t kChunk = 1 << 16;
  const std::int64_t chunks = (t.size() + kChunk - 1) / kChunk;
  parallel_for(chunks, threads, [&](std::int64_t c) {
    std::seed_seq seq{seed, stream, static_cast<std::uint64_t>(c)};
    std::mt19937_64 rng(seq);
    std::normal_distribution<double> normal(0.0, 1.0);
    const std::int64_t end = std::min(t.size(), (c + 1) * kChunk);
    for (std::int64_t n = c * kChunk; n < end; ++n) t[n] = static_cast<float>(mult * normal(rng));
  });
  return t;
}

Tensor<float> to_float(const AnyTensor& any, const std::string& name) {
  Tensor<float> t = std::visit(
      [](const auto& src) {
        Tensor<float> f(src.shape());
        for (std::int64_t n = 0; n < src.size(); ++n) f[n] = static_cast<float>(src[n]);
        return f;
      },
      any);
  check_finite(t, name + " (as float32)");
  return t;
}

std::string sci(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3e", x);
  return buf;
}

std::string describe_impl(const CompareArgs& a, Precision pr) {
  std::ostringstream os;
  os << a.impl;
  if (is_ring(a.impl)) os << " (" << a.layout << " layout, " << a.ranks << " ranks)";
  if (a.impl == "cuda" || a.impl == "cuda-ring") os << ", dtype " << to_string(pr) << ", kernel " << a.kernel;
  if (!is_cuda(a.impl)) os << ", float32";
  return os.str();
}

CheckResults run_impl(const CompareArgs& a, const Tensor<float>& q, const Tensor<float>& k, const Tensor<float>& v,
                      const Tensor<float>* dout) {
  CheckResults r;
  if (is_cuda(a.impl)) {
#ifdef RINGATTN_HAVE_CUDA_BUILD
    CudaAttentionResult<float> c;
    if (a.impl == "cuda") {
      c = cuda_attention(q, k, v, dout, CudaOptions{a.dtype, a.kernel, a.causal, a.scale});
    } else {
      CudaRingOptions o;
      o.dtype = a.dtype;
      o.kernel = a.kernel;
      o.causal = a.causal;
      o.scale = a.scale;
      o.layout = a.layout;
      o.ranks = a.ranks;
      c = cuda_ring_attention(q, k, v, dout, o);
    }
    r.out = std::move(c.fwd.out);
    r.lse = std::move(c.fwd.lse);
    if (c.grads) {
      r.dq = std::move(c.grads->dq);
      r.dk = std::move(c.grads->dk);
      r.dv = std::move(c.grads->dv);
    }
#endif
    return r;
  }
  ref::RingOptions o;
  o.causal = a.causal;
  o.scale = a.scale;
  o.block_q = a.block_q;
  o.block_kv = a.block_kv;
  o.layout = parse_layout(a.layout);
  o.ranks = a.ranks;
  ref::ForwardResult<float> f;
  if (a.impl == "naive") {
    f = ref::naive_forward(q, k, v, o);
  } else if (a.impl == "blockwise") {
    f = ref::blockwise_forward(q, k, v, o);
  } else {
    f = ref::ring_forward(q, k, v, o);
  }
  if (dout) {
    ref::Gradients<float> g;
    if (a.impl == "naive") {
      g = ref::naive_backward(q, k, v, f.out, f.lse, *dout, o);
    } else if (a.impl == "blockwise") {
      g = ref::blockwise_backward(q, k, v, f.out, f.lse, *dout, o);
    } else {
      g = ref::ring_backward(q, k, v, f.out, f.lse, *dout, o);
    }
    r.dq = std::move(g.dq);
    r.dk = std::move(g.dk);
    r.dv = std::move(g.dv);
  }
  r.out = std::move(f.out);
  r.lse = std::move(f.lse);
  return r;
}

void print_report(const CheckReport& rep, Precision pr) {
  const bool low = pr != Precision::F32;
  std::printf("%-4s %11s %10s %10s  ", "", "elements", "max|err|", "rel err");
  if (low) {
    std::printf("%12s %11s %6s  %-36s", "naive max", "naive rel", "ratio", "bound on max|err|");
  } else {
    std::printf("%-44s", "bound");
  }
  std::printf(" verdict\n");
  for (const OutputCheck& c : rep.outputs) {
    std::printf("%-4s %11lld %10s %10s  ", c.name.c_str(), static_cast<long long>(c.elements), sci(c.max_err).c_str(),
                sci(c.rel_err).c_str());
    if (low) {
      const double ratio = c.naive_max_err > 0 ? c.max_err / c.naive_max_err : 0.0;
      const std::string bound = (c.name[0] == 'd' ? "3" : "2") + std::string(" x naive + rounding = ") + sci(c.bound);
      std::printf("%12s %11s %6.2f  %-36s", sci(c.naive_max_err).c_str(), sci(c.naive_rel_err).c_str(), ratio,
                  bound.c_str());
    } else {
      const std::string bound = "rel <= " + sci(c.rel_bound) + ", |err| <= " + sci(c.bound) + " + " +
                                (c.name[0] == 'd' ? "3e-5" : "1e-5") + "|ref|";
      std::printf("%-44s", bound.c_str());
    }
    std::printf(" %s\n", c.pass ? "ok" : "FAILED");
  }
  for (const OutputCheck& c : rep.outputs) {
    if (!c.pass) {
      std::printf("%s: %s", c.name.c_str(), c.first_bad.c_str());
      if (c.bad > 0) std::printf(" (%lld elements bad)", static_cast<long long>(c.bad));
      std::printf("\n");
    }
  }
}

int run(CompareArgs& a) {
  // ---- arguments that do not need the data ----
  const bool files = !a.q.empty() || !a.k.empty() || !a.v.empty();
  require(!files || (!a.q.empty() && !a.k.empty() && !a.v.empty()), "compare on files needs all of --q, --k and --v");
  require(files || a.dout.empty(), "--dout needs --q, --k and --v (generated inputs get a generated dO)");
  if (files) {
    for (const CLI::Option* o : a.gen_opts) {
      require(o->count() == 0, o->get_name(), " sets the size of generated inputs; it does not apply with --q/--k/--v");
    }
  }
  const bool backward = a.backward || !a.dout.empty();
  require(is_ring(a.impl) || (a.layout_opt->count() == 0 && a.ranks_opt->count() == 0),
          "--layout and --ranks apply only to --impl ring and cuda-ring");
  require(is_cuda(a.impl) || (a.dtype_opt->count() == 0 && a.kernel_opt->count() == 0),
          "--dtype and --kernel apply only to --impl cuda and cuda-ring (the CPU paths run in float32)");
  require(!is_cuda(a.impl) || (a.block_q_opt->count() == 0 && a.block_kv_opt->count() == 0),
          "--block-q and --block-kv apply to the CPU paths; the CUDA kernels choose their own tiles");
  require(!(a.full && a.sample_opt->count() > 0), "--full and --sample-rows exclude each other");
  require(a.sample_rows >= 1, "--sample-rows must be at least 1, got ", a.sample_rows);
  require(a.threads >= 0, "--threads must be 0 (all cores) or more, got ", a.threads);
  require(std::isfinite(a.logit_scale) && a.logit_scale != 0.0, "--logit-scale must be finite and non-zero, got ",
          a.logit_scale);
  std::optional<Perturbation> perturb;
  if (!a.perturb.empty()) perturb = parse_perturbation(a.perturb);
  const Precision pr = parse_precision(a.dtype);
#ifndef RINGATTN_HAVE_CUDA_BUILD
  require(!is_cuda(a.impl), "this ringattn was built without CUDA: install the CUDA toolkit (nvcc) and reconfigure");
#endif
  if (a.seed_opt->count() == 0) a.seed = std::random_device{}() ^ (static_cast<std::uint64_t>(std::random_device{}()) << 32);
  const int threads = a.threads > 0 ? a.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

  // ---- the shape, and everything that can be refused before any heavy work ----
  std::vector<AnyTensor> loaded;
  AttentionShape shape;
  if (files) {
    std::vector<InputFile> inputs = {{"--q", a.q}, {"--k", a.k}, {"--v", a.v}};
    if (!a.dout.empty()) inputs.push_back({"--dout", a.dout});
    loaded = load_inputs(inputs);
    const auto& qs = shape_of(loaded[0]);
    const auto& ks = shape_of(loaded[1]);
    require(qs.size() == 4 && ks.size() == 4, "Q and K must be (B, S, H, D) tensors, got ", shape_string(qs), " and ",
            shape_string(ks));
    shape = {qs[0], qs[1], ks[1], qs[2], ks[2], qs[3]};
    if (!a.dout.empty()) {
      require(shape_of(loaded[3]) == qs, a.dout, " is ", shape_string(shape_of(loaded[3])), " but dO must have Q's shape ",
              shape_string(qs));
    }
  } else {
    shape = {a.batch, a.seq, a.gen_opts[2]->count() ? a.seq_kv : a.seq, a.heads,
             a.gen_opts[4]->count() ? a.heads_kv : a.heads, a.head_dim};
    shape.validate();
  }
  ref::AttentionOptions ao;
  ao.scale = a.scale;
  ao.block_q = a.block_q;
  ao.block_kv = a.block_kv;
  ref::check_options(ao);
  std::optional<RingSchedule> sched;
  if (is_ring(a.impl)) sched = RingSchedule::for_shape(shape, parse_layout(a.layout), a.ranks, a.causal);
#ifdef RINGATTN_HAVE_CUDA_BUILD
  if (is_cuda(a.impl)) require_cuda_device();  // "no CUDA device: <reason>"
#endif

  // ---- the inputs, rounded to the dtype the implementation computes in ----
  Tensor<float> q, k, v, dout;
  if (files) {
    q = to_float(loaded[0], a.q);
    k = to_float(loaded[1], a.k);
    v = to_float(loaded[2], a.v);
    if (!a.dout.empty()) dout = to_float(loaded[3], a.dout);
    loaded.clear();
    (void)ref::check_qkv(q, k, v);
  } else {
    q = generate({shape.batch, shape.seq_q, shape.heads_q, shape.head_dim}, a.seed, 1, a.logit_scale, threads);
    k = generate({shape.batch, shape.seq_kv, shape.heads_kv, shape.head_dim}, a.seed, 2, 1.0, threads);
    v = generate({shape.batch, shape.seq_kv, shape.heads_kv, shape.head_dim}, a.seed, 3, 1.0, threads);
  }
  if (backward && dout.size() == 0) dout = generate(q.shape(), a.seed, 4, 1.0, threads);
  if (pr != Precision::F32) {
    for (Tensor<float>* t : {&q, &k, &v, &dout}) {
      for (float& x : t->values()) x = round_to(pr, x);
    }
  }
  const double scale = static_cast<float>(a.scale.value_or(1.0 / std::sqrt(static_cast<double>(shape.head_dim))));

  std::printf("ringattn compare: %s\n", describe_impl(a, pr).c_str());
  std::printf("problem: %s%s, scale %.9g, %s\n", shape.to_string().c_str(), a.causal ? ", causal" : "", scale,
              backward ? "forward + backward" : "forward");
  if (files) {
    std::printf("inputs: %s, %s, %s%s%s\n", a.q.c_str(), a.k.c_str(), a.v.c_str(), a.dout.empty() ? "" : ", ",
                a.dout.c_str());
    if (backward && a.dout.empty()) std::printf("dO: generated, normal, seed %llu\n", static_cast<unsigned long long>(a.seed));
  } else {
    std::printf("inputs: generated, normal, seed %llu, Q x %g\n", static_cast<unsigned long long>(a.seed), a.logit_scale);
  }
  std::fflush(stdout);

  // ---- the implementation ----
  const auto t0 = std::chrono::steady_clock::now();
  CheckResults got = run_impl(a, q, k, v, backward ? &dout : nullptr);
  const double run_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("implementation: %.3f s (with transfers and conversions)\n", run_s);
  if (perturb) {
    const Perturbation& p = *perturb;
    if (p.what == "o") apply(p, got.out, 1, "O");
    if (p.what == "lse") apply(p, got.lse, 2, "LSE");
    if (p.what == "dq") apply(p, got.dq, 1, "dQ");
    if (p.what == "dk") apply(p, got.dk, 1, "dK");
    if (p.what == "dv") apply(p, got.dv, 1, "dV");
    std::printf("perturbed for testing the checker: %s\n", a.perturb.c_str());
  }

  // ---- the check ----
  const std::int64_t work = shape.batch * shape.heads_q * shape.seq_q * shape.seq_kv * shape.head_dim;
  CheckOptions co;
  co.precision = pr;
  // (naive attention holds an S_q x S_kv score matrix: at most 2^24 entries.)
  co.full = a.full || (a.sample_opt->count() == 0 && work <= kFullLimit && shape.seq_q * shape.seq_kv <= (1 << 24));
  co.sample_rows = a.sample_rows;
  co.seed = a.seed;
  co.threads = threads;
  if (sched) {
    co.q_layout = sched->q_layout();
    co.kv_layout = sched->kv_layout();
  }
  CheckProblem cp{&q, &k, &v, backward ? &dout : nullptr, a.causal, scale};
  const auto t1 = std::chrono::steady_clock::now();
  const CheckReport rep = check_against_float64(cp, got, co);
  const double check_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  if (rep.full) {
    std::printf("reference: float64 on every element (naive attention), %.3f s\n", check_s);
  } else {
    std::printf("reference: float64 on %zu of %lld query rows", rep.q_rows.size(), static_cast<long long>(shape.seq_q));
    if (backward) std::printf(" and %zu of %lld key rows", rep.k_rows.size(), static_cast<long long>(shape.seq_kv));
    std::printf(" (all batches and heads; first, last, %srandom rows), %d threads, %.3f s\n",
                sched ? "segment boundaries, " : "", threads, check_s);
  }
  std::printf("max |scale q.k| over the checked rows: %.4g\n", rep.max_logit);
  if (pr != Precision::F32) {
    std::printf("criterion: max|err| <= f x (max|err| of naive %s attention) + (reference rounded to %s), f = 2 for O "
                "and LSE, 3 for gradients\n",
                std::string(to_string(pr)).c_str(), std::string(to_string(pr)).c_str());
  } else {
    std::printf("criterion: float32, base 1e-5 (O, LSE) / 3e-5 (gradients) x (1 + L/4), L = max |scale q.k|\n");
  }
  print_report(rep, pr);
  if (!rep.full && backward) {
    std::printf("dK/dV rows checked given the implementation's LSE/O, which are checked on the sampled rows\n");
  }
  std::printf("%s\n", rep.pass ? "OK" : "FAILED");
  std::fflush(stdout);
  return rep.pass ? 0 : 1;
}

}  // namespace

Runner add_compare_command(CLI::App& app) {
  auto a = std::make_shared<CompareArgs>();
  CLI::App* cmd = app.add_subcommand(
      "compare",
      "Run one implementation and check it against float64 attention (every element, or sampled rows of long "
      "sequences); ends with OK (exit 0) or FAILED (exit 1)");
  cmd->add_option("--impl", a->impl, "cuda | cuda-ring | ring | blockwise | naive (the last three: CPU, float32)")
      ->required()
      ->check(CLI::IsMember({"cuda", "cuda-ring", "ring", "blockwise", "naive"}));
  cmd->add_option("--q", a->q, "queries .npy (B, S_q, H_q, D); with --k and --v instead of generated inputs");
  cmd->add_option("--k", a->k, "keys .npy (B, S_kv, H_kv, D)");
  cmd->add_option("--v", a->v, "values .npy (B, S_kv, H_kv, D)");
  cmd->add_option("--dout", a->dout, "upstream gradient .npy (Q's shape); implies --backward");
  a->gen_opts.push_back(cmd->add_option("--batch", a->batch, "generated: B")->capture_default_str());
  a->gen_opts.push_back(cmd->add_option("--seq", a->seq, "generated: S_q")->capture_default_str());
  a->gen_opts.push_back(cmd->add_option("--seq-kv", a->seq_kv, "generated: S_kv (default S_q)"));
  a->gen_opts.push_back(cmd->add_option("--heads", a->heads, "generated: H_q")->capture_default_str());
  a->gen_opts.push_back(cmd->add_option("--heads-kv", a->heads_kv, "generated: H_kv (default H_q)"));
  a->gen_opts.push_back(cmd->add_option("--head-dim", a->head_dim, "generated: D")->capture_default_str());
  a->gen_opts.push_back(cmd->add_option("--logit-scale", a->logit_scale,
                                        "generated: multiply Q by this (100: logits ~100x larger)")
                            ->capture_default_str());
  a->seed_opt = cmd->add_option("--seed", a->seed, "seed of the generated values and of the sampled rows (default: fresh, printed)");
  cmd->add_flag("--causal", a->causal, "causal mask (queries aligned to the end of the keys)");
  cmd->add_option("--scale", a->scale, "softmax scale (default 1/sqrt(D))");
  cmd->add_flag("--backward", a->backward, "also dQ, dK, dV (dO generated unless --dout)");
  cmd->add_flag("--full", a->full, "check every element even when the problem is large");
  a->sample_opt = cmd->add_option("--sample-rows", a->sample_rows,
                                  "check this many query rows and key rows (first, last, segment boundaries, random) "
                                  "instead of every element; the default for B*H_q*S_q*S_kv*D > 2^28")
                      ->capture_default_str();
  cmd->add_option("--threads", a->threads, "threads of the float64 check (0: all cores)")->capture_default_str();
  a->layout_opt = cmd->add_option("--layout", a->layout, "ring, cuda-ring: contiguous | striped | zigzag")
                      ->check(CLI::IsMember({"contiguous", "striped", "zigzag"}))
                      ->capture_default_str();
  a->ranks_opt = cmd->add_option("--ranks", a->ranks, "ring, cuda-ring: number of virtual ranks")->capture_default_str();
  a->dtype_opt = cmd->add_option("--dtype", a->dtype, "cuda, cuda-ring: compute dtype fp32 | fp16 | bf16")
                     ->check(CLI::IsMember({"fp32", "fp16", "bf16"}))
                     ->capture_default_str();
  a->kernel_opt = cmd->add_option("--kernel", a->kernel, "cuda, cuda-ring: forward kernel auto | simple | tiled | tensor-core")
                      ->check(CLI::IsMember({"auto", "simple", "tiled", "tensor-core"}))
                      ->capture_default_str();
  a->block_q_opt = cmd->add_option("--block-q", a->block_q, "CPU paths: Br, query rows per tile")->capture_default_str();
  a->block_kv_opt = cmd->add_option("--block-kv", a->block_kv, "CPU paths: Bc, key rows per tile")->capture_default_str();
  cmd->add_option("--perturb", a->perturb,
                  "for testing the checker only: WHAT[:ROW[:AMOUNT]] adds AMOUNT max(1,|x|) (default 1e-3, or nan) to "
                  "the implementation's o|lse|dq|dk|dv at sequence position ROW (default all) before the check")
      ->group("Testing the checker");
  return [cmd, a] { return cmd->parsed() ? run(*a) : -1; };
}

}  // namespace ringattn::cli
