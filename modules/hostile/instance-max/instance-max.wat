;; A command component at the per-slot maximum: it instantiates one core
;; module 16 times (a pool slot provides 16 core instances) and exits
;; successfully. It must run on a host of any pool size, alongside others.
(component
  (core module $m
    (func (export "run") (result i32) i32.const 0))
  (core instance $i1 (instantiate $m))
  (core instance $i2 (instantiate $m))
  (core instance $i3 (instantiate $m))
  (core instance $i4 (instantiate $m))
  (core instance $i5 (instantiate $m))
  (core instance $i6 (instantiate $m))
  (core instance $i7 (instantiate $m))
  (core instance $i8 (instantiate $m))
  (core instance $i9 (instantiate $m))
  (core instance $i10 (instantiate $m))
  (core instance $i11 (instantiate $m))
  (core instance $i12 (instantiate $m))
  (core instance $i13 (instantiate $m))
  (core instance $i14 (instantiate $m))
  (core instance $i15 (instantiate $m))
  (core instance $main (instantiate $m))
  (func $run (result (result)) (canon lift (core func $main "run")))
  (instance $cli (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $cli))
)
