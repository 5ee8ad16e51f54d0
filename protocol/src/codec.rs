//! tokio-util `Decoder`/`Encoder` adapters for [`crate::frame`] (feature `codec`).
//!
//! Decoding yields `Result<In, FrameError>` items rather than failing the stream: a bad
//! frame is a value the receiver answers, while the stream stays usable. Only transport
//! errors (`io::Error`) end a `FramedRead`.

use std::io;
use std::marker::PhantomData;

use bytes::BytesMut;
use serde::{Serialize, de::DeserializeOwned};

use crate::frame::{self, FrameDecoder, FrameError};

/// Reads frames of `In` and writes frames of `Out`.
#[derive(Debug)]
pub struct Codec<In, Out> {
    decoder: FrameDecoder,
    _messages: PhantomData<fn(Out) -> In>,
}

impl<In, Out> Codec<In, Out> {
    /// A codec that refuses incoming frames longer than `max_frame_len`.
    pub fn new(max_frame_len: usize) -> Self {
        Self {
            decoder: FrameDecoder::new(max_frame_len),
            _messages: PhantomData,
        }
    }
}

impl<In, Out> Clone for Codec<In, Out> {
    fn clone(&self) -> Self {
        Self::new(self.decoder.max_len())
    }
}

impl<In: DeserializeOwned, Out> tokio_util::codec::Decoder for Codec<In, Out> {
    type Item = Result<In, FrameError>;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Self::Item>> {
        Ok(self.decoder.decode(src).transpose())
    }
}

impl<In, Out: Serialize> tokio_util::codec::Encoder<Out> for Codec<In, Out> {
    type Error = io::Error;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> io::Result<()> {
        frame::encode(&item, dst).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}
