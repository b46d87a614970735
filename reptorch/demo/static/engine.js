// The demo's fine-tuning and prediction in the browser: reptorch.demo.engine.Engine in float64.
//
// The network is the paper's Omniglot net (reptorch.models.OmniglotNet): 28x28x1 -> 4 x [conv 3x3
// stride 2 with TensorFlow 'same' padding -> BatchNorm on the batch's statistics (eps 1e-3) ->
// ReLU] -> 2x2x64 -> dense to `classes` logits. Fine-tuning is Engine's: `inner_iters` steps of
// the inner optimiser (Adam with the run's betas, from the carried state) on the mini-batches the
// Python engine draws from its fixed seed (shipped in model.json, not re-drawn here), with the
// run's cross-entropy (sum or mean, over all `classes` logits); the query is classified in one
// batch with the whole support set and its probabilities are the softmax over the task's N logits.
//
// Activations are channels-last (NHWC); conv weights [ky][kx][in][out]; the dense weight
// [class][(y * 2 + x) * filters + channel] (the export permutes PyTorch's layouts into these).
// A mini-batch holding the same image twice is computed once with multiplicity 2 in the batch
// statistics and the loss: the same function, ~40% less work for 1-shot tasks. The convolution's
// inner loops and the arrays they touch come from a kernel set (static/kernel-sets.js).
"use strict";

