;; Hostile: a component that instantiates one core module 17 times, one
;; more than a pool slot provides. Were it admitted, a few of it would take
;; every other tenant's core instances; the host refuses it at registration
;; as `invalid-module`, naming the numbers.
(component
  (core module $m
    (func (export "f")))
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
  (core instance $i16 (instantiate $m))
  (core instance $i17 (instantiate $m))
)
