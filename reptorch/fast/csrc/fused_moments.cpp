// BatchNorm's moments over a block's pre-activations z (T, M, C), in double (fused.h):
//
//   channel_sums    sum_m z                              (its mean)
//   centre_squares  z -= mean in place; sum_m z^2        (its variance, two-pass)
//
// This file defines the op library; fused_pooled.cpp and fused_plain.cpp add to it.

#include "fused.h"

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

}  // namespace
}  // namespace reptorch_fused

TORCH_LIBRARY(reptorch_fused, m) {
  m.def("channel_sums(Tensor z) -> Tensor", &reptorch_fused::channel_sums);
  m.def("centre_squares(Tensor(a!) z, Tensor mean) -> Tensor", &reptorch_fused::centre_squares);
}
