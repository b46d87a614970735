// The passes of a plain block (conv -> BatchNorm -> ReLU, Omniglot's), one loop over its
// activations each (fused.h says how they round):
//
//   bn_relu   y = relu(beta + z scale), written where the next layer reads it (a view into its
//             padded input)
//   bn_sums   gy = dL/dy [y > 0] (the ReLU backward); sum_m gy and sum_m gy z
//   bn_dz     dz = cc + z cb + gy ca                     (BatchNorm's backward)
//
// PyTorch's ops take five to seven small ops per pass, each a few microseconds on these
// L2-resident activations, and its ReLU backward runs its slow strided path on the padded
// views. y and g are (N, H, W, C) views whose rows (W x C) are contiguous, N = T x images.

#include "fused.h"

namespace reptorch_fused {
namespace {

// The rows of a (N, H, W, C) view: visit(image, row pointer offset, z row index / (W C)).
template <typename Visit>
void rows(const at::Tensor& view, int64_t per, Visit&& visit) {
  const int64_t n = view.size(0), h = view.size(1);
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t r = 0; r < h; ++r) visit(b / per, b * view.stride(0) + r * view.stride(1), b * h + r);
  }
}

int64_t check_plain(const at::Tensor& z, const at::Tensor& view, const std::string& name) {
  check_z(z);
  expect(view.dim() == 4 && view.stride(3) == 1 && view.stride(2) == view.size(3),
         name + " must be a (N, H, W, C) view with contiguous rows");
  expect(view.scalar_type() == z.scalar_type(), name + " must have z's dtype");
  const int64_t t = z.size(0), n = view.size(0);
  expect(n % t == 0 && view.size(3) == z.size(2) &&
             z.size(1) == (n / t) * view.size(1) * view.size(2),
         name + " and z must hold the same images (z: T x images x H x W rows)");
  return n / t;
}

void bn_relu(const at::Tensor& z, const at::Tensor& scale, const at::Tensor& beta, at::Tensor y) {
  const int64_t per = check_plain(z, y, "y");
  const int64_t c = z.size(2), width = y.size(2) * c;
  const at::Tensor s = scale.contiguous(), b = beta.contiguous();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "bn_relu", [&] {
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const scalar_t* sp = s.data_ptr<scalar_t>();
    const scalar_t* bp = b.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    rows(y, per, [&](int64_t task, int64_t at, int64_t row) {
      const scalar_t* __restrict zr = zp + row * width;
      scalar_t* __restrict out = yp + at;
      const scalar_t* __restrict sv = sp + task * c;
      const scalar_t* __restrict bv = bp + task * c;
      for (int64_t i = 0; i < width; i += c) {
        for (int64_t q = 0; q < c; ++q) out[i + q] = relu(madd(zr[i + q], sv[q], bv[q]));
      }
    });
  });
}

// One row's share of BatchNorm's backward sums (gy = g where y > 0).
template <typename T>
void row_sums(const T* __restrict g, const T* __restrict y, const T* __restrict z,
              double* __restrict sgy, double* __restrict sgz, int64_t width, int64_t c) {
  for (int64_t i = 0; i < width; i += c) {
    for (int64_t q = 0; q < c; ++q) {
      const T gy = y[i + q] <= 0 ? T(0) : g[i + q];  // the ReLU's backward
      sgy[q] += gy;
      sgz[q] += static_cast<double>(gy) * static_cast<double>(z[i + q]);
    }
  }
}

#ifdef REPTORCH_AVX2
// The float row in 8-lane AVX2 vectors, lane by lane the same operations (C a multiple of 8).
template <>
void row_sums<float>(const float* __restrict g, const float* __restrict y,
                     const float* __restrict z, double* __restrict sgy, double* __restrict sgz,
                     int64_t width, int64_t c) {
  if (c % 8 != 0 || c > 128) {
    for (int64_t i = 0; i < width; i += c) {
      for (int64_t q = 0; q < c; ++q) {
        const float gy = y[i + q] <= 0 ? 0.0f : g[i + q];
        sgy[q] += gy;
        sgz[q] += static_cast<double>(gy) * static_cast<double>(z[i + q]);
      }
    }
    return;
  }
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t q = 0; q < c; q += 8) {
    __m256d a0 = _mm256_loadu_pd(sgy + q), a1 = _mm256_loadu_pd(sgy + q + 4);
    __m256d b0 = _mm256_loadu_pd(sgz + q), b1 = _mm256_loadu_pd(sgz + q + 4);
    for (int64_t i = q; i < width; i += c) {
      const __m256 dead = _mm256_cmp_ps(_mm256_loadu_ps(y + i), zero, _CMP_LE_OQ);
      const __m256 gy = _mm256_blendv_ps(_mm256_loadu_ps(g + i), zero, dead);
      const __m256 zv = _mm256_loadu_ps(z + i);
      const __m256d g0 = _mm256_cvtps_pd(_mm256_castps256_ps128(gy));
      const __m256d g1 = _mm256_cvtps_pd(_mm256_extractf128_ps(gy, 1));
      a0 = _mm256_add_pd(a0, g0);
      a1 = _mm256_add_pd(a1, g1);
      b0 = _mm256_add_pd(b0, _mm256_mul_pd(g0, _mm256_cvtps_pd(_mm256_castps256_ps128(zv))));
      b1 = _mm256_add_pd(b1, _mm256_mul_pd(g1, _mm256_cvtps_pd(_mm256_extractf128_ps(zv, 1))));
    }
    _mm256_storeu_pd(sgy + q, a0);
    _mm256_storeu_pd(sgy + q + 4, a1);
    _mm256_storeu_pd(sgz + q, b0);
    _mm256_storeu_pd(sgz + q + 4, b1);
  }
}
#endif

