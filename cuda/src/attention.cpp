// The host API of cuda/ (attention.hpp): argument validation, resolved defaults, the choice of the
// kernel version, launch shapes, and dispatch to the launchers of the .cu files. Everything up to
// the launch is plain C++ without a CUDA call, so it is tested on machines without a GPU
// (tests/cuda/cuda_host_test.cpp); launch.hpp lists the steps.
#include <cmath>
#include <cstdint>
#include <string>

#include "launch.hpp"
#include "ringattn/core/error.hpp"
#include "ringattn/cuda/attention.hpp"
#include "ringattn/cuda/device.hpp"

namespace ringattn::cuda {

// ---- names -----------------------------------------------------------------------------------

std::string_view to_string(DType dtype) {
  switch (dtype) {
    case DType::F32: return "fp32";
    case DType::F16: return "fp16";
    case DType::BF16: return "bf16";
  }
  return "unknown";
}

DType parse_dtype(std::string_view name) {
  if (name == "fp32" || name == "float32") return DType::F32;
  if (name == "fp16" || name == "float16") return DType::F16;
  if (name == "bf16" || name == "bfloat16") return DType::BF16;
  fail("unknown dtype '", printable(name, true, 40), "': expected fp32, fp16 or bf16");
}

std::size_t element_bytes(DType dtype) {
  switch (dtype) {
    case DType::F32: return 4;
    case DType::F16:
    case DType::BF16: return 2;
  }
  fail("unknown dtype (", static_cast<int>(dtype), ")");
}

std::string_view to_string(Kernel kernel) {
  switch (kernel) {
    case Kernel::Auto: return "auto";
    case Kernel::Simple: return "simple";
    case Kernel::Tiled: return "tiled";
    case Kernel::TensorCore: return "tensor-core";
  }
  return "unknown";
}

Kernel parse_kernel(std::string_view name) {
  if (name == "auto") return Kernel::Auto;
  if (name == "simple") return Kernel::Simple;
  if (name == "tiled") return Kernel::Tiled;
  if (name == "tensor-core") return Kernel::TensorCore;
  fail("unknown kernel '", printable(name, true, 40), "': expected auto, simple, tiled or tensor-core");
}

namespace detail {
namespace {

constexpr std::int64_t kMaxDim = std::int64_t{1} << 31;

bool aligned(const void* p, std::size_t bytes) { return reinterpret_cast<std::uintptr_t>(p) % bytes == 0; }

bool valid(DType d) { return d == DType::F32 || d == DType::F16 || d == DType::BF16; }

// A device tensor argument: present, and aligned to its element (a misaligned element pointer is
// undefined behaviour on the device and faults as "misaligned address").
void check_pointer(const void* p, std::size_t align, const char* who, const char* name) {
  require(p != nullptr, who, ": ", name, " is a null pointer");
  require(aligned(p, align), who, ": ", name, " is not aligned to its ", align, "-byte elements");
}

// a * b * c * d without overflow, or -1.
std::int64_t product(std::int64_t a, std::int64_t b, std::int64_t c, std::int64_t d) {
  std::int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r) || __builtin_mul_overflow(r, c, &r) || __builtin_mul_overflow(r, d, &r)) {
    return -1;
  }
  return r;
}

void check_shape(const AttentionShape& s, const char* who) {
  s.validate();
  const struct {
    const char* name;
    std::int64_t value;
  } dims[] = {{"B", s.batch}, {"S_q", s.seq_q}, {"S_kv", s.seq_kv}, {"H_q", s.heads_q}, {"H_kv", s.heads_kv},
              {"D", s.head_dim}};
  for (const auto& d : dims) {
    require(d.value < kMaxDim, who, ": ", d.name, " is ", d.value, ": each dimension must be below 2^31");
  }
  // Every element index (and byte offset, times 4) must fit in 64 bits with room to spare.
  const std::int64_t q = product(s.batch, s.seq_q, s.heads_q, s.head_dim);
  const std::int64_t kv = product(s.batch, s.seq_kv, s.heads_kv, s.head_dim);
  require(q >= 0 && kv >= 0 && q < kMaxPosition && kv < kMaxPosition, who, ": ", s.to_string(),
          " is too large: Q or K holds more than 2^62 elements");
}

Positions resolve_positions(const std::optional<Positions>& given, Positions fallback, std::int64_t rows,
                            const char* who, const char* name) {
  const Positions p = given.value_or(fallback);
  require(p.stride >= 1, who, ": ", name, " stride is ", p.stride, ": it must be at least 1");
  std::int64_t span = 0, last = 0;
  const bool overflow =
      __builtin_mul_overflow(rows - 1, p.stride, &span) || __builtin_add_overflow(p.offset, span, &last);
  require(!overflow && p.offset >= -kMaxPosition && last <= kMaxPosition, who, ": ", name, " (offset ", p.offset,
          ", stride ", p.stride, ") puts its ", rows, " rows outside +-2^62");
  return p;
}

float resolve_scale(const std::optional<float>& given, std::int64_t head_dim, const char* who) {
  const float scale = given ? *given : static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
  require(std::isfinite(scale) && scale > 0.0f, who, ": scale must be a finite positive number, got ", scale);
  return scale;
}

// ---- the tensor-core forward: THE one place it is wired in ----------------------------------
// forward_tc.cu (built when cuda/CMakeLists.txt sets RINGATTN_CUDA_TENSOR_CORE) defines
// forward_tensor_core_supports() and forward_tensor_core() (detail.hpp). Until then the version
// is refused with a message that says so, and Auto passes over it.
#if defined(RINGATTN_CUDA_TENSOR_CORE) && RINGATTN_CUDA_TENSOR_CORE
constexpr bool kTensorCoreBuilt = true;
bool tensor_core_supports(const FwdLaunch& a, std::string* why) {
  std::string ignored;  // Auto asks without wanting the reason
  return forward_tensor_core_supports(a, why ? why : &ignored);
}
void tensor_core_launch(const FwdLaunch& a, cudaStream_t stream) { forward_tensor_core(a, stream); }
// The tensor-core backward (backward_tc.cu) is built with the forward, under the same switch.
bool tensor_core_backward_supports(const BwdLaunch& a, std::string* why) {
  std::string ignored;
  return backward_tensor_core_supports(a, why ? why : &ignored);
}
void tensor_core_backward_launch(const BwdLaunch& a, cudaStream_t stream) { backward_tensor_core(a, stream); }
#else
constexpr bool kTensorCoreBuilt = false;
bool tensor_core_supports(const FwdLaunch&, std::string* why) {
  if (why) *why = "the tensor-core kernel is not built yet (forward_tc.cu is not wired into cuda/CMakeLists.txt)";
  return false;
}
void tensor_core_launch(const FwdLaunch&, cudaStream_t) {
  fail("forward: the tensor-core kernel is not built yet (forward_tc.cu is not wired into cuda/CMakeLists.txt)");
}
bool tensor_core_backward_supports(const BwdLaunch&, std::string* why) {
  if (why) *why = "the tensor-core backward is not built (backward_tc.cu is not wired into cuda/CMakeLists.txt)";
  return false;
}
void tensor_core_backward_launch(const BwdLaunch&, cudaStream_t) {
  fail("backward: the tensor-core backward is not built (backward_tc.cu is not wired into cuda/CMakeLists.txt)");
}
#endif

// ---- 1. validation and resolution -------------------------------------------------------------

// What a forward and a backward launch share: sizes, dtype, the causal flag, the resolved global
// positions (queries end-aligned, keys from 0 unless given) and the scale.
template <class Launch>
void resolve_geometry(Launch& a, const AttentionShape& s, DType dtype, const MaskArgs& mask, const char* who) {
  a.batch = s.batch;
  a.seq_q = s.seq_q;
  a.seq_kv = s.seq_kv;
  a.heads_q = s.heads_q;
  a.heads_kv = s.heads_kv;
  a.head_dim = s.head_dim;
  a.dtype = dtype;
  a.causal = mask.causal;
  const Positions qp = resolve_positions(mask.q_pos, {s.causal_query_offset(), 1}, s.seq_q, who, "q_pos");
  const Positions kp = resolve_positions(mask.k_pos, {0, 1}, s.seq_kv, who, "k_pos");
  a.q_offset = qp.offset;
  a.q_stride = qp.stride;
  a.k_offset = kp.offset;
  a.k_stride = kp.stride;
  a.scale = resolve_scale(mask.scale, s.head_dim, who);
}

}  // namespace

