// The passes of a pooled block (conv -> BatchNorm -> ReLU -> 2x2 max pool, Mini-ImageNet's), one
// loop over its activations each (fused.h says how they round):
//
//   relu_pool       y = relu(beta + z scale), pooled = max over each 2x2 window, and which
//                   of the window's (up to) four cells was the maximum (`where`, int32 0..3)
//   pool_bn_sums    gy = dL/dy (the pool and ReLU backward: dL/dpooled at the window's maximum
//                   where it is > 0, else 0); sum_m gy and sum_m gy z
//   pool_bn_dz      dz = cc + z cb + gy ca               (BatchNorm's backward)
//
// Its first layer's activations (5 images x 84 x 84 x 32 floats, 4.5 MB) are bandwidth-bound:
// PyTorch's ops stream them about ten times a step (the pool backward alone zero-fills a
// full-size buffer and scatters into it). pooled, where and g are (N, Ho, Wo, C), N = T x images.
// Windows follow TF 'same' = PyTorch's ceil mode (an odd side's last window is cut). Ties go to
// the first maximum in row-major order, as PyTorch's kernel.

#include "fused.h"

namespace reptorch_fused {
namespace {

void check_block(const at::Tensor& z, const at::Tensor& grid, int64_t h, int64_t w) {
  check_z(z);
  expect(grid.dim() == 4 && grid.is_contiguous(), "pooled tensors must be contiguous (N, Ho, Wo, C)");
  const int64_t t = z.size(0), c = z.size(2), n = grid.size(0);
  expect(n % t == 0 && z.size(1) == (n / t) * h * w, "z's M must be images x H x W");
  expect(grid.size(1) == (h + 1) / 2 && grid.size(2) == (w + 1) / 2 && grid.size(3) == c,
         "pooled must be (N, ceil(H/2), ceil(W/2), C)");
}

// The cells of one 2x2 window (1 to 4 of them: windows are cut at an odd side), each as its
// z row (offset / C) and its place k = 2 dh + dw in the window, in row-major order.
struct Window {
  int64_t rows[4];
  int64_t places[4];
  int count;
};

// Calls visit(image, cell, window) for every window of `n` images of h x w, where `cell` is the
// window's offset / C in the pooled (N, Ho, Wo, C) tensors.
template <typename Visit>
void windows(int64_t n, int64_t h, int64_t w, Visit&& visit) {
  const int64_t ho = (h + 1) / 2, wo = (w + 1) / 2;
  Window win;
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t oh = 0; oh < ho; ++oh) {
      for (int64_t ow = 0; ow < wo; ++ow) {
        win.count = 0;
        for (int64_t dh = 0; dh < 2 && 2 * oh + dh < h; ++dh) {
          for (int64_t dw = 0; dw < 2 && 2 * ow + dw < w; ++dw) {
            win.rows[win.count] = (b * h + 2 * oh + dh) * w + 2 * ow + dw;
            win.places[win.count++] = 2 * dh + dw;
          }
        }
        visit(b, (b * ho + oh) * wo + ow, win);
      }
    }
  }
}

// One window's ReLU + max over its cells, channel by channel (PyTorch's tie rule: the first).
template <typename T>
void window_max_generic(const Window& win, const T* __restrict z, const T* __restrict scale,
                const T* __restrict beta, T* __restrict best, int32_t* __restrict where,
                int64_t c) {
  for (int64_t q = 0; q < c; ++q) {
    best[q] = -std::numeric_limits<T>::infinity();
    where[q] = 0;
  }
  for (int i = 0; i < win.count; ++i) {
    const T* __restrict zr = z + win.rows[i] * c;
    const int32_t k = static_cast<int32_t>(win.places[i]);
    for (int64_t q = 0; q < c; ++q) {
      const T y = madd(zr[q], scale[q], beta[q]);
      const bool nan = y != y;
      const T v = relu(y);
      const bool take = (v > best[q]) | nan;
      best[q] = take ? v : best[q];
      where[q] = take ? k : where[q];
    }
  }
}

