// Shared by the fused passes (reptorch.fast.fused): csrc/fused_moments.cpp (BatchNorm's
// moments), csrc/fused_pooled.cpp (a pooled block: BatchNorm, ReLU, 2x2 max pool, Mini-ImageNet's),
// csrc/fused_plain.cpp (a plain block: BatchNorm, ReLU, Omniglot's) and csrc/fused_im2col.cpp
// (im2col and its adjoint, Omniglot's strided convolutions).
//
// Layout: z (T, M, C), M = images x H x W per task, channels-last; per-task channel vectors
// (T, 1, C).
//
// Rounding. The elementwise passes do the float operations of the PyTorch ops they replace, in
// the same order (addcmul(beta, z, scale); addcmul(cc, z, cb), then addcmul(., gy, ca): a fused
// multiply-add each, as PyTorch's AVX2 / AVX-512 kernels; ReLU as its clamp_min), so their
// results are bitwise those ops' given the same inputs (built with -ffp-contract=off: no other
// contraction). The sums accumulate in double, sequentially over m, where PyTorch sums floats in
// its own order: these (per-channel statistics and BatchNorm's two gradient sums) differ from the
// ATen path by float rounding, and are more accurate.

#pragma once

#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define REPTORCH_AVX2 1
#endif

namespace reptorch_fused {

inline void expect(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("reptorch.fast.fused: " + what);
}

inline void check_z(const at::Tensor& z) {
  expect(z.dim() == 3 && z.is_contiguous() && z.device().is_cpu(),
         "z must be a contiguous CPU (T, M, C)");
}

// a x + b as PyTorch's addcmul computes it: one fused multiply-add where its vectorised kernels
// use them (built with -mfma on AVX2 / AVX-512 machines, see reptorch/fast/fused.py), else
// a product and a sum.
template <typename T>
inline T madd(T a, T x, T b) {
#ifdef __FMA__
  return std::fma(a, x, b);
#else
  return a * x + b;
#endif
}

// ReLU as PyTorch's relu_ (clamp_min(y, 0), a max with 0 as its first operand): NaN and -0.0
// pass through.
template <typename T>
inline T relu(T y) {
  return T(0) > y ? T(0) : y;
}

}  // namespace reptorch_fused
