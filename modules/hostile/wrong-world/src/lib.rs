//! Hostile: exports `run` with the wrong signature (string -> string).
//! Must be refused as `invalid-module`, naming the export.
wit_bindgen::generate!({ world: "wrong", path: "wit" });

struct Wrong;

impl Guest for Wrong {
    fn run(input: String) -> String {
        input
    }
}

export!(Wrong);
