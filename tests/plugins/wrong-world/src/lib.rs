//! A component of another world (it exports `transform`, not `process`): deploying it
//! must fail with a clear error.

wit_bindgen::generate!({ path: "wit", world: "other" });

struct Other;

impl Guest for Other {
    fn transform(input: Vec<u8>) -> Vec<u8> {
        input
    }
}

export!(Other);
