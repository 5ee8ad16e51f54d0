//! Length-prefixed framing: `len: u32 BE | body`, the body a postcard-encoded message.
//!
//! Encoding writes into a caller-owned buffer. Decoding takes bytes from a caller-owned
//! buffer and returns `Ok(None)` while a frame is incomplete.
//!
//! Errors leave the stream in sync: a frame whose length exceeds the limit is skipped
//! (its bytes are discarded as they arrive) and a body that does not decode is consumed,
//! so a receiver can answer with an error and keep reading the next frame.

use bytes::{Buf, BufMut, BytesMut};
use serde::{Serialize, de::DeserializeOwned};

/// Bytes in a frame's length prefix.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// The default limit on a frame's body: a full batch of maximum-size records fits.
pub const DEFAULT_MAX_FRAME_LEN: usize = 64 * 1024 * 1024;

/// Why a frame could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame's length prefix exceeds the limit; its bytes are skipped.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced body length.
        len: usize,
        /// The receiver's limit.
        max: usize,
    },
    /// The body is not a valid message; the frame was consumed.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// A postcard output flavor that appends to any [`BufMut`].
pub(crate) struct BufFlavor<'a, B: BufMut>(pub(crate) &'a mut B);

impl<B: BufMut> postcard::ser_flavors::Flavor for BufFlavor<'_, B> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.put_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.put_u8(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Appends `msg` as one frame to `dst`.
///
/// Fails with [`FrameError::TooLarge`] (and leaves `dst` as it was) when the body does
/// not fit the 4-byte length prefix.
pub fn encode<M: Serialize>(msg: &M, dst: &mut BytesMut) -> Result<(), FrameError> {
    let start = dst.len();
    dst.put_u32(0); // patched below
    let result = postcard::serialize_with_flavor(msg, BufFlavor(&mut *dst));
    let body_len = dst.len() - start - LENGTH_PREFIX_LEN;
    match (result, u32::try_from(body_len)) {
        (Ok(()), Ok(len)) => {
            dst[start..start + LENGTH_PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
            Ok(())
        }
        (Err(e), _) => {
            dst.truncate(start);
            Err(FrameError::Malformed(e.to_string()))
        }
        (Ok(()), Err(_)) => {
            dst.truncate(start);
            Err(FrameError::TooLarge {
                len: body_len,
                max: u32::MAX as usize,
            })
        }
    }
}

/// Decodes frames from a byte stream, keeping the state needed to skip oversized ones.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_len: usize,
    /// Bytes of an oversized frame still to discard.
    skipping: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames whose body is longer than `max_len`.
    pub fn new(max_len: usize) -> Self {
        Self {
            max_len,
            skipping: 0,
        }
    }

    /// The body length limit.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Takes the next whole frame from `src` and decodes it.
    ///
    /// `Ok(None)`: not enough bytes yet. `Err`: this frame was bad and has been (or is
    /// being) consumed; call again for the next one.
    pub fn decode<M: DeserializeOwned>(
        &mut self,
        src: &mut BytesMut,
    ) -> Result<Option<M>, FrameError> {
        if self.skipping > 0 {
            let n = self.skipping.min(src.len());
            src.advance(n);
            self.skipping -= n;
            if self.skipping > 0 {
                return Ok(None);
            }
        }
        let Some(prefix) = src.get(..LENGTH_PREFIX_LEN) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > self.max_len {
            src.advance(LENGTH_PREFIX_LEN);
            let n = len.min(src.len());
            src.advance(n);
            self.skipping = len - n;
            return Err(FrameError::TooLarge {
                len,
                max: self.max_len,
            });
        }
        let frame_len = LENGTH_PREFIX_LEN + len;
        if src.len() < frame_len {
            src.reserve(frame_len - src.len());
            return Ok(None);
        }
        src.advance(LENGTH_PREFIX_LEN);
        let body = src.split_to(len);
        decode_body(&body).map(Some)
    }
}

/// Decodes one frame body (without its length prefix), refusing trailing bytes.
pub fn decode_body<M: DeserializeOwned>(body: &[u8]) -> Result<M, FrameError> {
    let (msg, rest) =
        postcard::take_from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!(
            "{} unexpected bytes after the message",
            rest.len()
        )));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut whole = BytesMut::new();
        encode(&(7u32, "hello".to_string()), &mut whole).unwrap();
        let mut decoder = FrameDecoder::new(1024);
        let mut buf = BytesMut::new();
        for &b in &whole[..whole.len() - 1] {
            buf.put_u8(b);
            assert_eq!(decoder.decode::<(u32, String)>(&mut buf), Ok(None));
        }
        buf.put_u8(whole[whole.len() - 1]);
        assert_eq!(
            decoder.decode::<(u32, String)>(&mut buf),
            Ok(Some((7, "hello".to_string())))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_frame_is_skipped_and_the_next_one_decodes() {
        let mut buf = BytesMut::new();
        encode(&vec![1u8; 100], &mut buf).unwrap();
        encode(&5u8, &mut buf).unwrap();
        let mut decoder = FrameDecoder::new(16);
        // Feed in two parts so the skip spans reads.
        let mut first = buf.split_to(20);
        assert!(matches!(
            decoder.decode::<Vec<u8>>(&mut first),
            Err(FrameError::TooLarge { max: 16, .. })
        ));
        assert_eq!(decoder.decode::<u8>(&mut first), Ok(None));
        assert_eq!(decoder.decode::<u8>(&mut buf), Ok(Some(5)));
    }

    #[test]
    fn malformed_body_is_consumed() {
        let mut buf = BytesMut::new();
        buf.put_u32(2);
        buf.put_slice(&[0xff, 0xff]); // not a valid varint-prefixed string
        encode(&"ok".to_string(), &mut buf).unwrap();
        let mut decoder = FrameDecoder::new(1024);
        assert!(matches!(
            decoder.decode::<String>(&mut buf),
            Err(FrameError::Malformed(_))
        ));
        assert_eq!(decoder.decode::<String>(&mut buf), Ok(Some("ok".into())));
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut buf = BytesMut::new();
        buf.put_u32(2);
        buf.put_slice(&[1, 2]); // a u8 followed by a stray byte
        let mut decoder = FrameDecoder::new(1024);
        assert!(matches!(
            decoder.decode::<u8>(&mut buf),
            Err(FrameError::Malformed(_))
        ));
    }
}
