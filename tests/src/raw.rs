//! A bare QUIC connection speaking frames by hand, for sending what the SDK never
//! would: garbage, oversized frames, wrong versions, messages on the wrong stream.

use std::path::Path;
use std::sync::Arc;

use bytes::BytesMut;
use futures::StreamExt;
use quiver_protocol::codec::Codec;
use quiver_protocol::{
    ALPN, ClientFrame, ClientHello, PROTOCOL_VERSION, ServerFrame, ServerHello, frame,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_util::codec::FramedRead;

/// A QUIC connection to a broker, TLS verified, no handshake sent yet.
#[derive(Debug)]
pub struct RawConnection {
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

/// One bidirectional stream with frame helpers.
#[derive(Debug)]
pub struct RawStream {
    send: quinn::SendStream,
    frames: FramedRead<quinn::RecvStream, Codec<ServerFrame, ClientFrame>>,
}

impl RawConnection {
    /// Connects to `addr` trusting `cert`.
    pub async fn connect(addr: &str, cert: &Path) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(cert).expect("cert file") {
            roots
                .add(cert.expect("PEM certificate"))
                .expect("usable cert");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
        let config = quinn::ClientConfig::new(Arc::new(crypto));
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("literal"))
            .expect("client endpoint");
        let conn = endpoint
            .connect_with(config, addr.parse().expect("socket address"), "localhost")
            .expect("connect starts")
            .await
            .expect("QUIC handshake");
        Self {
            conn,
            _endpoint: endpoint,
        }
    }

    /// Opens a stream if the broker's stream limit allows one now; `None` when the
    /// client would have to wait for the broker to grant more streams.
    pub fn try_open(&self) -> Option<RawStream> {
        use futures::FutureExt;
        let (send, recv) = self.conn.open_bi().now_or_never()?.expect("open a stream");
        Some(RawStream {
            send,
            frames: FramedRead::new(recv, Codec::new(frame::DEFAULT_MAX_FRAME_LEN)),
        })
    }

    /// Opens a stream.
    pub async fn open(&self) -> RawStream {
        let (send, recv) = self.conn.open_bi().await.expect("open a stream");
        RawStream {
            send,
            frames: FramedRead::new(recv, Codec::new(frame::DEFAULT_MAX_FRAME_LEN)),
        }
    }

    /// Opens the control stream and completes the version handshake.
    pub async fn handshake(&self) -> (RawStream, ServerHello) {
        let mut control = self.open().await;
        control
            .send(&ClientFrame::Hello(ClientHello {
                version: PROTOCOL_VERSION,
                client: "raw-test".into(),
                token: None,
            }))
            .await;
        match control.recv().await {
            Some(ServerFrame::Hello(hello)) => (control, hello),
            other => panic!("expected a hello, got {other:?}"),
        }
    }

    /// Resolves when the connection is closed, with the reason.
    pub async fn closed(&self) -> quinn::ConnectionError {
        self.conn.closed().await
    }

    /// Closes the connection at once, as a client that goes away does: nothing sent
    /// and not yet delivered is delivered, and nothing more is read.
    pub fn close(&self) {
        self.conn.close(quinn::VarInt::from_u32(0), b"gone");
    }

    /// Whether the broker lets the client open a unidirectional stream now.
    pub fn can_open_unidirectional(&self) -> bool {
        use futures::FutureExt;
        self.conn.open_uni().now_or_never().is_some()
    }
}

impl RawStream {
    /// Writes raw bytes.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.send
            .write_all(bytes)
            .await
            .expect("write to the stream");
    }

    /// Ends the stream after what was written.
    pub fn finish(&mut self) {
        self.send.finish().expect("the stream is open");
    }

    /// Writes one frame.
    pub async fn send(&mut self, msg: &ClientFrame) {
        let mut buf = BytesMut::new();
        frame::encode(msg, &mut buf).expect("encodable");
        self.send_bytes(&buf).await;
    }

    /// The next frame from the broker; `None` when the stream ends.
    pub async fn recv(&mut self) -> Option<ServerFrame> {
        match self.frames.next().await {
            Some(Ok(Ok(frame))) => Some(frame),
            Some(Ok(Err(e))) => panic!("the broker sent an undecodable frame: {e}"),
            Some(Err(_)) | None => None,
        }
    }
}
