;; Hostile: grows a funcref table until refused, then traps. Written in WAT
;; because Rust cannot emit `table.grow`. Must end in `memory-limit` (the
;; table limit), and the host must keep serving.
;;
;; Its `run` export has the agent world's type, so it registers as an agent.
(component
  (core module $m
    (table $t 1 funcref)
    (memory (export "memory") 1)
    (func (export "run") (param i32 i32) (result i32)
      (loop $grow
        (br_if $grow
          (i32.ne
            (table.grow $t (ref.null func) (i32.const 1000))
            (i32.const -1))))
      unreachable)
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      i32.const 1024))
  (core instance $i (instantiate $m))
  (type $agent-error (record (field "code" string) (field "message" string)))
  (export $e "agent-error" (type $agent-error))
  (func (export "run") (param "input" (list u8)) (result (result (list u8) (error $e)))
    (canon lift (core func $i "run") (memory (core memory $i "memory")) (realloc (core func $i "realloc")))))