// One window's share of BatchNorm's backward sums: gy = dL/dpooled through the ReLU, at the
// window's maximum; sgy += gy, sgz += gy z (z of that cell).
template <typename T>
void window_sums_generic(const Window& win, const T* __restrict z, const T* __restrict g,
                 const T* __restrict pooled, const int32_t* __restrict where,
                 T* __restrict picked, double* __restrict sgy, double* __restrict sgz,
                 int64_t c) {
  for (int i = 0; i < win.count; ++i) {
    const T* __restrict zr = z + win.rows[i] * c;
    const int32_t k = static_cast<int32_t>(win.places[i]);
    for (int64_t q = 0; q < c; ++q) picked[q] = where[q] == k ? zr[q] : picked[q];
  }
  for (int64_t q = 0; q < c; ++q) {
    const T gy = pooled[q] <= 0 ? T(0) : g[q];  // the ReLU's backward
    sgy[q] += gy;
    sgz[q] += static_cast<double>(gy) * static_cast<double>(picked[q]);
  }
}

// One window's dz = cc + z cb + gy ca (gy nonzero only at the window's maximum).
template <typename T>
void window_dz_generic(const Window& win, const T* __restrict z, const T* __restrict g,
               const T* __restrict pooled, const int32_t* __restrict where,
               const T* __restrict ca, const T* __restrict cb, const T* __restrict cc,
               T* __restrict dz, int64_t c) {
  for (int i = 0; i < win.count; ++i) {
    const int64_t row = win.rows[i] * c;
    const int32_t k = static_cast<int32_t>(win.places[i]);
    for (int64_t q = 0; q < c; ++q) {
      const T gy = (where[q] == k && !(pooled[q] <= 0)) ? g[q] : T(0);
      dz[row + q] = madd(gy, ca[q], madd(z[row + q], cb[q], cc[q]));
    }
  }
}

// The window loops, by type: the generic ones, specialised for float with AVX2 below.
template <typename T>
void window_max(const Window& win, const T* z, const T* scale, const T* beta, T* best,
                int32_t* where, int64_t c) {
  window_max_generic(win, z, scale, beta, best, where, c);
}

template <typename T>
void window_sums(const Window& win, const T* z, const T* g, const T* pooled,
                 const int32_t* where, T* picked, double* sgy, double* sgz, int64_t c) {
  window_sums_generic(win, z, g, pooled, where, picked, sgy, sgz, c);
}

template <typename T>
void window_dz(const Window& win, const T* z, const T* g, const T* pooled, const int32_t* where,
               const T* ca, const T* cb, const T* cc, T* dz, int64_t c) {
  window_dz_generic(win, z, g, pooled, where, ca, cb, cc, dz, c);
}

#ifdef REPTORCH_AVX2
// The float loops above in 8-lane AVX2 vectors, lane by lane the same operations (GCC leaves the
// generic loops scalar for float: branchy, 5-10x slower). Used where C is a multiple of 8.

template <>
void window_max<float>(const Window& win, const float* __restrict z,
                       const float* __restrict scale, const float* __restrict beta,
                       float* __restrict best, int32_t* __restrict where, int64_t c) {
  if (c % 8 != 0) return window_max_generic(win, z, scale, beta, best, where, c);
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t q = 0; q < c; q += 8) {
    const __m256 s = _mm256_loadu_ps(scale + q), b = _mm256_loadu_ps(beta + q);
    __m256 top = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    __m256 arg = _mm256_setzero_ps();  // int32 lanes
    for (int i = 0; i < win.count; ++i) {
      const __m256 y = _mm256_fmadd_ps(_mm256_loadu_ps(z + win.rows[i] * c + q), s, b);
      const __m256 nan = _mm256_cmp_ps(y, y, _CMP_UNORD_Q);
      const __m256 v = _mm256_max_ps(zero, y);  // relu: PyTorch's clamp_min
      const __m256 take = _mm256_or_ps(_mm256_cmp_ps(v, top, _CMP_GT_OQ), nan);
      top = _mm256_blendv_ps(top, v, take);
      const __m256 k = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int32_t>(win.places[i])));
      arg = _mm256_blendv_ps(arg, k, take);
    }
    _mm256_storeu_ps(best + q, top);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(where + q), _mm256_castps_si256(arg));
  }
}