FwdLaunch resolve_forward(const ForwardArgs& args, const char* who) {
  require(valid(args.dtype), who, ": dtype is not a known dtype (", static_cast<int>(args.dtype), ")");
  require(valid(args.out_dtype), who, ": out_dtype is not a known dtype (", static_cast<int>(args.out_dtype), ")");
  require(args.out_dtype == DType::F32 || args.out_dtype == args.dtype, who, ": out_dtype ", to_string(args.out_dtype),
          " does not go with ", to_string(args.dtype), " inputs: O is written in fp32 or in the input dtype");
  const AttentionShape& s = args.shape;
  check_shape(s, who);
  const std::size_t in = element_bytes(args.dtype);
  check_pointer(args.q, in, who, "Q");
  check_pointer(args.k, in, who, "K");
  check_pointer(args.v, in, who, "V");
  check_pointer(args.out, element_bytes(args.out_dtype), who, "O (out)");
  if (args.lse) check_pointer(args.lse, sizeof(float), who, "LSE");

  FwdLaunch a;
  a.q = args.q;
  a.k = args.k;
  a.v = args.v;
  a.out = args.out;
  a.lse = args.lse;
  a.out_dtype = args.out_dtype;
  resolve_geometry(a, s, args.dtype, args.mask, who);
  return a;
}

