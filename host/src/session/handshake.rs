//! The first stream of a connection: the client's hello, its authentication, and the
//! broker's hello (or a refusal the client can read before the connection closes).

use std::time::Duration;

use quiver_protocol::{
    ClientFrame, ErrorCode, OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION, ServerFrame, ServerHello,
    WireError,
};
use tracing::{debug, warn};

use super::SessionSettings;
use crate::auth::Access;
use crate::transport::{Connection, FrameStream, Incoming};

/// Reads the client's hello on its first stream, authenticates the client and
/// answers.
pub(super) async fn handshake(
    conn: &Connection,
    settings: &SessionSettings,
) -> Result<(FrameStream, Access), String> {
    let mut stream = conn.accept_stream().await.map_err(|e| e.to_string())?;
    let refusal = match stream.reader.next().await {
        Incoming::Frame(ClientFrame::Hello(hello))
            if (OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&hello.version) =>
        {
            let cert_name = conn.peer_common_name();
            match settings
                .auth
                .authenticate(hello.token.as_deref(), cert_name.as_deref())
            {
                Ok(access) => {
                    let ours = ServerFrame::Hello(ServerHello {
                        // The client's: an older one is served as it is.
                        version: hello.version,
                        server: format!("quiver/{}", env!("CARGO_PKG_VERSION")),
                        limits: settings.limits,
                        principal: access.principal().map(str::to_owned),
                    });
                    stream.writer.send(&ours).await.map_err(|e| e.to_string())?;
                    debug!(client = %hello.client, principal = ?access.principal(), "handshake done");
                    return Ok((stream, access));
                }
                Err(e) => {
                    warn!(client = %hello.client, reason = %e, "authentication failed");
                    WireError::new(ErrorCode::Unauthenticated, e.to_string())
                }
            }
        }
        Incoming::Frame(ClientFrame::Hello(hello)) => WireError::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "this broker speaks protocol versions {OLDEST_PROTOCOL_VERSION} to \
                 {PROTOCOL_VERSION}; the client speaks {} (upgrade the older side)",
                hello.version
            ),
        ),
        Incoming::Frame(_) => WireError::new(
            ErrorCode::UnexpectedMessage,
            "the first frame of a connection must be a Hello",
        ),
        Incoming::Bad(e) => WireError::new(
            WireError::from(&e).code,
            format!(
                "the first frame is not a protocol version {PROTOCOL_VERSION} Hello (a client \
                 of another version?): {e}"
            ),
        ),
        Incoming::End => {
            return Err("the client closed its first stream before saying hello".into());
        }
    };
    // Let the client read the refusal before the connection closes.
    let _ = stream
        .writer
        .send(&ServerFrame::Error(refusal.clone()))
        .await;
    stream.writer.finish_and_wait(Duration::from_secs(2)).await;
    Err(refusal.message)
}