template <>
void window_sums<float>(const Window& win, const float* __restrict z,
                        const float* __restrict g, const float* __restrict pooled,
                        const int32_t* __restrict where, float* __restrict picked,
                        double* __restrict sgy, double* __restrict sgz, int64_t c) {
  if (c % 8 != 0) return window_sums_generic(win, z, g, pooled, where, picked, sgy, sgz, c);
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t q = 0; q < c; q += 8) {
    const __m256i at = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(where + q));
    __m256 zv = zero;
    for (int i = 0; i < win.count; ++i) {
      const __m256i k = _mm256_set1_epi32(static_cast<int32_t>(win.places[i]));
      const __m256 hit = _mm256_castsi256_ps(_mm256_cmpeq_epi32(at, k));
      zv = _mm256_blendv_ps(zv, _mm256_loadu_ps(z + win.rows[i] * c + q), hit);
    }
    const __m256 dead = _mm256_cmp_ps(_mm256_loadu_ps(pooled + q), zero, _CMP_LE_OQ);
    const __m256 gy = _mm256_blendv_ps(_mm256_loadu_ps(g + q), zero, dead);
    const __m256d g0 = _mm256_cvtps_pd(_mm256_castps256_ps128(gy));
    const __m256d g1 = _mm256_cvtps_pd(_mm256_extractf128_ps(gy, 1));
    const __m256d z0 = _mm256_cvtps_pd(_mm256_castps256_ps128(zv));
    const __m256d z1 = _mm256_cvtps_pd(_mm256_extractf128_ps(zv, 1));
    _mm256_storeu_pd(sgy + q, _mm256_add_pd(_mm256_loadu_pd(sgy + q), g0));
    _mm256_storeu_pd(sgy + q + 4, _mm256_add_pd(_mm256_loadu_pd(sgy + q + 4), g1));
    _mm256_storeu_pd(sgz + q, _mm256_add_pd(_mm256_loadu_pd(sgz + q), _mm256_mul_pd(g0, z0)));
    _mm256_storeu_pd(sgz + q + 4, _mm256_add_pd(_mm256_loadu_pd(sgz + q + 4), _mm256_mul_pd(g1, z1)));
  }
}

template <>
void window_dz<float>(const Window& win, const float* __restrict z, const float* __restrict g,
                      const float* __restrict pooled, const int32_t* __restrict where,
                      const float* __restrict ca, const float* __restrict cb,
                      const float* __restrict cc, float* __restrict dz, int64_t c) {
  if (c % 8 != 0) return window_dz_generic(win, z, g, pooled, where, ca, cb, cc, dz, c);
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t q = 0; q < c; q += 8) {
    const __m256i at = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(where + q));
    const __m256 live = _mm256_cmp_ps(_mm256_loadu_ps(pooled + q), zero, _CMP_NLE_UQ);
    const __m256 gv = _mm256_loadu_ps(g + q);
    const __m256 a = _mm256_loadu_ps(ca + q), b = _mm256_loadu_ps(cb + q), k0 = _mm256_loadu_ps(cc + q);
    for (int i = 0; i < win.count; ++i) {
      const int64_t row = win.rows[i] * c + q;
      const __m256i k = _mm256_set1_epi32(static_cast<int32_t>(win.places[i]));
      const __m256 hit = _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(at, k)), live);
      const __m256 gy = _mm256_blendv_ps(zero, gv, hit);
      const __m256 d = _mm256_fmadd_ps(_mm256_loadu_ps(z + row), b, k0);
      _mm256_storeu_ps(dz + row, _mm256_fmadd_ps(gy, a, d));
    }
  }
}
#endif

void relu_pool(const at::Tensor& z, const at::Tensor& scale, const at::Tensor& beta, int64_t h,
               int64_t w, at::Tensor pooled, at::Tensor where) {
  check_block(z, pooled, h, w);
  expect(where.sizes() == pooled.sizes() && where.scalar_type() == at::kInt && where.is_contiguous(),
         "where must be a contiguous int32 tensor of pooled's shape");
  const int64_t t = z.size(0), c = z.size(2), n = pooled.size(0), per = n / t;
  const at::Tensor s = scale.contiguous(), b = beta.contiguous();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "relu_pool", [&] {
    const scalar_t* zp = z.data_ptr<scalar_t>();
    scalar_t* out = pooled.data_ptr<scalar_t>();
    int32_t* arg = where.data_ptr<int32_t>();
    const scalar_t* sp = s.data_ptr<scalar_t>();
    const scalar_t* bp = b.data_ptr<scalar_t>();
    windows(n, h, w, [&](int64_t image, int64_t cell, const Window& win) {
      const int64_t task = image / per;
      window_max<scalar_t>(win, zp, sp + task * c, bp + task * c, out + cell * c, arg + cell * c, c);
    });
  });
}

