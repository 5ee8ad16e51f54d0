//! A stream's two halves as the rest of the client uses them: client frames out,
//! server frames in, with transport and decoding failures as [`Error`]s.

use futures::StreamExt;
use quiver_protocol::codec::Codec;
use quiver_protocol::{ClientFrame, ErrorCode, ServerFrame, WireError, frame};
use tokio_util::codec::FramedRead;

use super::pending::encode;
use crate::error::{Error, Result};

/// The largest frame this client accepts from a server.
const MAX_INCOMING_FRAME: usize = frame::DEFAULT_MAX_FRAME_LEN;

/// Frames from the server on one stream.
#[derive(Debug)]
pub(crate) struct FrameReader(FramedRead<quinn::RecvStream, Codec<ServerFrame, ClientFrame>>);

impl FrameReader {
    pub(crate) fn new(recv: quinn::RecvStream) -> Self {
        Self(FramedRead::new(recv, Codec::new(MAX_INCOMING_FRAME)))
    }

    /// The next frame. Cancel-safe: no frame is lost if the future is dropped.
    pub(crate) async fn next(&mut self) -> Result<ServerFrame> {
        match self.0.next().await {
            Some(Ok(Ok(frame))) => Ok(frame),
            Some(Ok(Err(e))) => Err(Error::Protocol(e.to_string())),
            Some(Err(e)) => Err(reset_code(&e).map_or_else(
                || Error::ConnectionLost(e.to_string()),
                |code| Error::Server(WireError::new(code, "the server reset the stream")),
            )),
            None => Err(Error::ConnectionLost("the server closed the stream".into())),
        }
    }
}

/// The error a server meant by resetting a stream: it resets one, with the error's code,
/// when the client does not take its last error frame in time.
fn reset_code(error: &std::io::Error) -> Option<ErrorCode> {
    match error.get_ref()?.downcast_ref::<quinn::ReadError>()? {
        quinn::ReadError::Reset(code) => u16::try_from(code.into_inner()).ok().map(ErrorCode::from),
        _ => None,
    }
}

/// Frames to the server on one stream.
#[derive(Debug)]
pub(crate) struct FrameSender(quinn::SendStream);

impl FrameSender {
    pub(crate) fn new(send: quinn::SendStream) -> Self {
        Self(send)
    }

    /// Encodes and writes one frame.
    pub(crate) async fn send(&mut self, frame: &ClientFrame) -> Result<()> {
        self.0
            .write_all(&encode(frame)?)
            .await
            .map_err(|e| Error::ConnectionLost(e.to_string()))
    }

    /// Ends the stream after what was written.
    pub(crate) fn finish(&mut self) {
        let _ = self.0.finish();
    }

    /// The underlying stream, for the control stream's writer task.
    pub(crate) fn into_inner(self) -> quinn::SendStream {
        self.0
    }
}
