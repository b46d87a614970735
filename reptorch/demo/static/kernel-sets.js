// The browser engine's kernel sets (static/engine.js): where its arrays live and its two hot
// loops, the convolution's forward pass and its backward pass. Both sets compute the same sums:
// - "webassembly": static/kernels.wat with 128-bit SIMD (built into static/kernels.js), the
//   arrays in the module's memory; about twice as fast (docs/demo.md);
// - "javascript": the same loops over ordinary typed arrays, where WebAssembly SIMD is missing.
"use strict";

const ReptorchKernelSets = (() => {
  // The inner loops of `conv` and `convBackward` in JavaScript: four gathered entries per pass
  // over the F outputs. z[out + f] += sum_j av[j] w[rows[j] + f]; for the weight row r:
  // dw[r + f] += sum_j av[j] dz[outs[j] + f] and dx[ins[j]] += sum_f w[r + f] dz[outs[j] + f].
  const jsLoops = {
    forward(z, out, w, av, rows, m, F) {
      let j = 0;
      for (; j + 4 <= m; j += 4) {
        const a0 = av[j], a1 = av[j + 1], a2 = av[j + 2], a3 = av[j + 3];
        const r0 = rows[j], r1 = rows[j + 1], r2 = rows[j + 2], r3 = rows[j + 3];
        for (let f = 0; f < F; f++) {
          z[out + f] += a0 * w[r0 + f] + a1 * w[r1 + f] + a2 * w[r2 + f] + a3 * w[r3 + f];
        }
      }
      for (; j < m; j++) {
        const a = av[j], r = rows[j];
        for (let f = 0; f < F; f++) z[out + f] += a * w[r + f];
      }
    },
    backward(dz, w, r, dw, dx, av, outs, ins, m, F) {
      let j = 0;
      for (; j + 4 <= m; j += 4) {
        const a0 = av[j], a1 = av[j + 1], a2 = av[j + 2], a3 = av[j + 3];
        const o0 = outs[j], o1 = outs[j + 1], o2 = outs[j + 2], o3 = outs[j + 3];
        let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (let f = 0; f < F; f++) {
          const d0 = dz[o0 + f], d1 = dz[o1 + f], d2 = dz[o2 + f], d3 = dz[o3 + f];
          const wf = w[r + f];
          dw[r + f] += a0 * d0 + a1 * d1 + a2 * d2 + a3 * d3;
          s0 += wf * d0; s1 += wf * d1; s2 += wf * d2; s3 += wf * d3;
        }
        if (dx) { dx[ins[j]] += s0; dx[ins[j + 1]] += s1; dx[ins[j + 2]] += s2; dx[ins[j + 3]] += s3; }
      }
      for (; j < m; j++) {
        const a = av[j], o = outs[j];
        let s = 0;
        for (let f = 0; f < F; f++) {
          dw[r + f] += a * dz[o + f];
          s += w[r + f] * dz[o + f];
        }
        if (dx) dx[ins[j]] += s;
      }
    },
  };

  // Kernels in JavaScript: arrays on the heap.
  function jsKernels() {
    return {
      name: "javascript",
      reset() {},
      f64: (n) => new Float64Array(n),
      i32: (n) => new Int32Array(n),
      copy: (array) => array,
      ...jsLoops,
    };
  }

  // Kernels in WebAssembly SIMD (static/kernels.wat): the arrays they touch live in its memory,
  // handed out by a bump allocator that `reset` empties before every forward pass. The memory
  // is allocated once for `bytes`, the largest pass (growing it would detach its buffer, which
  // slows every typed-array access of the page in V8).
  function wasmKernels(bytes) {
    const code = Uint8Array.from(atob(ReptorchKernels.wasm), (ch) => ch.charCodeAt(0));
    const memory = new WebAssembly.Memory({ initial: Math.ceil(bytes / 65536) });
    const exports = new WebAssembly.Instance(new WebAssembly.Module(code), { env: { memory } }).exports;
    const buffer = memory.buffer;
    let top = 16; // 0 stands for "no dx"
    const take = (n, size) => {
      top = Math.ceil(top / 16) * 16;
      const at = top;
      top += n * size;
      if (top > buffer.byteLength) throw new Error("kernel memory exhausted");
      return at;
    };
    return {
      name: "webassembly",
      reset(needed) {
        if (needed > buffer.byteLength) throw new Error(`a batch this large needs ${needed} bytes`);
        top = 16;
      },
      f64(n) { const view = new Float64Array(buffer, take(n, 8), n); view.fill(0); return view; },
      i32(n) { return new Int32Array(buffer, take(n, 4), n); },
      copy(array) { const view = this.f64(array.length); view.set(array); return view; },
      forward(z, out, w, av, rows, m, F) {
        exports.forward(z.byteOffset + 8 * out, w.byteOffset, av.byteOffset, rows.byteOffset, m, F);
      },
      backward(dz, w, r, dw, dx, av, outs, ins, m, F) {
        exports.backward(dz.byteOffset, w.byteOffset + 8 * r, dw.byteOffset + 8 * r,
          dx ? dx.byteOffset : 0, av.byteOffset, outs.byteOffset, ins.byteOffset, m, F);
      },
    };
  }

  // WebAssembly where the browser runs it (and F is even, its two lanes), else JavaScript.
  function choose(meta, wanted, bytes) {
    if (wanted === "javascript" || meta.filters % 2 || typeof ReptorchKernels === "undefined") return jsKernels();
    try {
      return wasmKernels(bytes);
    } catch (error) {
      if (wanted === "webassembly") throw error;
      return jsKernels();
    }
  }

  return { choose };
})();