const ReptorchEngine = (() => {
  const BN_EPS = 1e-3;
  const KERNEL = 3, STRIDE = 2;

  // TensorFlow 'same' padding before the first row/column (reptorch.models.same_padding).
  function padBefore(size) {
    const out = Math.ceil(size / STRIDE);
    return Math.floor(Math.max((out - 1) * STRIDE + KERNEL - size, 0) / 2);
  }

  class Net {
    constructor(meta) {
      this.classes = meta.classes;
      this.filters = meta.filters;
      this.sides = [28];
      for (let l = 0; l < 4; l++) this.sides.push(Math.ceil(this.sides[l] / STRIDE));
      this.features = this.sides[4] * this.sides[4] * this.filters;
    }

    // Forward pass of n distinct images (Float64Array n*784) with multiplicities `counts`
    // (their weight in the batch statistics): the logits (n * classes) and what backward needs.
    forward(params, images, counts, n) {
      const F = this.filters, kern = this.kernels;
      kern.reset(this.bytes(n));
      const layers = [];
      let x = images, channels = 1;
      for (let l = 0; l < 4; l++) {
        const H = this.sides[l], O = this.sides[l + 1];
        const [, b, gamma, beta] = params.slice(4 * l, 4 * l + 4);
        const w = kern.copy(params[4 * l]);
        const z = conv(kern, x, n, H, channels, w, b, O, F);
        const { xhat, invstd } = batchNorm(kern, z, n, O * O, F, counts);
        const y = kern.f64(z.length);
        for (let i = 0, p = 0; i < n * O * O; i++) {
          for (let c = 0; c < F; c++, p++) {
            const v = gamma[c] * xhat[p] + beta[c];
            y[p] = v > 0 ? v : 0;
          }
        }
        layers.push({ x, w, channels, H, O, xhat, invstd, y });
        x = y;
        channels = F;
      }
      const w = params[16], b = params[17], K = this.classes, D = this.features;
      const logits = kern.f64(n * K);
      for (let i = 0; i < n; i++) {
        for (let k = 0; k < K; k++) {
          let s = b[k];
          const row = k * D, col = i * D;
          for (let f = 0; f < D; f++) s += w[row + f] * x[col + f];
          logits[i * K + k] = s;
        }
      }
      return { logits, layers, features: x };
    }

    // Bytes of kernel memory a forward and backward pass of n images may use (generous).
    bytes(n) {
      let total = 0;
      for (let l = 0; l < 4; l++) {
        const H = this.sides[l], O = this.sides[l + 1], C = l ? this.filters : 1;
        total += 4 * n * (O * O * this.filters + H * H * C) + 3 * 9 * C * this.filters + 9 * C;
      }
      return 8 * total + 65536;
    }

    // Gradients of the loss (whose gradient wrt the logits is dlogits) for every parameter.
    backward(params, cache, dlogits, counts, n) {
      const F = this.filters, K = this.classes, D = this.features, kern = this.kernels;
      const grads = params.map((p) => kern.f64(p.length));
      const w = params[16], h = cache.features;
      let dy = kern.f64(n * D);
      for (let i = 0; i < n; i++) {
        for (let k = 0; k < K; k++) {
          const g = dlogits[i * K + k];
          grads[17][k] += g;
          if (g === 0) continue;
          const row = k * D, col = i * D;
          for (let f = 0; f < D; f++) {
            grads[16][row + f] += g * h[col + f];
            dy[col + f] += g * w[row + f];
          }
        }
      }
      for (let l = 3; l >= 0; l--) {
        const { x, w: wl, channels, H, O, xhat, invstd, y } = cache.layers[l];
        const gamma = params[4 * l + 2];
        const dgamma = grads[4 * l + 2], dbeta = grads[4 * l + 3];
        const positions = O * O;
        const dxhat = kern.f64(dy.length);
        const s1 = new Float64Array(F), s2 = new Float64Array(F);
        for (let i = 0, p = 0; i < n * positions; i++) {
          for (let c = 0; c < F; c++, p++) {
            const g = y[p] > 0 ? dy[p] : 0; // ReLU
            dgamma[c] += g * xhat[p];
            dbeta[c] += g;
            const d = g * gamma[c];
            dxhat[p] = d;
            s1[c] += d;
            s2[c] += d * xhat[p];
          }
        }
        let total = 0;
        for (let i = 0; i < n; i++) total += counts[i] * positions;
        const dz = dxhat; // in place: dz = invstd / M * (M dxhat - count (s1 + xhat s2))
        for (let i = 0, p = 0; i < n; i++) {
          const m = counts[i];
          for (let q = 0; q < positions; q++) {
            for (let c = 0; c < F; c++, p++) {
              dz[p] = (invstd[c] / total) * (total * dxhat[p] - m * s1[c] - m * xhat[p] * s2[c]);
            }
          }
        }
        const dx = l > 0 ? kern.f64(x.length) : null;
        convBackward(kern, x, n, H, channels, wl, O, F, dz, grads[4 * l], grads[4 * l + 1], dx);
        dy = dx;
      }
      return grads;
    }
  }

  // The (input position, output position) pairs of each 3x3 tap for a layer of side H:
  // taps[ky * 3 + kx] = [in0, out0, in1, out1, ...] (positions row-major, TF 'same' padding).
  const tapCache = new Map();
  function taps(H) {
    if (tapCache.has(H)) return tapCache.get(H);
    const O = Math.ceil(H / STRIDE), pad = padBefore(H), all = [];
    for (let ky = 0; ky < KERNEL; ky++) {
      for (let kx = 0; kx < KERNEL; kx++) {
        const pairs = [];
        for (let oy = 0; oy < O; oy++) {
          const iy = oy * STRIDE + ky - pad;
          if (iy < 0 || iy >= H) continue;
          for (let ox = 0; ox < O; ox++) {
            const ix = ox * STRIDE + kx - pad;
            if (ix >= 0 && ix < H) pairs.push(iy * H + ix, oy * O + ox);
          }
        }
        all.push(Int32Array.from(pairs));
      }
    }
    tapCache.set(H, all);
    return all;
  }

  // z[n, oy, ox, f] = b[f] + sum over the 3x3 window and input channels (TF 'same' padding).
  // Per output position, its nonzero inputs (ReLU zeros and ink pixels add nothing) are taken
  // four at a time, so that each pass over the 64 outputs does four multiply-adds per store.
  function conv(kern, x, n, H, C, w, b, O, F) {
    const z = kern.f64(n * O * O * F);
    const pad = padBefore(H);
    const av = kern.f64(KERNEL * KERNEL * C), rows = kern.i32(KERNEL * KERNEL * C);
    for (let i = 0; i < n; i++) {
      for (let oy = 0; oy < O; oy++) {
        for (let ox = 0; ox < O; ox++) {
          const out = ((i * O + oy) * O + ox) * F;
          let m = 0;
          for (let ky = 0; ky < KERNEL; ky++) {
            const iy = oy * STRIDE + ky - pad;
            if (iy < 0 || iy >= H) continue;
            for (let kx = 0; kx < KERNEL; kx++) {
              const ix = ox * STRIDE + kx - pad;
              if (ix < 0 || ix >= H) continue;
              const inp = ((i * H + iy) * H + ix) * C, wk = (ky * KERNEL + kx) * C * F;
              for (let c = 0; c < C; c++) {
                const a = x[inp + c];
                if (a !== 0) { av[m] = a; rows[m++] = wk + c * F; }
              }
            }
          }
          for (let f = 0; f < F; f++) z[out + f] = b[f];
          kern.forward(z, out, w, av, rows, m, F);
        }
      }
    }
    return z;
  }

  // dw, db (accumulated) and dx (when given) of `conv` for the output gradient dz. Per weight
  // row (tap, input channel), the output positions whose input is nonzero are taken four at a
  // time: one pass over the 64 outputs updates the row and four input gradients. Where an input
  // is 0 its dx is not computed: every such input is a ReLU output of 0, whose gradient the
  // ReLU below discards (layer 0, the image, needs no dx).
  function convBackward(kern, x, n, H, C, w, O, F, dz, dw, db, dx) {
    for (let p = 0; p < dz.length; p += F) for (let f = 0; f < F; f++) db[f] += dz[p + f];
    const all = taps(H);
    const most = n * O * O;
    const av = kern.f64(most), outs = kern.i32(most), ins = kern.i32(most);
    for (let t = 0; t < all.length; t++) {
      const pairs = all[t];
      for (let c = 0; c < C; c++) {
        let m = 0;
        for (let i = 0; i < n; i++) {
          for (let q = 0; q < pairs.length; q += 2) {
            const inp = (i * H * H + pairs[q]) * C + c;
            const a = x[inp];
            if (a !== 0) { av[m] = a; ins[m] = inp; outs[m++] = (i * O * O + pairs[q + 1]) * F; }
          }
        }
        kern.backward(dz, w, (t * C + c) * F, dw, dx, av, outs, ins, m, F);
      }
    }
  }

  // Per channel, over the batch (image i counted counts[i] times) and positions: xhat and 1/std.
  function batchNorm(kern, z, n, positions, F, counts) {
    const mean = new Float64Array(F), variance = new Float64Array(F), invstd = new Float64Array(F);
    let total = 0;
    for (let i = 0, p = 0; i < n; i++) {
      total += counts[i] * positions;
      for (let q = 0; q < positions; q++) for (let c = 0; c < F; c++, p++) mean[c] += counts[i] * z[p];
    }
    for (let c = 0; c < F; c++) mean[c] /= total;
    for (let i = 0, p = 0; i < n; i++) {
      for (let q = 0; q < positions; q++) {
        for (let c = 0; c < F; c++, p++) {
          const d = z[p] - mean[c];
          variance[c] += counts[i] * d * d;
        }
      }
    }
    for (let c = 0; c < F; c++) invstd[c] = 1 / Math.sqrt(variance[c] / total + BN_EPS);
    const xhat = kern.f64(z.length);
    for (let p = 0; p < z.length; p += F) for (let c = 0; c < F; c++) xhat[p + c] = (z[p + c] - mean[c]) * invstd[c];
    return { xhat, invstd };
  }

  // Softmax cross-entropy of each image's label over all logits, weighted by its count: the
  // loss (summed, or the mean over the batch of `batch` images) and its gradient wrt the logits.
  function crossEntropy(logits, labels, counts, n, K, reduction, batch) {
    const scale = reduction === "mean" ? 1 / batch : 1;
    const dlogits = new Float64Array(n * K);
    let loss = 0;
    for (let i = 0; i < n; i++) {
      let top = -Infinity;
      for (let k = 0; k < K; k++) top = Math.max(top, logits[i * K + k]);
      let sum = 0;
      for (let k = 0; k < K; k++) sum += Math.exp(logits[i * K + k] - top);
      const lse = top + Math.log(sum);
      loss += counts[i] * (lse - logits[i * K + labels[i]]);
      for (let k = 0; k < K; k++) {
        const p = Math.exp(logits[i * K + k] - lse);
        dlogits[i * K + k] = counts[i] * scale * (p - (k === labels[i] ? 1 : 0));
      }
    }
    return { loss: loss * scale, dlogits };
  }

  class Engine {
    // meta: model.json; buffer: weights.bin (float32: phi, then the inner state's first and
    // second moments, each in meta.parameters' order and layouts).
    // kernels: "webassembly" or "javascript" (default: WebAssembly where it runs).
    constructor(meta, buffer, kernels) {
      this.meta = meta;
      this.net = new Net(meta);
      // the largest pass: a prediction with every class's most drawings and the query
      this.net.kernels = ReptorchKernelSets.choose(meta, kernels, this.net.bytes(meta.classes * meta.max_shots + 1));
      this.kernels = this.net.kernels.name;
      const all = new Float32Array(buffer);
      let offset = 0;
      const take = () => meta.parameters.map((p) => {
        const part = Float64Array.from(all.subarray(offset, offset + p.size));
        offset += p.size;
        return part;
      });
      this.phi = take();
      const optimizer = meta.optimizer;
      this.exp_avg = optimizer.name === "adam" ? take() : null;
      this.exp_avg_sq = optimizer.name === "adam" ? take() : null;
      if (offset !== all.length) throw new Error(`weights.bin holds ${all.length} numbers, model.json says ${offset}`);
    }

    // The shipped mini-batch indices (Engine.indices) for N-way K-shot: inner_iters x batch.
    indices(ways, shots) {
      const table = this.meta.indices[`${ways}x${shots}`];
      if (!table) throw new Error(`${ways}-way ${shots}-shot is not in this export`);
      return table;
    }

    // Fine-tunes on the support images (Float32Array(784) each, class-major: ways x shots):
    // { params, losses } as Engine's inner loop.
    fineTune(images, ways, shots, steps = Infinity) {
      const meta = this.meta, net = this.net, opt = meta.optimizer;
      let params = this.phi.map((p) => p.slice());
      const m = this.exp_avg && this.exp_avg.map((p) => p.slice());
      const v = this.exp_avg_sq && this.exp_avg_sq.map((p) => p.slice());
      let step = opt.step;
      const losses = [];
      for (const batch of this.indices(ways, shots).slice(0, steps)) {
        const unique = [...new Set(batch)];
        const counts = unique.map((u) => batch.filter((b) => b === u).length);
        const n = unique.length;
        const x = new Float64Array(n * 784);
        unique.forEach((u, i) => x.set(images[u], i * 784));
        const labels = unique.map((u) => Math.floor(u / shots));
        if (meta.weight_decay !== 1) for (const p of params) for (let j = 0; j < p.length; j++) p[j] *= meta.weight_decay;
        const cache = net.forward(params, x, counts, n);
        const { loss, dlogits } = crossEntropy(cache.logits, labels, counts, n, net.classes, meta.loss_reduction, batch.length);
        const grads = net.backward(params, cache, dlogits, counts, n);
        step += 1;
        params = opt.name === "adam" ? adamStep(opt, params, grads, m, v, step) : sgdStep(opt, params, grads);
        losses.push(loss);
      }
      return { params, losses };
    }

    // A few steps on blank drawings, so that the first support set does not wait for the
    // JavaScript compiler (as Engine.warm_up; measured: the first fine-tuning took twice as long).
    warmUp(steps = 10) {
      const blank = Array.from({ length: 2 }, (_, c) => {
        const image = new Float32Array(784).fill(1);
        image.fill(0, 300 + 56 * c, 320 + 56 * c);
        return image;
      });
      const { params } = this.fineTune(blank, 2, 1, steps);
      this.predict(params, blank, blank[0], 2);
    }

    // P(query in class c) for c < ways: the query classified in one batch with the support set.
    predict(params, images, query, ways) {
      const n = images.length + 1;
      const x = new Float64Array(n * 784);
      images.forEach((image, i) => x.set(image, i * 784));
      x.set(query, images.length * 784);
      const { logits } = this.net.forward(params, x, new Array(n).fill(1), n);
      const row = logits.subarray((n - 1) * this.net.classes, (n - 1) * this.net.classes + ways);
      const top = Math.max(...row);
      const e = Array.from(row, (l) => Math.exp(l - top));
      const sum = e.reduce((a, b) => a + b, 0);
      return e.map((value) => value / sum);
    }
  }

  // Adam (reptorch.inner_optim.Adam): m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
  // theta <- theta - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). All in place.
  function adamStep(opt, params, grads, m, v, t) {
    const stepSize = opt.lr / (1 - Math.pow(opt.beta1, t));
    const correction = Math.sqrt(1 - Math.pow(opt.beta2, t));
    const beta1 = opt.beta1, beta2 = opt.beta2, eps = opt.eps;
    for (let k = 0; k < params.length; k++) {
      const p = params[k], g = grads[k], mk = m[k], vk = v[k];
      for (let j = 0; j < p.length; j++) {
        const gj = g[j];
        const mj = beta1 * mk[j] + (1 - beta1) * gj;
        const vj = vk[j] * beta2 + (1 - beta2) * gj * gj;
        mk[j] = mj;
        vk[j] = vj;
        p[j] -= stepSize * (mj / (Math.sqrt(vj) / correction + eps));
      }
    }
    return params;
  }

  function sgdStep(opt, params, grads) {
    for (let k = 0; k < params.length; k++) for (let j = 0; j < params[k].length; j++) params[k][j] -= opt.lr * grads[k][j];
    return params;
  }

  return { Engine };
})();