BwdLaunch resolve_backward(const BackwardArgs& args) {
  const char* who = "backward";
  require(valid(args.dtype), who, ": dtype is not a known dtype (", static_cast<int>(args.dtype), ")");
  const AttentionShape& s = args.shape;
  check_shape(s, who);
  const std::size_t in = element_bytes(args.dtype);
  check_pointer(args.q, in, who, "Q");
  check_pointer(args.k, in, who, "K");
  check_pointer(args.v, in, who, "V");
  if (args.compute_delta) check_pointer(args.out, in, who, "O (out, needed to compute D = rowsum(dO * O))");
  check_pointer(args.dout, in, who, "dO (dout)");
  check_pointer(args.lse, sizeof(float), who, "LSE");
  check_pointer(args.delta, sizeof(float), who, "delta (D = rowsum(dO * O))");
  check_pointer(args.dq, sizeof(float), who, "dQ");
  check_pointer(args.dk, sizeof(float), who, "dK");
  check_pointer(args.dv, sizeof(float), who, "dV");

  BwdLaunch a;
  a.q = args.q;
  a.k = args.k;
  a.v = args.v;
  a.out = args.out;
  a.dout = args.dout;
  a.lse = args.lse;
  a.delta = args.delta;
  a.compute_delta = args.compute_delta;
  a.dq = args.dq;
  a.dk = args.dk;
  a.dv = args.dv;
  a.accumulate = args.accumulate;
  resolve_geometry(a, s, args.dtype, args.mask, who);
  return a;
}

