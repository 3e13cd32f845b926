// `--impl cuda`: uploads the .npy inputs converted to the compute dtype, runs cuda::forward /
// cuda::backward / cuda::decode on the default stream, and brings the results back in the
// inputs' dtype. Only built with RINGATTN_WITH_CUDA.
#include "cuda_cmd.hpp"

#include <climits>
#include <cstdint>
#include <vector>

#include "ringattn/core/error.hpp"
#include "ringattn/cuda/attention.hpp"
#include "cuda_transfer.hpp"
#include "ringattn/cuda/device.hpp"

namespace ringattn::cli {
namespace {

cuda::MaskArgs mask_of(const CudaOptions& o) {
  cuda::MaskArgs m;
  m.causal = o.causal;
  if (o.scale) m.scale = static_cast<float>(*o.scale);
  return m;
}

// Q, K, V uploaded in the compute dtype, float32 O and LSE on the device (the file gets the most
// precise result the kernel has), and the forward's arguments over them.
struct ForwardBuffers {
  cuda::DeviceBuffer q, k, v, out, lse;
  cuda::ForwardArgs args;

  template <class T>
  ForwardBuffers(const Tensor<T>& tq, const Tensor<T>& tk, const Tensor<T>& tv, const AttentionShape& shape,
                 cuda::DType dtype, const CudaOptions& o)
      : q(upload_tensor(tq, dtype)),
        k(upload_tensor(tk, dtype)),
        v(upload_tensor(tv, dtype)),
        out(static_cast<std::size_t>(tq.size()) * sizeof(float)),
        lse(static_cast<std::size_t>(shape.lse_elements()) * sizeof(float)) {
    args.shape = shape;
    args.dtype = dtype;
    args.q = q.data();
    args.k = k.data();
    args.v = v.data();
    args.out = out.data();
    args.out_dtype = cuda::DType::F32;
    args.lse = lse.as<float>();
    args.mask = mask_of(o);
  }
};

}  // namespace

void require_cuda_device() {
  std::string why;
  if (cuda::device_count(&why) == 0) fail("no CUDA device: ", why);
}

template <class T>
CudaAttentionResult<T> cuda_attention(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                                      const Tensor<T>* dout, const CudaOptions& o) {
  const cuda::DType dtype = cuda::parse_dtype(o.dtype);
  const cuda::Kernel kernel = cuda::parse_kernel(o.kernel);
  const AttentionShape shape = ref::check_qkv(q, k, v);
  const std::vector<std::int64_t> lse_shape = {shape.batch, shape.heads_q, shape.seq_q};

  const ForwardBuffers fb(q, k, v, shape, dtype, o);
  cuda::forward(fb.args, kernel);

  CudaAttentionResult<T> r;
  r.fwd.out = download_f32<T>(fb.out, q.shape());  // synchronizes: a kernel fault surfaces here
  r.fwd.lse = download_f32<T>(fb.lse, lse_shape);
  if (!dout) return r;

  // The backward reads O in the input dtype, as training keeps it: the float32 O rounded on the
  // host exactly as the kernel's store would round it.
  const std::vector<float> o32 = cuda::download(cuda::DType::F32, fb.out.data(), static_cast<std::size_t>(q.size()));
  const cuda::DeviceBuffer d_o = cuda::upload(dtype, o32);
  const cuda::DeviceBuffer d_do = upload_tensor(*dout, dtype);
  const cuda::DeviceBuffer delta(static_cast<std::size_t>(shape.lse_elements()) * sizeof(float));
  const cuda::DeviceBuffer gq(static_cast<std::size_t>(q.size()) * sizeof(float));
  const cuda::DeviceBuffer gk(static_cast<std::size_t>(k.size()) * sizeof(float));
  const cuda::DeviceBuffer gv(static_cast<std::size_t>(v.size()) * sizeof(float));
  cuda::BackwardArgs b;
  b.shape = shape;
  b.dtype = dtype;
  b.q = fb.q.data();
  b.k = fb.k.data();
  b.v = fb.v.data();
  b.out = d_o.data();
  b.dout = d_do.data();
  b.lse = fb.lse.as<float>();
  b.delta = delta.as<float>();
  b.dq = gq.as<float>();
  b.dk = gk.as<float>();
  b.dv = gv.as<float>();
  b.mask = mask_of(o);
  cuda::backward(b);
  r.grads = ref::Gradients<T>{download_f32<T>(gq, q.shape()), download_f32<T>(gk, k.shape()), download_f32<T>(gv, v.shape())};
  return r;
}

template <class T>
ref::ForwardResult<T> cuda_decode(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, std::int64_t splits,
                                  const CudaOptions& o) {
  const cuda::DType dtype = cuda::parse_dtype(o.dtype);
  const AttentionShape shape = ref::check_qkv(q, k, v);
  require(splits >= 1 && splits <= INT_MAX, "--splits must be between 1 and ", INT_MAX, ", got ", splits);
  const int n = static_cast<int>(splits);
  const cuda::DeviceBuffer ws(cuda::decode_workspace_bytes(shape, n));
  const ForwardBuffers fb(q, k, v, shape, dtype, o);
  cuda::decode(fb.args, n, ws.data());
  return {download_f32<T>(fb.out, q.shape()), download_f32<T>(fb.lse, {shape.batch, shape.heads_q, shape.seq_q})};
}

#define INSTANTIATE(T)                                                                                           \
  template CudaAttentionResult<T> cuda_attention<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&,       \
                                                    const Tensor<T>*, const CudaOptions&);                      \
  template ref::ForwardResult<T> cuda_decode<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&, std::int64_t, \
                                                const CudaOptions&);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace ringattn::cli
