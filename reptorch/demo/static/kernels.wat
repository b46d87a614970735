;; The browser engine's two inner loops (static/engine.js: `conv` and `convBackward`) in
;; WebAssembly with 128-bit SIMD, two float64 lanes: the same sums as the JavaScript loops they
;; replace, four gathered entries per pass over the output channels. Addresses are byte offsets
;; into the engine's memory; index arrays hold float64 element offsets (int32); F is even.
;; Built into static/kernels.js by bench/build_kernels.py (wabt's wat2wasm, a build-time tool).
(module
  ;; The memory is the engine's, sized once for its largest batch: growing it later would detach
  ;; its buffer, which makes V8 check every typed-array access of the page for detachment.
  (import "env" "memory" (memory 1))

  ;; z[f] += sum_j a[j] * w[rows[j] + f] for f < F, j < m (one output position).
  (func (export "forward") (param $z i32) (param $w i32) (param $a i32) (param $rows i32)
        (param $m i32) (param $F i32)
    (local $j i32) (local $f i32) (local $end i32)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128)
    (local $r0 i32) (local $r1 i32) (local $r2 i32) (local $r3 i32)
    (local.set $end (i32.shl (local.get $F) (i32.const 3)))
    (block $groups_done
      (loop $groups
        (br_if $groups_done (i32.gt_s (i32.add (local.get $j) (i32.const 4)) (local.get $m)))
        (local.set $a0 (v128.load64_splat (i32.add (local.get $a) (i32.shl (local.get $j) (i32.const 3)))))
        (local.set $a1 (v128.load64_splat offset=8 (i32.add (local.get $a) (i32.shl (local.get $j) (i32.const 3)))))
        (local.set $a2 (v128.load64_splat offset=16 (i32.add (local.get $a) (i32.shl (local.get $j) (i32.const 3)))))
        (local.set $a3 (v128.load64_splat offset=24 (i32.add (local.get $a) (i32.shl (local.get $j) (i32.const 3)))))
        (local.set $r0 (i32.add (local.get $w) (i32.shl (i32.load (i32.add (local.get $rows) (i32.shl (local.get $j) (i32.const 2)))) (i32.const 3))))
        (local.set $r1 (i32.add (local.get $w) (i32.shl (i32.load offset=4 (i32.add (local.get $rows) (i32.shl (local.get $j) (i32.const 2)))) (i32.const 3))))
        (local.set $r2 (i32.add (local.get $w) (i32.shl (i32.load offset=8 (i32.add (local.get $rows) (i32.shl (local.get $j) (i32.const 2)))) (i32.const 3))))
        (local.set $r3 (i32.add (local.get $w) (i32.shl (i32.load offset=12 (i32.add (local.get $rows) (i32.shl (local.get $j) (i32.const 2)))) (i32.const 3))))
        (local.set $f (i32.const 0))
        (loop $channels
          (v128.store (i32.add (local.get $z) (local.get $f))
            (f64x2.add
              (v128.load (i32.add (local.get $z) (local.get $f)))
              (f64x2.add
                (f64x2.add
                  (f64x2.mul (local.get $a0) (v128.load (i32.add (local.get $r0) (local.get $f))))
                  (f64x2.mul (local.get $a1) (v128.load (i32.add (local.get $r1) (local.get $f)))))
                (f64x2.add
                  (f64x2.mul (local.get $a2) (v128.load (i32.add (local.get $r2) (local.get $f))))
                  (f64x2.mul (local.get $a3) (v128.load (i32.add (local.get $r3) (local.get $f))))))))
          (local.set $f (i32.add (local.get $f) (i32.const 16)))
          (br_if $channels (i32.lt_u (local.get $f) (local.get $end))))
        (local.set $j (i32.add (local.get $j) (i32.const 4)))
        (br $groups)))
    (block $rest_done
      (loop $rest
        (br_if $rest_done (i32.ge_s (local.get $j) (local.get $m)))
        (local.set $a0 (v128.load64_splat (i32.add (local.get $a) (i32.shl (local.get $j) (i32.const 3)))))
        (local.set $r0 (i32.add (local.get $w) (i32.shl (i32.load (i32.add (local.get $rows) (i32.shl (local.get $j) (i32.const 2)))) (i32.const 3))))
        (local.set $f (i32.const 0))
        (loop $channels1
          (v128.store (i32.add (local.get $z) (local.get $f))
            (f64x2.add
              (v128.load (i32.add (local.get $z) (local.get $f)))
              (f64x2.mul (local.get $a0) (v128.load (i32.add (local.get $r0) (local.get $f))))))
          (local.set $f (i32.add (local.get $f) (i32.const 16)))
          (br_if $channels1 (i32.lt_u (local.get $f) (local.get $end))))
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br $rest))))

  ;; For one weight row w (and its gradient dw), j < m gathered output positions:
  ;; dw[f] += sum_j a[j] * dz[outs[j] + f]; when dx is nonzero, dx[ins[j]] += sum_f w[f] dz[outs[j] + f].
  (func (export "backward") (param $dz i32) (param $w i32) (param $dw i32) (param $dx i32)
        (param $a i32) (param $outs i32) (param $ins i32) (param $m i32) (param $F i32)
    (local $j i32) (local $f i32) (local $end i32)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128)
    (local $o0 i32) (local $o1 i32) (local $o2 i32) (local $o3 i32)
    (local $s0 v128) (local $s1 v128) (local $s2 v128) (local $s3 v128)
    (local $d0 v128) (local $d1 v128) (local $d2 v128) (local $d3 v128) (local $wf v128)
    (local $at i32)
    (local.set $end (i32.shl (local.get $F) (i32.const 3)))
    (block $groups_done
      (loop $groups
        (br_if $groups_done (i32.gt_s (i32.add (local.get $j) (i32.const 4)) (local.get $m)))
        (local.set $a0 (v128.load64_splat (i32.add (local.get $a) (i32.shl (local.get $j) (i32.const 3)))))
        (local.set $a1 (v128.load64_splat offset=8 (i32.add (local.get $a) (i32.shl (local.get $j) (i32.const 3)))))
        (local.set $a2 (v128.load64_splat offset=16 (i32.add (local.get $a) (i32.shl (local.get $j) (i32.const 3)))))
        (local.set $a3 (v128.load64_splat offset=24 (i32.add (local.get $a) (i32.shl (local.get $j) (i32.const 3)))))
        (local.set $o0 (i32.add (local.get $dz) (i32.shl (i32.load (i32.add (local.get $outs) (i32.shl (local.get $j) (i32.const 2)))) (i32.const 3))))
        (local.set $o1 (i32.add (local.get $dz) (i32.shl (i32.load offset=4 (i32.add (local.get $outs) (i32.shl (local.get $j) (i32.const 2)))) (i32.const 3))))
        (local.set $o2 (i32.add (local.get $dz) (i32.shl (i32.load offset=8 (i32.add (local.get $outs) (i32.shl (local.get $j) (i32.const 2)))) (i32.const 3))))
        (local.set $o3 (i32.add (local.get $dz) (i32.shl (i32.load offset=12 (i32.add (local.get $outs) (i32.shl (local.get $j) (i32.const 2)))) (i32.const 3))))
        (local.set $s0 (v128.const i64x2 0 0))
        (local.set $s1 (v128.const i64x2 0 0))
        (local.set $s2 (v128.const i64x2 0 0))
        (local.set $s3 (v128.const i64x2 0 0))
        (local.set $f (i32.const 0))
        (loop $channels
          (local.set $d0 (v128.load (i32.add (local.get $o0) (local.get $f))))
          (local.set $d1 (v128.load (i32.add (local.get $o1) (local.get $f))))
          (local.set $d2 (v128.load (i32.add (local.get $o2) (local.get $f))))
          (local.set $d3 (v128.load (i32.add (local.get $o3) (local.get $f))))
          (local.set $wf (v128.load (i32.add (local.get $w) (local.get $f))))
          (v128.store (i32.add (local.get $dw) (local.get $f))
            (f64x2.add
              (v128.load (i32.add (local.get $dw) (local.get $f)))
              (f64x2.add
                (f64x2.add (f64x2.mul (local.get $a0) (local.get $d0)) (f64x2.mul (local.get $a1) (local.get $d1)))
                (f64x2.add (f64x2.mul (local.get $a2) (local.get $d2)) (f64x2.mul (local.get $a3) (local.get $d3))))))
          (local.set $s0 (f64x2.add (local.get $s0) (f64x2.mul (local.get $wf) (local.get $d0))))
          (local.set $s1 (f64x2.add (local.get $s1) (f64x2.mul (local.get $wf) (local.get $d1))))
          (local.set $s2 (f64x2.add (local.get $s2) (f64x2.mul (local.get $wf) (local.get $d2))))
          (local.set $s3 (f64x2.add (local.get $s3) (f64x2.mul (local.get $wf) (local.get $d3))))
          (local.set $f (i32.add (local.get $f) (i32.const 16)))
          (br_if $channels (i32.lt_u (local.get $f) (local.get $end))))
        (if (local.get $dx)
          (then
            (local.set $at (i32.add (local.get $ins) (i32.shl (local.get $j) (i32.const 2))))
            (call $add_to (local.get $dx) (i32.load (local.get $at)) (local.get $s0))
            (call $add_to (local.get $dx) (i32.load offset=4 (local.get $at)) (local.get $s1))
            (call $add_to (local.get $dx) (i32.load offset=8 (local.get $at)) (local.get $s2))
            (call $add_to (local.get $dx) (i32.load offset=12 (local.get $at)) (local.get $s3))))
        (local.set $j (i32.add (local.get $j) (i32.const 4)))
        (br $groups)))
    (block $rest_done
      (loop $rest
        (br_if $rest_done (i32.ge_s (local.get $j) (local.get $m)))
        (local.set $a0 (v128.load64_splat (i32.add (local.get $a) (i32.shl (local.get $j) (i32.const 3)))))
        (local.set $o0 (i32.add (local.get $dz) (i32.shl (i32.load (i32.add (local.get $outs) (i32.shl (local.get $j) (i32.const 2)))) (i32.const 3))))
        (local.set $s0 (v128.const i64x2 0 0))
        (local.set $f (i32.const 0))
        (loop $channels1
          (local.set $d0 (v128.load (i32.add (local.get $o0) (local.get $f))))
          (v128.store (i32.add (local.get $dw) (local.get $f))
            (f64x2.add (v128.load (i32.add (local.get $dw) (local.get $f))) (f64x2.mul (local.get $a0) (local.get $d0))))
          (local.set $s0 (f64x2.add (local.get $s0)
            (f64x2.mul (v128.load (i32.add (local.get $w) (local.get $f))) (local.get $d0))))
          (local.set $f (i32.add (local.get $f) (i32.const 16)))
          (br_if $channels1 (i32.lt_u (local.get $f) (local.get $end))))
        (if (local.get $dx)
          (then
            (call $add_to (local.get $dx)
              (i32.load (i32.add (local.get $ins) (i32.shl (local.get $j) (i32.const 2)))) (local.get $s0))))
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br $rest))))

  ;; dx[index] += (lane 0 + lane 1) of s.
  (func $add_to (param $dx i32) (param $index i32) (param $s v128)
    (local $at i32)
    (local.set $at (i32.add (local.get $dx) (i32.shl (local.get $index) (i32.const 3))))
    (f64.store (local.get $at)
      (f64.add (f64.load (local.get $at))
        (f64.add (f64x2.extract_lane 0 (local.get $s)) (f64x2.extract_lane 1 (local.get $s))))))
)
