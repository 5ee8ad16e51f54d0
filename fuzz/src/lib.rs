//! Checks shared by Quiver's fuzz targets (`fuzz_targets/`), kept here so each target
//! reads as the property it states.

use std::fmt::Debug;

use bytes::BytesMut;
use quiver_protocol::frame::{self, LENGTH_PREFIX_LEN};
use serde::{Serialize, de::DeserializeOwned};

/// Decodes `body` as an `M`; when that succeeds, encoding the message and decoding it
/// again must give the same message, and encoding that one the same bytes.
///
/// Returns the decoded message, if any, for further checks.
pub fn check_round_trip<M>(body: &[u8]) -> Option<M>
where
    M: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let msg = frame::decode_body::<M>(body).ok()?;
    let encoded = encode_body(&msg);
    let again = frame::decode_body::<M>(&encoded)
        .unwrap_or_else(|e| panic!("{msg:?} encodes to bytes that do not decode: {e}"));
    assert_eq!(again, msg, "a decoded message changed through a round trip");
    assert_eq!(
        encode_body(&again),
        encoded,
        "a message encodes to different bytes the second time"
    );
    Some(again)
}

/// The body of `msg`'s frame, without its length prefix.
fn encode_body<M: Serialize + Debug>(msg: &M) -> Vec<u8> {
    let mut buf = BytesMut::new();
    frame::encode(msg, &mut buf).unwrap_or_else(|e| panic!("{msg:?} does not encode: {e}"));
    buf[LENGTH_PREFIX_LEN..].to_vec()
}

#[path = "../../protocol/tests/support/reference.rs"]
mod reference;
pub use reference::{reference_is_valid, reference_matches};