void check_merge(const float* out_acc, const float* lse_acc, const float* out_part, const float* lse_part,
                 std::int64_t batch, std::int64_t seq, std::int64_t heads, std::int64_t head_dim) {
  const char* who = "merge";
  const struct {
    const char* name;
    std::int64_t value;
  } dims[] = {{"batch", batch}, {"seq", seq}, {"heads", heads}, {"head_dim", head_dim}};
  for (const auto& d : dims) {
    require(d.value >= 1, who, ": ", d.name, " is ", d.value, ": every dimension must be at least 1");
    require(d.value < kMaxDim, who, ": ", d.name, " is ", d.value, ": each dimension must be below 2^31");
  }
  const std::int64_t n = product(batch, seq, heads, head_dim);
  require(n >= 0 && n < kMaxPosition, who, ": the outputs hold more than 2^62 elements");
  check_pointer(out_acc, sizeof(float), who, "out_acc");
  check_pointer(lse_acc, sizeof(float), who, "lse_acc");
  check_pointer(out_part, sizeof(float), who, "out_part");
  check_pointer(lse_part, sizeof(float), who, "lse_part");
}

void check_decode(const FwdLaunch& a, int splits, const void* workspace) {
  require(splits >= 1, "decode: splits must be at least 1, got ", splits);
  require(a.head_dim <= kMaxHeadDim, "decode: the decode kernel takes D <= ", kMaxHeadDim, ", got D=", a.head_dim);
  require(workspace != nullptr, "decode: workspace is a null pointer (it needs decode_workspace_bytes() bytes)");
  require(aligned(workspace, 16), "decode: workspace must be 16-byte aligned (cudaMalloc gives 256)");
}

// ---- 2. kernel choice -------------------------------------------------------------------------

bool tensor_core_built() { return kTensorCoreBuilt; }

bool kernel_supports(const FwdLaunch& a, Kernel kernel, std::string* why) {
  auto no = [why](const std::string& reason) {
    if (why) *why = reason;
    return false;
  };
  const std::string d = std::to_string(a.head_dim);
  switch (kernel) {
    case Kernel::Simple:
      if (a.head_dim > kMaxHeadDim) return no("the simple kernel takes D <= 256, got D=" + d);
      return true;
    case Kernel::Tiled:
      if (a.head_dim > kMaxHeadDim || a.head_dim % 8 != 0) {
        return no("the tiled kernel takes D a multiple of 8 and at most 256 (it loads K and V 8 elements at a "
                  "time), got D=" + d);
      }
      if (!aligned(a.k, 16) || !aligned(a.v, 16)) {
        return no("the tiled kernel loads K and V 16 bytes at a time: K and V must be 16-byte aligned");
      }
      return true;
    case Kernel::TensorCore: return tensor_core_supports(a, why);
    case Kernel::Auto:
      for (Kernel k : {Kernel::TensorCore, Kernel::Tiled, Kernel::Simple}) {
        if (kernel_supports(a, k, nullptr)) return true;
      }
      return no("no kernel runs D=" + d + ": the simple and tiled kernels take D <= 256");
  }
  return no("unknown kernel (" + std::to_string(static_cast<int>(kernel)) + ")");
}

Kernel choose_forward_kernel(const FwdLaunch& a, Kernel requested) {
  std::string why;
  if (requested != Kernel::Auto) {
    require(kernel_supports(a, requested, &why), "forward: ", why);
    return requested;
  }
  for (Kernel k : {Kernel::TensorCore, Kernel::Tiled, Kernel::Simple}) {
    if (kernel_supports(a, k, nullptr)) return k;
  }
  (void)kernel_supports(a, Kernel::Auto, &why);
  fail("forward: ", why);
}

bool backward_kernel_supports(const BwdLaunch& a, Kernel kernel, std::string* why) {
  auto no = [why](const std::string& reason) {
    if (why) *why = reason;
    return false;
  };
  const std::string d = std::to_string(a.head_dim);
  switch (kernel) {
    case Kernel::Simple:
      if (a.head_dim > kMaxHeadDim) return no("the simple backward takes D <= 256, got D=" + d);
      return true;
    case Kernel::Tiled:
      return no("the tiled kernel has no backward; the simple and tensor-core ones do (Kernel::Simple, "
                "Kernel::TensorCore or Kernel::Auto)");
    case Kernel::TensorCore: return tensor_core_backward_supports(a, why);
    case Kernel::Auto:
      for (Kernel k : {Kernel::TensorCore, Kernel::Simple}) {
        if (backward_kernel_supports(a, k, nullptr)) return true;
      }
      return no("no backward kernel runs D=" + d + ": the simple backward takes D <= 256");
  }
  return no("unknown kernel (" + std::to_string(static_cast<int>(kernel)) + ")");
}

