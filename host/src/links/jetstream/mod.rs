//! Links whose remote is a NATS JetStream stream (docs/scaling.md): the same link, its
//! cursor, status and backoff, with JetStream on the other side instead of a Quiver
//! broker. `out.rs` publishes local topics to subjects `P.<topic>` in atomic batches;
//! `inbound.rs` feeds local topics from a durable consumer.
//!
//! The stream stands where a remote broker would: it has an id (derived from its
//! name, [`stream_id`]) that marks, provenance headers and loop checks use as they use
//! a broker's, so that a record that came in from the stream is never published back
//! to it.
//!
//! What can be wrong on the remote is told in words an operator can act on: no
//! JetStream, the stream missing, its subjects not covering the link's, a denied
//! permission (the server's own `-ERR` text is kept, see [`ServerErrors`]), no quorum.

mod inbound;
mod out;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::context::{AccountErrorKind, GetStreamErrorKind};
use async_nats::jetstream::{self, stream};
use async_nats::{ConnectErrorKind, ConnectOptions, Event};
use quiver_protocol::{
    JetStreamRemote, LinkAuth, LinkDirection, LinkSpec, LinkState, StreamRetention, StreamStorage,
};
use sha2::{Digest, Sha256};
use tracing::info;

use super::Failed;
use super::status::Status;
use crate::broker::Broker;

/// How long a JetStream request (a batch's commit, a stream lookup) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs one attempt of a JetStream link: connects, checks (or creates) the stream,
/// and forwards or pulls until something fails.
pub(super) async fn run(broker: &Arc<Broker>, spec: &LinkSpec, status: &Arc<Status>) -> Failed {
    let Some(remote) = &spec.jetstream else {
        return Failed::new("not a JetStream link", false);
    };
    let errors = ServerErrors::default();
    // The client, for the connection events to name the server reached; emptied when
    // the attempt ends (the client holds the callback that holds this).
    let connected: Connected = Arc::new(Mutex::new(None));
    let client = match connect(
        spec,
        errors.clone(),
        Arc::clone(&connected),
        Arc::clone(status),
    )
    .await
    {
        Ok(client) => client,
        Err(failed) => return failed,
    };
    *lock(&connected) = Some(client.clone());
    let mut context = jetstream::new(client.clone());
    context.set_timeout(REQUEST_TIMEOUT);
    let stream = match stream_for(&context, spec, remote).await {
        Ok(stream) => stream,
        Err(failed) => return errors.explain(failed),
    };
    status.set_remote(stream_id(&remote.stream));
    status.set_state(connected_to(&client));
    let failed = match spec.direction {
        LinkDirection::Out => {
            out::run(broker, spec, remote, &client, &context, &stream, status).await
        }
        LinkDirection::In => inbound::run(broker, spec, remote, &stream, status, &errors).await,
    };
    lock(&connected).take();
    // Drained with a deadline: with every server gone it would wait for one to return.
    let _ = tokio::time::timeout(Duration::from_secs(1), client.drain()).await;
    errors.explain(failed)
}

/// The client of a running attempt, if it is running.
type Connected = Arc<Mutex<Option<async_nats::Client>>>;

fn lock(connected: &Connected) -> std::sync::MutexGuard<'_, Option<async_nats::Client>> {
    connected.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The state naming the server `client` is connected to.
fn connected_to(client: &async_nats::Client) -> LinkState {
    let server = client.server_info();
    LinkState::Connected {
        addr: format!("{} ({}:{})", server.server_name, server.host, server.port),
    }
}