at::Tensor pool_bn_sums(const at::Tensor& g, const at::Tensor& pooled, const at::Tensor& where,
                        const at::Tensor& z, int64_t h, int64_t w) {
  check_block(z, pooled, h, w);
  const at::Tensor gc = g.contiguous();
  expect(gc.sizes() == pooled.sizes() && where.sizes() == pooled.sizes(), "g, pooled and where must share a shape");
  const int64_t t = z.size(0), c = z.size(2), n = pooled.size(0), per = n / t;
  at::Tensor out = at::empty({t, 2, c}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "pool_bn_sums", [&] {
    std::vector<double> acc(2 * t * c, 0.0);
    std::vector<scalar_t> picked(c, scalar_t(0));
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    const scalar_t* pp = pooled.data_ptr<scalar_t>();
    const int32_t* arg = where.data_ptr<int32_t>();
    windows(n, h, w, [&](int64_t image, int64_t cell, const Window& win) {
      double* sgy = acc.data() + 2 * (image / per) * c;
      window_sums<scalar_t>(win, zp, gp + cell * c, pp + cell * c, arg + cell * c,
                            picked.data(), sgy, sgy + c, c);
    });
    scalar_t* o = out.data_ptr<scalar_t>();
    for (int64_t i = 0; i < 2 * t * c; ++i) o[i] = static_cast<scalar_t>(acc[i]);
  });
  return out;
}

void pool_bn_dz(const at::Tensor& g, const at::Tensor& pooled, const at::Tensor& where,
                const at::Tensor& z, const at::Tensor& ca, const at::Tensor& cb,
                const at::Tensor& cc, int64_t h, int64_t w, at::Tensor dz) {
  check_block(z, pooled, h, w);
  const at::Tensor gc = g.contiguous(), a = ca.contiguous(), b = cb.contiguous(), k0 = cc.contiguous();
  expect(dz.sizes() == z.sizes() && dz.is_contiguous(), "dz must be contiguous, of z's shape");
  const int64_t t = z.size(0), c = z.size(2), n = pooled.size(0), per = n / t;
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "pool_bn_dz", [&] {
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    const scalar_t* pp = pooled.data_ptr<scalar_t>();
    const int32_t* arg = where.data_ptr<int32_t>();
    scalar_t* out = dz.data_ptr<scalar_t>();
    const scalar_t* ap = a.data_ptr<scalar_t>();
    const scalar_t* bp = b.data_ptr<scalar_t>();
    const scalar_t* cp = k0.data_ptr<scalar_t>();
    windows(n, h, w, [&](int64_t image, int64_t cell, const Window& win) {
      const int64_t task = (image / per) * c;
      window_dz<scalar_t>(win, zp, gp + cell * c, pp + cell * c, arg + cell * c, ap + task,
                          bp + task, cp + task, out, c);
    });
  });
}

}  // namespace
}  // namespace reptorch_fused

TORCH_LIBRARY_FRAGMENT(reptorch_fused, m) {
  using namespace reptorch_fused;
  m.def("relu_pool(Tensor z, Tensor scale, Tensor beta, int h, int w, Tensor(a!) pooled, "
        "Tensor(b!) where) -> ()", &relu_pool);
  m.def("pool_bn_sums(Tensor g, Tensor pooled, Tensor where, Tensor z, int h, int w) -> Tensor",
        &pool_bn_sums);
  m.def("pool_bn_dz(Tensor g, Tensor pooled, Tensor where, Tensor z, Tensor ca, Tensor cb, "
        "Tensor cc, int h, int w, Tensor(a!) dz) -> ()", &pool_bn_dz);
}