Kernel choose_backward_kernel(const BwdLaunch& a, Kernel requested) {
  std::string why;
  if (requested != Kernel::Auto) {
    require(backward_kernel_supports(a, requested, &why), "backward: ", why);
    return requested;
  }
  for (Kernel k : {Kernel::TensorCore, Kernel::Simple}) {
    if (backward_kernel_supports(a, k, nullptr)) return k;
  }
  (void)backward_kernel_supports(a, Kernel::Auto, &why);
  fail("backward: ", why);
}

// ---- 3. launch shapes -------------------------------------------------------------------------

int head_dim_bucket(std::int64_t head_dim) {
  for (int b : {32, 64, 128, 256}) {
    if (head_dim <= b) return b;
  }
  return 0;
}

Launch1D row_launch(std::int64_t rows, const char* who) {
  const std::int64_t blocks = ceil_div(rows, kRowThreads);
  require(rows >= 1 && blocks <= kMaxGridX, who, ": ", rows, " rows are too many for one launch");
  return {blocks, kRowThreads};
}

Launch1D warp_row_launch(std::int64_t rows, const char* who) {
  const std::int64_t blocks = ceil_div(rows, kWarpRowsPerBlock);
  require(rows >= 1 && blocks <= kMaxGridX, who, ": ", rows, " rows are too many for one launch");
  return {blocks, 32 * kWarpRowsPerBlock};
}

TiledLaunch tiled_launch(const FwdLaunch& a) {
  const int bucket = head_dim_bucket(a.head_dim);
  require(bucket > 0, "forward: the tiled kernel takes D <= 256, got D=", a.head_dim);
  TiledLaunch t;
  t.tile = tiled_tile(bucket);
  t.q_tiles = ceil_div(a.seq_q, t.tile.br);
  t.blocks = product(t.q_tiles, a.heads_q, a.batch, 1);
  require(t.blocks >= 1 && t.blocks <= kMaxGridX, "forward: ", t.q_tiles, " query tiles x ", a.heads_q, " heads x ",
          a.batch, " batch are too many blocks for one launch");
  t.smem_bytes = 2 * static_cast<std::size_t>(t.tile.bc) * static_cast<std::size_t>(t.tile.max_d) * sizeof(float);
  return t;
}

DecodeLayout decode_layout(const AttentionShape& shape, std::int64_t splits) {
  check_shape(shape, "decode");
  require(splits >= 1 && splits < kMaxDim, "decode: splits must be at least 1 and below 2^31, got ", splits);
  DecodeLayout l;
  l.splits = splits;
  l.partial_rows = product(splits, shape.batch, shape.heads_q, shape.seq_q);
  const std::int64_t o_elems = product(l.partial_rows, shape.head_dim, 1, 1);
  require(l.partial_rows >= 0 && o_elems >= 0 && o_elems < kMaxPosition / 4, "decode: ", splits, " splits of ",
          shape.to_string(), " need a workspace larger than 2^62 bytes");
  const auto o_bytes = static_cast<std::size_t>(o_elems) * sizeof(float);
  l.lse_offset = (o_bytes + 255) / 256 * 256;  // keep the LSE partials 256-byte aligned, like cudaMalloc
  l.bytes = l.lse_offset + static_cast<std::size_t>(l.partial_rows) * sizeof(float);
  const std::int64_t blocks = product(splits, shape.heads_q, shape.batch, 1);
  require(blocks >= 1 && blocks <= kMaxGridX, "decode: ", splits, " splits x ", shape.heads_q, " heads x ",
          shape.batch, " batch are too many blocks for one launch");
  l.partial = {blocks, 32 * kDecodeWarps};
  l.combine = warp_row_launch(product(shape.batch, shape.heads_q, shape.seq_q, 1), "decode");
  return l;
}

}  // namespace detail