/// The id a stream stands under where a broker id would be (marks, provenance, loop
/// checks): the first 16 bytes of SHA-256 over `jetstream:` and its name.
pub(crate) fn stream_id(stream: &str) -> u128 {
    let digest = Sha256::digest(format!("jetstream:{stream}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(bytes)
}

/// What the servers said on their own (`-ERR` lines: permission violations above
/// all), kept so that a timeout can be explained by them, and announced, so that a
/// consumer waiting for messages a permission withholds does not wait in silence.
#[derive(Debug, Clone, Default)]
pub(super) struct ServerErrors(Arc<ServerErrorsInner>);

#[derive(Debug, Default)]
struct ServerErrorsInner {
    last: Mutex<Option<String>>,
    raised: tokio::sync::Notify,
}

impl ServerErrors {
    fn set(&self, error: String) {
        *self.0.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
        self.0.raised.notify_waiters();
    }

    fn take(&self) -> Option<String> {
        self.0
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Resolves once a server has reported an error (at once if one has and was not
    /// taken yet).
    pub(super) async fn raised(&self) {
        let notified = self.0.raised.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self
            .0
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
        {
            return;
        }
        notified.await;
    }

    /// `failed`, with what the server said meanwhile; a permission violation makes it
    /// a refusal (retried slowly).
    fn explain(&self, mut failed: Failed) -> Failed {
        if let Some(said) = self.take() {
            if said.to_lowercase().contains("violation") {
                // The refusal is the cause; what failed after it is only its effect.
                failed.refused = true;
                failed.error = format!("the server refused: {said} ({})", failed.error);
            } else {
                failed.error = format!("{} (the server said: {said})", failed.error);
            }
        }
        failed
    }
}

/// A client of the servers `to` lists, with the link's credentials and trust. It
/// reconnects by itself across the cluster's servers; the link's attempt fails over
/// to the outer loop only when a request does.
/// `client`, while the attempt runs, is where the status learns which server a
/// reconnection reached.
async fn connect(
    spec: &LinkSpec,
    errors: ServerErrors,
    client: Connected,
    status: Arc<Status>,
) -> Result<async_nats::Client, Failed> {
    let mut options = ConnectOptions::new()
        .name(format!("quiver-link/{}", spec.name))
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(REQUEST_TIMEOUT))
        .event_callback(move |event| {
            let (errors, client, status) =
                (errors.clone(), Arc::clone(&client), Arc::clone(&status));
            async move {
                match event {
                    Event::ServerError(error) => errors.set(error.to_string()),
                    Event::Connected => {
                        if let Some(client) = lock(&client).as_ref() {
                            status.set_state(connected_to(client));
                        }
                    }
                    _ => {}
                }
            }
        });
    options = match &spec.auth {
        LinkAuth::Anonymous => options,
        LinkAuth::Token(token) => options.token(token.clone()),
        LinkAuth::UserPassword { user, password } => {
            options.user_and_password(user.clone(), password.clone())
        }
        LinkAuth::Credentials(creds) => options
            .credentials(creds)
            .map_err(|e| Failed::new(format!("the credentials file is unusable: {e}"), false))?,
        // Presented through the TLS configuration below (a certificate needs a CA).
        LinkAuth::Certificate { .. } => options,
    };
    if let Some(ca) = &spec.ca {
        options = options.require_tls(true).tls_client_config(
            crate::transport::tls::client_config(ca, client_cert(&spec.auth))
                .map_err(|e| Failed::new(e, false))?,
        );
    }
    let addrs: Vec<async_nats::ServerAddr> = spec
        .to
        .iter()
        .map(|url| url.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| Failed::new(format!("a server URL is invalid: {e}"), false))?;
    options.connect(addrs).await.map_err(|e| {
        let refused = matches!(e.kind(), ConnectErrorKind::AuthorizationViolation);
        Failed {
            error: format!("cannot connect to {}: {e}", spec.to.join(", ")),
            refused,
            progressed: false,
        }
    })
}

/// The client certificate and key (PEM) a link presents, if it has them.
fn client_cert(auth: &LinkAuth) -> Option<(&str, &str)> {
    match auth {
        LinkAuth::Certificate { cert, key } => Some((cert, key)),
        _ => None,
    }
}

/// The link's stream: checked to exist and to cover the link's subjects, or created.
async fn stream_for(
    context: &jetstream::Context,
    spec: &LinkSpec,
    remote: &JetStreamRemote,
) -> Result<stream::Stream, Failed> {
    let subjects = remote.subject(&format!("{}{}", out_prefix(spec), spec.topics));
    let name = &remote.stream;
    if let Err(e) = context.query_account().await {
        return Err(Failed::new(
            match e.kind() {
                AccountErrorKind::JetStreamUnavailable => format!(
                    "the server has no JetStream (enable it: `jetstream {{}}` in its config, \
                     or -js): {e}"
                ),
                _ => remote_error(name, &e.to_string()),
            },
            false,
        ));
    }
    let mut stream = match context.get_stream(name).await {
        Ok(stream) => stream,
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(error)
                if error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                let Some(setup) = remote.create else {
                    return Err(Failed::new(
                        format!(
                            "stream `{name}` does not exist: create it (with subjects covering \
                             `{subjects}`), or let the link create it (--create-stream)"
                        ),
                        false,
                    ));
                };
                let config = stream::Config {
                    name: name.clone(),
                    subjects: vec![subjects.clone()],
                    num_replicas: usize::from(setup.replicas),
                    storage: match setup.storage {
                        StreamStorage::File => stream::StorageType::File,
                        StreamStorage::Memory => stream::StorageType::Memory,
                    },
                    retention: match setup.retention {
                        StreamRetention::Limits => stream::RetentionPolicy::Limits,
                        StreamRetention::Interest => stream::RetentionPolicy::Interest,
                        StreamRetention::WorkQueue => stream::RetentionPolicy::WorkQueue,
                    },
                    allow_atomic_publish: true,
                    ..stream::Config::default()
                };
                let created = context.create_stream(config).await.map_err(|e| {
                    Failed::new(format!("cannot create stream `{name}`: {e}"), false)
                })?;
                info!(stream = %name, subjects, replicas = setup.replicas, "stream created for the link");
                created
            }
            _ => return Err(Failed::new(remote_error(name, &e.to_string()), false)),
        },
    };
    let info = stream
        .info()
        .await
        .map_err(|e| Failed::new(remote_error(name, &e.to_string()), false))?;
    let config = &info.config;
    if !config.subjects.iter().any(|s| covers(s, &subjects)) {
        return Err(Failed::new(
            format!(
                "stream `{name}` takes subjects {:?}, which do not cover the link's `{subjects}`",
                config.subjects
            ),
            false,
        ));
    }
    if spec.direction == LinkDirection::Out && !config.allow_atomic_publish {
        return Err(Failed::new(
            format!(
                "stream `{name}` does not allow atomic batch publishes, which the link needs \
                 to keep each topic's order when a server fails: set `allow_atomic` on it \
                 (nats-server 2.12 or later)"
            ),
            false,
        ));
    }
    Ok(stream)
}

/// The topic prefix an `out` link puts before local topic names (an `in` link puts
/// it before the local ones it creates).
fn out_prefix(spec: &LinkSpec) -> &str {
    match spec.direction {
        LinkDirection::Out => &spec.prefix,
        LinkDirection::In => "",
    }
}

/// A request to the remote's JetStream API that failed, in words: no JetStream at all
/// comes back as "no responders".
pub(super) fn remote_error(stream: &str, error: &str) -> String {
    let lower = error.to_lowercase();
    if lower.contains("no responders")
        || lower.contains("not enabled")
        || lower.contains("resource does not exist")
    {
        format!(
            "the server has no JetStream (enable it: `jetstream {{}}` in its config, or -js): {error}"
        )
    } else if lower.contains("temporarily unavailable")
        || lower.contains("no suitable peers")
        || lower.contains("timed out")
    {
        format!("stream `{stream}` is unavailable (no quorum, or its servers are down): {error}")
    } else {
        format!("stream `{stream}`: {error}")
    }
}

/// Whether every subject matching `filter` also matches the stream subject `subject`
/// (both NATS subjects, with `*` and `>` wildcards).
pub(crate) fn covers(subject: &str, filter: &str) -> bool {
    let mut theirs = subject.split('.');
    let mut ours = filter.split('.');
    loop {
        match (theirs.next(), ours.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(token)) if token != ">" => {}
            (Some(a), Some(b)) if a == b && b != "*" && b != ">" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covering_subjects() {
        assert!(covers(">", "a.b"));
        assert!(covers("edge.>", "edge.sensors.>"));
        assert!(covers("edge.>", "edge.x"));
        assert!(covers("edge.*.t", "edge.a.t"));
        assert!(covers("edge.*.t", "edge.*.t"));
        assert!(covers("a.b", "a.b"));
        assert!(!covers("edge.*", "edge.>"));
        assert!(!covers("edge.*", "edge.a.b"));
        assert!(!covers("edge.a", "edge.*"));
        assert!(!covers("edge.>", "edge"));
        assert!(!covers("other.>", "edge.x"));
        assert!(!covers("a.b.c", "a.b"));
    }

    #[test]
    fn stream_ids_are_stable_and_distinct() {
        assert_eq!(stream_id("EVENTS"), stream_id("EVENTS"));
        assert_ne!(stream_id("EVENTS"), stream_id("EVENTS2"));
    }
}
