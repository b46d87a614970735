// im2col's adjoint for Omniglot's strided 3x3 convolutions, in one pass:
//
//   col2im    dxp (N, Hp, Wp, C) = the taps of dcols (N, Ho, Wo, 3, 3, C) added back where the
//             forward read them: dxp[n, s ho + kh, s wo + kw, :] += dcols[n, ho, wo, kh, kw, :]
//
// PyTorch's path (KernelPrimitives._col2im) zeroes dxp and adds the nine taps one strided view at
// a time, (kh, kw) in row-major order: nine passes over dxp, each a few microseconds of overhead
// and a strided walk. Here every element of dxp starts at +0.0 and adds its contributions in
// that same tap order, so the float additions, and the result, are bitwise PyTorch's.

#include "fused.h"

namespace reptorch_fused {
namespace {

void col2im(const at::Tensor& dcols, int64_t stride, at::Tensor dxp) {
  expect(dcols.dim() == 6 && dcols.is_contiguous() && dcols.size(3) == 3 && dcols.size(4) == 3,
         "dcols must be a contiguous (N, Ho, Wo, 3, 3, C)");
  expect(dxp.dim() == 4 && dxp.is_contiguous() && dxp.device().is_cpu(),
         "dxp must be a contiguous CPU (N, Hp, Wp, C)");
  expect(dxp.scalar_type() == dcols.scalar_type(), "dxp must have dcols' dtype");
  expect(stride >= 1, "stride must be positive");
  const int64_t n = dcols.size(0), ho = dcols.size(1), wo = dcols.size(2), c = dcols.size(5);
  const int64_t hp = dxp.size(1), wp = dxp.size(2);
  expect(dxp.size(0) == n && dxp.size(3) == c, "dxp and dcols must hold the same images and C");
  expect(stride * (ho - 1) + 3 <= hp && stride * (wo - 1) + 3 <= wp,
         "dxp must hold every tap of dcols");
  AT_DISPATCH_FLOATING_TYPES(dcols.scalar_type(), "col2im", [&] {
    const scalar_t* src = dcols.data_ptr<scalar_t>();
    scalar_t* dst = dxp.data_ptr<scalar_t>();
    for (int64_t b = 0; b < n; ++b) {
      for (int64_t y = 0; y < hp; ++y) {
        for (int64_t x = 0; x < wp; ++x) {
          scalar_t* __restrict out = dst + ((b * hp + y) * wp + x) * c;
          for (int64_t q = 0; q < c; ++q) out[q] = scalar_t(0);
          for (int64_t kh = 0; kh < 3; ++kh) {  // the taps in PyTorch's order
            const int64_t dy = y - kh;
            if (dy < 0 || dy % stride != 0 || dy / stride >= ho) continue;
            for (int64_t kw = 0; kw < 3; ++kw) {
              const int64_t dx = x - kw;
              if (dx < 0 || dx % stride != 0 || dx / stride >= wo) continue;
              const scalar_t* __restrict in =
                  src + ((((b * ho + dy / stride) * wo + dx / stride) * 3 + kh) * 3 + kw) * c;
              for (int64_t q = 0; q < c; ++q) out[q] += in[q];
            }
          }
        }
      }
    }
  });
}

}  // namespace
}  // namespace reptorch_fused

TORCH_LIBRARY_FRAGMENT(reptorch_fused, m) {
  m.def("col2im(Tensor dcols, int stride, Tensor(a!) dxp) -> ()", &reptorch_fused::col2im);
}
