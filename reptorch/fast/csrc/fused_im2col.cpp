// im2col and its adjoint for Omniglot's strided 3x3 convolutions, one pass each:
//
//   im2col    cols (N, Ho, Wo, 3, 3, C) = the 3x3 patch of every output position of the padded
//             input ap (N, Hp, Wp, C): cols[n, ho, wo, kh, kw, :] = ap[n, s ho + kh, s wo + kw, :]
//   col2im    dxp (N, Hp, Wp, C) = the taps of dcols (N, Ho, Wo, 3, 3, C) added back where the
//             forward read them: dxp[n, s ho + kh, s wo + kw, :] += dcols[n, ho, wo, kh, kw, :]
//
// im2col is a copy (PyTorch's strided copy walks the first layer's single channel one element
// at a time). PyTorch's col2im (KernelPrimitives._col2im) zeroes dxp and adds the nine taps one
// strided view at a time, (kh, kw) in row-major order: nine passes over dxp, each a few
// microseconds of overhead and a strided walk. Here every element of dxp starts at +0.0 and adds
// its contributions in that same tap order, so the float additions, and the result, are bitwise
// PyTorch's.

#include "fused.h"

namespace reptorch_fused {
namespace {

// A padded (N, Hp, Wp, C) image buffer and its columns (N, Ho, Wo, 3, 3, C), both contiguous on
// the CPU with one dtype, every 3x3 window of stride `stride` inside the buffer.
void check_columns(const at::Tensor& padded, const at::Tensor& columns, int64_t stride,
                   const std::string& p, const std::string& q) {
  expect(padded.dim() == 4 && padded.is_contiguous() && padded.device().is_cpu(),
         p + " must be a contiguous CPU (N, Hp, Wp, C)");
  expect(columns.dim() == 6 && columns.is_contiguous() && columns.size(3) == 3 &&
             columns.size(4) == 3,
         q + " must be a contiguous (N, Ho, Wo, 3, 3, C)");
  expect(columns.scalar_type() == padded.scalar_type(), q + " must have " + p + "'s dtype");
  expect(stride >= 1, "stride must be positive");
  expect(padded.size(0) == columns.size(0) && padded.size(3) == columns.size(5),
         p + " and " + q + " must hold the same images and C");
  expect(stride * (columns.size(1) - 1) + 3 <= padded.size(1) &&
             stride * (columns.size(2) - 1) + 3 <= padded.size(2),
         p + " must hold every window of " + q);
}

void im2col(const at::Tensor& ap, int64_t stride, at::Tensor cols) {
  check_columns(ap, cols, stride, "ap", "cols");
  const int64_t n = cols.size(0), ho = cols.size(1), wo = cols.size(2), c = cols.size(5);
  const int64_t hp = ap.size(1), wp = ap.size(2);
  AT_DISPATCH_FLOATING_TYPES(ap.scalar_type(), "im2col", [&] {
    const scalar_t* src = ap.data_ptr<scalar_t>();
    scalar_t* __restrict out = cols.data_ptr<scalar_t>();
    for (int64_t b = 0; b < n; ++b) {
      for (int64_t oy = 0; oy < ho; ++oy) {
        for (int64_t ox = 0; ox < wo; ++ox) {
          for (int64_t kh = 0; kh < 3; ++kh) {
            const scalar_t* __restrict row =
                src + ((b * hp + stride * oy + kh) * wp + stride * ox) * c;
            for (int64_t q = 0; q < 3 * c; ++q) out[q] = row[q];  // (kw, c): contiguous in ap
            out += 3 * c;
          }
        }
      }
    }
  });
}

void col2im(const at::Tensor& dcols, int64_t stride, at::Tensor dxp) {
  check_columns(dxp, dcols, stride, "dxp", "dcols");
  const int64_t n = dcols.size(0), ho = dcols.size(1), wo = dcols.size(2), c = dcols.size(5);
  const int64_t hp = dxp.size(1), wp = dxp.size(2);
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
  m.def("im2col(Tensor ap, int stride, Tensor(a!) cols) -> ()", &reptorch_fused::im2col);
  m.def("col2im(Tensor dcols, int stride, Tensor(a!) dxp) -> ()", &reptorch_fused::col2im);
}
