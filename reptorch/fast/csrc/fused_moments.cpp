// BatchNorm's moments over a block's pre-activations z (T, M, C), in double (fused.h), and its
// per-channel coefficients from them, each one op where PyTorch takes four to seven tiny ones:
//
//   channel_sums      sum_m z                            (its mean)
//   centre_squares    z -= mean in place; sum_m z^2      (its variance, two-pass)
//   bn_scale          r = rsqrt(var + eps), scale = gamma r
//   bn_coefficients   dgamma = r sum gy z, ca = gamma r, cb = -ca r dgamma / M,
//                     cc = -ca sum gy / M                (the backward's: dz = ca gy + cb z + cc)
//
// The coefficients are the float operations of the kernel's PyTorch expressions, in their order
// (`KernelPrimitives._bn_scale`, `_bn_coefficients`): bitwise the same.
// This file defines the op library; fused_pooled.cpp and fused_plain.cpp add to it.

#include "fused.h"

#include <tuple>

namespace reptorch_fused {
namespace {

at::Tensor channel_sums(const at::Tensor& z) {
  check_z(z);
  const int64_t t = z.size(0), m = z.size(1), c = z.size(2);
  at::Tensor out = at::empty({t, 1, c}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "channel_sums", [&] {
    std::vector<double> acc(c);
    for (int64_t j = 0; j < t; ++j) {
      const scalar_t* zp = z.data_ptr<scalar_t>() + j * m * c;
      std::fill(acc.begin(), acc.end(), 0.0);
      double* a = acc.data();
      for (int64_t i = 0; i < m; ++i, zp += c) {
        for (int64_t k = 0; k < c; ++k) a[k] += zp[k];
      }
      scalar_t* o = out.data_ptr<scalar_t>() + j * c;
      for (int64_t k = 0; k < c; ++k) o[k] = static_cast<scalar_t>(a[k]);
    }
  });
  return out;
}

at::Tensor centre_squares(at::Tensor z, const at::Tensor& mean) {
  check_z(z);
  const int64_t t = z.size(0), m = z.size(1), c = z.size(2);
  const at::Tensor mu = mean.contiguous();
  expect(mu.numel() == t * c && mu.scalar_type() == z.scalar_type(), "mean must be (T, 1, C) of z's dtype");
  at::Tensor out = at::empty({t, 1, c}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "centre_squares", [&] {
    std::vector<double> acc(c);
    for (int64_t j = 0; j < t; ++j) {
      scalar_t* zp = z.data_ptr<scalar_t>() + j * m * c;
      const scalar_t* u = mu.data_ptr<scalar_t>() + j * c;
      std::fill(acc.begin(), acc.end(), 0.0);
      double* a = acc.data();
      for (int64_t i = 0; i < m; ++i, zp += c) {
        for (int64_t k = 0; k < c; ++k) {
          const scalar_t d = zp[k] - u[k];
          zp[k] = d;
          a[k] += static_cast<double>(d) * d;
        }
      }
      scalar_t* o = out.data_ptr<scalar_t>() + j * c;
      for (int64_t k = 0; k < c; ++k) o[k] = static_cast<scalar_t>(a[k]);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> bn_scale(const at::Tensor& squares, const at::Tensor& gamma,
                                             int64_t m, double eps) {
  const at::Tensor sq = squares.contiguous(), g = gamma.contiguous();
  expect(sq.numel() == g.numel() && sq.scalar_type() == g.scalar_type(),
         "squares and gamma must be (T, 1, C) and (T, C) of one dtype");
  at::Tensor r = at::empty_like(sq), scale = at::empty_like(sq);
  AT_DISPATCH_FLOATING_TYPES(sq.scalar_type(), "bn_scale", [&] {
    const scalar_t count = static_cast<scalar_t>(m), e = static_cast<scalar_t>(eps);
    const scalar_t* q = sq.data_ptr<scalar_t>();
    const scalar_t* gv = g.data_ptr<scalar_t>();
    scalar_t* rv = r.data_ptr<scalar_t>();
    scalar_t* sv = scale.data_ptr<scalar_t>();
    for (int64_t i = 0; i < sq.numel(); ++i) {
      const scalar_t var = q[i] / count + e;  // div_(M).add_(eps)
      rv[i] = scalar_t(1) / std::sqrt(var);   // rsqrt_, as PyTorch's: 1 / sqrt
      sv[i] = gv[i] * rv[i];
    }
  });
  return {r, scale};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_coefficients(
    const at::Tensor& total, const at::Tensor& r, const at::Tensor& gamma, int64_t m) {
  const at::Tensor tt = total.contiguous(), rr = r.contiguous(), g = gamma.contiguous();
  const int64_t t = tt.size(0), c = tt.size(2);
  expect(tt.dim() == 3 && tt.size(1) == 2 && rr.numel() == t * c && g.numel() == t * c,
         "total must be (T, 2, C), r and gamma (T, 1, C)");
  at::Tensor dgamma = at::empty_like(rr), ca = at::empty_like(rr), cb = at::empty_like(rr),
             cc = at::empty_like(rr);
  AT_DISPATCH_FLOATING_TYPES(tt.scalar_type(), "bn_coefficients", [&] {
    const scalar_t f = static_cast<scalar_t>(-1.0 / static_cast<double>(m));
    const scalar_t* tv = tt.data_ptr<scalar_t>();
    const scalar_t* rv = rr.data_ptr<scalar_t>();
    const scalar_t* gv = g.data_ptr<scalar_t>();
    scalar_t* dg = dgamma.data_ptr<scalar_t>();
    scalar_t* a = ca.data_ptr<scalar_t>();
    scalar_t* b = cb.data_ptr<scalar_t>();
    scalar_t* k = cc.data_ptr<scalar_t>();
    for (int64_t j = 0; j < t; ++j) {
      const scalar_t* dbeta = tv + 2 * j * c;
      const scalar_t* sgz = dbeta + c;
      for (int64_t q = 0; q < c; ++q) {
        const int64_t i = j * c + q;
        dg[i] = rv[i] * sgz[q];               // r * sgz
        a[i] = gv[i] * rv[i];                 // gamma * r
        b[i] = ((a[i] * rv[i]) * dg[i]) * f;  // ca * r * dgamma * (-1 / M)
        k[i] = (a[i] * dbeta[q]) * f;         // ca * dbeta * (-1 / M)
      }
    }
  });
  return {dgamma, ca, cb, cc};
}

}  // namespace
}  // namespace reptorch_fused

TORCH_LIBRARY(reptorch_fused, m) {
  m.def("channel_sums(Tensor z) -> Tensor", &reptorch_fused::channel_sums);
  m.def("centre_squares(Tensor(a!) z, Tensor mean) -> Tensor", &reptorch_fused::centre_squares);
  m.def("bn_scale(Tensor squares, Tensor gamma, int m, float eps) -> (Tensor, Tensor)",
        &reptorch_fused::bn_scale);
  m.def("bn_coefficients(Tensor total, Tensor r, Tensor gamma, int m) -> "
        "(Tensor, Tensor, Tensor, Tensor)", &reptorch_fused::bn_coefficients);
}