// ---- the API ---------------------------------------------------------------------------------

bool supports(const ForwardArgs& args, Kernel kernel, std::string* why) {
  detail::FwdLaunch a;
  try {
    a = detail::resolve_forward(args);
  } catch (const Error& e) {
    if (why) *why = e.what();
    return false;
  }
  return detail::kernel_supports(a, kernel, why);
}

void forward(const ForwardArgs& args, Kernel kernel, ringattn_cuda_stream_t stream) {
  const detail::FwdLaunch a = detail::resolve_forward(args);
  switch (detail::choose_forward_kernel(a, kernel)) {
    case Kernel::Simple: detail::launch_forward_simple(a, stream); return;
    case Kernel::Tiled: detail::launch_forward_tiled(a, stream); return;
    case Kernel::TensorCore: detail::tensor_core_launch(a, stream); return;
    case Kernel::Auto: break;  // choose_forward_kernel never returns Auto
  }
  fail("forward: no kernel chosen");
}

void backward(const BackwardArgs& args, Kernel kernel, ringattn_cuda_stream_t stream) {
  const detail::BwdLaunch a = detail::resolve_backward(args);
  switch (detail::choose_backward_kernel(a, kernel)) {
    case Kernel::Simple: detail::launch_backward_simple(a, stream); return;
    case Kernel::TensorCore: detail::tensor_core_backward_launch(a, stream); return;
    case Kernel::Tiled:
    case Kernel::Auto: break;  // choose_backward_kernel returns neither
  }
  fail("backward: no kernel chosen");
}

void merge(float* out_acc, float* lse_acc, const float* out_part, const float* lse_part, std::int64_t batch,
           std::int64_t seq, std::int64_t heads, std::int64_t head_dim, ringattn_cuda_stream_t stream) {
  detail::check_merge(out_acc, lse_acc, out_part, lse_part, batch, seq, heads, head_dim);
  detail::launch_merge(out_acc, lse_acc, out_part, lse_part, batch, seq, heads, head_dim, stream);
}

void decode(const ForwardArgs& args, int splits, void* workspace, ringattn_cuda_stream_t stream) {
  const detail::FwdLaunch a = detail::resolve_forward(args, "decode");
  detail::check_decode(a, splits, workspace);
  const detail::DecodeLayout layout = detail::decode_layout(args.shape, splits);
  detail::launch_decode(a, layout, workspace, stream);
}

std::size_t decode_workspace_bytes(const AttentionShape& shape, int splits) {
  require(splits >= 1, "decode: splits must be at least 1, got ", splits);
  return detail::decode_layout(shape, splits).bytes;
}

int decode_default_splits(const AttentionShape& shape, int multiprocessors) {
  shape.validate();
  require(multiprocessors >= 1, "decode: multiprocessors must be at least 1, got ", multiprocessors);
  // One (b, h, split) block per SM at least, so a single query row still fills the device: with
  // B * H_q blocks per split, ceil(SMs / (B * H_q)) splits. But a split shorter than ~256 keys
  // costs more in its combine (D + 1 floats written and read back per row) and launch overhead
  // than it saves, so at most S_kv / 256 splits; and at least 1.
  const std::int64_t rows = detail::product(shape.batch, shape.heads_q, 1, 1);  // -1 on overflow
  const std::int64_t fill = rows < 0 ? 1 : detail::ceil_div(multiprocessors, rows);
  const std::int64_t by_length = detail::max64(1, shape.seq_kv / 256);
  return static_cast<int>(detail::max64(1, detail::min64(fill, by_length)));
}

}  // namespace ringattn::cuda