at::Tensor bn_sums(const at::Tensor& g, const at::Tensor& y, const at::Tensor& z) {
  const int64_t per = check_plain(z, y, "y");
  check_plain(z, g, "g");
  expect(g.sizes() == y.sizes(), "g and y must share a shape");
  const int64_t t = z.size(0), c = z.size(2), width = y.size(2) * c;
  at::Tensor out = at::empty({t, 2, c}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "bn_sums", [&] {
    std::vector<double> acc(2 * t * c, 0.0);
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* yp = y.data_ptr<scalar_t>();
    const int64_t gap = g.stride(0) - y.stride(0), rgap = g.stride(1) - y.stride(1);
    rows(y, per, [&](int64_t task, int64_t at, int64_t row) {
      const int64_t b = row / y.size(1), r = row % y.size(1);
      double* sgy = acc.data() + 2 * task * c;
      row_sums<scalar_t>(gp + at + b * gap + r * rgap, yp + at, zp + row * width, sgy, sgy + c,
                         width, c);
    });
    scalar_t* o = out.data_ptr<scalar_t>();
    for (int64_t i = 0; i < 2 * t * c; ++i) o[i] = static_cast<scalar_t>(acc[i]);
  });
  return out;
}

void bn_dz(const at::Tensor& g, const at::Tensor& y, const at::Tensor& z, const at::Tensor& ca,
           const at::Tensor& cb, const at::Tensor& cc, at::Tensor dz) {
  const int64_t per = check_plain(z, y, "y");
  check_plain(z, g, "g");
  expect(g.sizes() == y.sizes(), "g and y must share a shape");
  expect(dz.sizes() == z.sizes() && dz.is_contiguous(), "dz must be contiguous, of z's shape");
  const int64_t c = z.size(2), width = y.size(2) * c;
  const at::Tensor a = ca.contiguous(), b = cb.contiguous(), k0 = cc.contiguous();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "bn_dz", [&] {
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* yp = y.data_ptr<scalar_t>();
    const scalar_t* ap = a.data_ptr<scalar_t>();
    const scalar_t* bp = b.data_ptr<scalar_t>();
    const scalar_t* cp = k0.data_ptr<scalar_t>();
    scalar_t* out = dz.data_ptr<scalar_t>();
    const int64_t gap = g.stride(0) - y.stride(0), rgap = g.stride(1) - y.stride(1);
    rows(y, per, [&](int64_t task, int64_t at, int64_t row) {
      const int64_t im = row / y.size(1), r = row % y.size(1);
      const scalar_t* __restrict gr = gp + at + im * gap + r * rgap;
      const scalar_t* __restrict yr = yp + at;
      const scalar_t* __restrict zr = zp + row * width;
      scalar_t* __restrict o = out + row * width;
      const scalar_t* __restrict av = ap + task * c;
      const scalar_t* __restrict bv = bp + task * c;
      const scalar_t* __restrict cv = cp + task * c;
      for (int64_t i = 0; i < width; i += c) {
        for (int64_t q = 0; q < c; ++q) {
          const scalar_t gy = yr[i + q] <= 0 ? scalar_t(0) : gr[i + q];
          o[i + q] = madd(gy, av[q], madd(zr[i + q], bv[q], cv[q]));
        }
      }
    });
  });
}

}  // namespace
}  // namespace reptorch_fused

TORCH_LIBRARY_FRAGMENT(reptorch_fused, m) {
  using namespace reptorch_fused;
  m.def("bn_relu(Tensor z, Tensor scale, Tensor beta, Tensor(a!) y) -> ()", &bn_relu);
  m.def("bn_sums(Tensor g, Tensor y, Tensor z) -> Tensor", &bn_sums);
  m.def("bn_dz(Tensor g, Tensor y, Tensor z, Tensor ca, Tensor cb, Tensor cc, Tensor(a!) dz) -> ()",
        &bn_dz);
}
