//! Links: store-and-forward between brokers (docs/links.md).
//!
//! A link is a task beside the listeners: a client of the remote broker (the SDK, as
//! any application) and of the local [`Broker`] at once. An `out` link reads local
//! topics like a subscriber and forwards them (`out.rs`); an `in` link subscribes to
//! the remote's topics and stores them here (`inbound.rs`). Both store through
//! `Forward`: the destination keeps a mark per origin topic in the same commit as the
//! records, so nothing is stored twice however often a batch is sent again, and the
//! link resumes at the destination's mark after any crash or outage.
//!
//! This module is the registry ([`Links`], the broker's [`LinkControl`]): links are
//! stored (`storage` keeps their records and cursors), started at start-up, and each
//! runs in a loop that connects, forwards until something fails, and tries again with
//! growing delays (slowly when the remote refuses its credentials or grants), its state
//! in `status.rs` for `link describe`.

mod inbound;
mod jetstream;
mod out;
mod spec;
mod status;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use quiver_client::{Client, ErrorCode, Reconnect};
use quiver_protocol::{
    JetStreamRemote, LinkAuth, LinkDirection, LinkInfo, LinkSpec, LinkState, TopicName,
    TopicPattern,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::broker::{Broker, BrokerError, LinkControl};
use crate::storage::LinkRecord;
pub use spec::spec_of;
use status::Status;

/// The first delay after a failure; it doubles up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest delay between attempts, unless the remote refused the link.
const MAX_DELAY: Duration = Duration::from_secs(5);
/// The delay after the remote refused the link's credentials or grants: trying again
/// at once would only fill both logs.
const REFUSED_DELAY: Duration = Duration::from_secs(30);
/// The most brokers a record may have passed through before it is not forwarded on.
pub(crate) const MAX_HOPS: usize = 8;

/// Every link of this broker.
#[derive(Debug)]
pub struct Links {
    /// Weak: the broker holds the links (its `LinkControl`), and a cycle would keep
    /// its storage open after the server stops.
    broker: Weak<Broker>,
    running: Mutex<BTreeMap<String, Running>>,
    shutdown: CancellationToken,
}

#[derive(Debug)]
struct Running {
    record: LinkRecord,
    status: Arc<Status>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Running {
    fn info(&self) -> LinkInfo {
        self.status.describe(redacted(&self.record.spec))
    }
}

impl Links {
    /// Starts the stored links, after bringing in those the config declares (a
    /// declared link replaces a stored one of its name).
    pub async fn start(
        broker: Arc<Broker>,
        declared: Vec<LinkSpec>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, BrokerError> {
        let links = Arc::new(Self {
            broker: Arc::downgrade(&broker),
            running: Mutex::new(BTreeMap::new()),
            shutdown,
        });
        let mut stored: BTreeMap<String, LinkRecord> = broker
            .storage()
            .links()?
            .into_iter()
            .map(|r| (r.spec.name.clone(), r))
            .collect();
        for spec in declared {
            validate(&spec)?;
            let paused = stored.get(&spec.name).is_some_and(|r| r.paused);
            let record = LinkRecord { spec, paused };
            if stored.get(&record.spec.name) != Some(&record) {
                broker.storage().put_link(record.clone(), false).await?;
            }
            stored.insert(record.spec.name.clone(), record);
        }
        for record in stored.into_values() {
            links.launch(record);
        }
        broker.set_links(Arc::clone(&links) as Arc<dyn LinkControl>);
        Ok(links)
    }

    fn broker(&self) -> Result<Arc<Broker>, BrokerError> {
        self.broker
            .upgrade()
            .ok_or_else(|| BrokerError::InvalidArgument("the broker is stopping".into()))
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Running>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a link's task (unless it is paused) and registers it.
    fn launch(&self, record: LinkRecord) {
        let status = Arc::new(Status::new(record.paused));
        let stop = self.shutdown.child_token();
        let broker = self.broker.upgrade();
        let task = broker.filter(|_| !record.paused).map(|broker| {
            let span =
                info_span!("link", name = %record.spec.name, direction = %record.spec.direction);
            tokio::spawn(
                run(
                    broker,
                    record.spec.clone(),
                    Arc::clone(&status),
                    stop.clone(),
                )
                .instrument(span),
            )
        });
        let running = Running {
            record,
            status,
            stop,
            task,
        };
        if let Some(old) = self
            .lock()
            .insert(running.record.spec.name.clone(), running)
        {
            old.stop.cancel();
        }
    }

    /// Stops a link's task and waits for it to end.
    async fn stop(&self, name: &str) -> Option<LinkRecord> {
        let running = self.lock().remove(name)?;
        running.stop.cancel();
        if let Some(task) = running.task {
            let _ = task.await;
        }
        Some(running.record)
    }

    /// Waits for every link's task to end (after the shutdown token).
    pub async fn stopped(&self) {
        let tasks: Vec<JoinHandle<()>> = self
            .lock()
            .values_mut()
            .filter_map(|r| r.task.take())
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    }
}

impl LinkControl for Links {
    fn create(&self, spec: LinkSpec) -> BoxFuture<'_, Result<LinkInfo, BrokerError>> {
        async move {
            validate(&spec)?;
            let record = LinkRecord {
                spec,
                paused: false,
            };
            self.broker()?.storage().put_link(record.clone(), true).await?;
            info!(link = %record.spec.name, to = ?record.spec.to, direction = %record.spec.direction, topics = %record.spec.topics, "link created");
            let name = record.spec.name.clone();
            self.launch(record);
            self.describe(&name)
        }
        .boxed()
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        async move {
            // Stopped first, so that it writes no cursor after its deletion.
            let record = self
                .stop(name)
                .await
                .ok_or_else(|| BrokerError::LinkNotFound(name.to_owned()))?;
            let deleted = match self.broker() {
                Ok(broker) => broker.storage().delete_link(name.to_owned()).await,
                Err(e) => return Err(e),
            };
            if let Err(e) = deleted {
                self.launch(record);
                return Err(e.into());
            }
            info!(link = %name, "link deleted");
            Ok(())
        }
        .boxed()
    }

    fn pause<'a>(
        &'a self,
        name: &'a str,
        paused: bool,
    ) -> BoxFuture<'a, Result<LinkInfo, BrokerError>> {
        async move {
            let record = self
                .lock()
                .get(name)
                .map(|r| r.record.clone())
                .ok_or_else(|| BrokerError::LinkNotFound(name.to_owned()))?;
            if record.paused != paused {
                let record = LinkRecord { paused, ..record };
                self.broker()?
                    .storage()
                    .put_link(record.clone(), false)
                    .await?;
                self.stop(name).await;
                self.launch(record);
                info!(link = %name, paused, "link paused or resumed");
            }
            self.describe(name)
        }
        .boxed()
    }

    fn describe(&self, name: &str) -> Result<LinkInfo, BrokerError> {
        let running = self.lock();
        let link = running
            .get(name)
            .ok_or_else(|| BrokerError::LinkNotFound(name.to_owned()))?;
        let mut info = link.info();
        if link.record.spec.direction == LinkDirection::Out
            && let Ok(broker) = self.broker()
        {
            out::refresh_lag(&broker, &mut info);
        }
        Ok(info)
    }

    fn list(&self) -> Vec<LinkInfo> {
        let names: Vec<String> = self.lock().keys().cloned().collect();
        names
            .iter()
            .filter_map(|name| self.describe(name).ok())
            .collect()
    }
}

/// Checks a link's spec: names, pattern, addresses and settings.
pub fn validate(spec: &LinkSpec) -> Result<(), BrokerError> {
    let invalid = |what: String| Err(BrokerError::InvalidArgument(what));
    if let Err(source) = TopicName::parse(&spec.name) {
        return invalid(format!(
            "invalid link name `{}`: {source} (link names follow the topic-name grammar)",
            spec.name
        ));
    }
    TopicPattern::parse(&spec.topics).map_err(|source| BrokerError::InvalidPattern {
        pattern: spec.topics.clone(),
        source,
    })?;
    if !spec.prefix.is_empty()
        && let Err(source) = TopicName::parse(&format!("{}x", spec.prefix))
    {
        return invalid(format!(
            "prefix `{}` cannot start a topic name: {source}",
            spec.prefix
        ));
    }
    if spec.to.is_empty() {
        return invalid("a link needs the remote's address (--to HOST:PORT)".into());
    }
    match &spec.jetstream {
        Some(remote) => validate_jetstream(spec, remote)?,
        None => {
            for addr in &spec.to {
                if addr.contains("://") {
                    return invalid(format!(
                        "`{addr}` is a URL: a Quiver remote is HOST:PORT; a JetStream remote \
                         also needs --stream"
                    ));
                }
                if addr
                    .rsplit_once(':')
                    .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
                {
                    return invalid(format!("`{addr}` is not HOST:PORT"));
                }
            }
            if let LinkAuth::UserPassword { .. } | LinkAuth::Credentials(_) = spec.auth {
                return invalid(
                    "a user and password or a credentials file are for JetStream remotes \
                     (--stream)"
                        .into(),
                );
            }
        }
    }
    if spec.max_rate == Some(0) {
        return invalid("--max-rate must be at least 1 record per second".into());
    }
    if spec.direction == LinkDirection::In && !spec.pipeline.is_empty() {
        return invalid(
            "plugins run on an `out` link before forwarding; on an `in` link, attach them to \
             the local topics (ingress plugins apply to forwarded records)"
                .into(),
        );
    }
    if let LinkAuth::Certificate { .. } = spec.auth
        && spec.ca.is_none()
    {
        return invalid("a link authenticating by certificate needs the remote's CA (--ca)".into());
    }
    Ok(())
}

/// Checks what a JetStream remote adds: its URLs, stream name and subject prefix.
fn validate_jetstream(spec: &LinkSpec, remote: &JetStreamRemote) -> Result<(), BrokerError> {
    let invalid = |what: String| Err(BrokerError::InvalidArgument(what));
    for url in &spec.to {
        let rest = ["nats://", "tls://"]
            .iter()
            .find_map(|scheme| url.strip_prefix(scheme));
        let Some(rest) = rest else {
            return invalid(format!(
                "`{url}` is not a NATS server URL (nats://HOST:PORT or tls://HOST:PORT)"
            ));
        };
        let hostport = rest.rsplit_once('@').map_or(rest, |(_, hostport)| hostport);
        if hostport
            .rsplit_once(':')
            .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            return invalid(format!("`{url}` is not nats://HOST:PORT"));
        }
    }
    if remote.stream.contains('.') || TopicName::parse(&remote.stream).is_err() {
        return invalid(format!(
            "`{}` is not a stream name (letters, digits, `_` and `-`)",
            remote.stream
        ));
    }
    if !remote.subject_prefix.is_empty()
        && let Err(source) = TopicName::parse(&remote.subject_prefix)
    {
        return invalid(format!(
            "subject prefix `{}` is not dot-separated tokens: {source}",
            remote.subject_prefix
        ));
    }
    if let Some(setup) = remote.create
        && !(1..=5).contains(&setup.replicas)
    {
        return invalid(format!(
            "--replicas {} is not between 1 and 5",
            setup.replicas
        ));
    }
    Ok(())
}

/// The spec with its secrets replaced.
fn redacted(spec: &LinkSpec) -> LinkSpec {
    let auth = match &spec.auth {
        LinkAuth::Anonymous => LinkAuth::Anonymous,
        LinkAuth::Token(_) => LinkAuth::Token("(redacted)".into()),
        LinkAuth::Certificate { cert, .. } => LinkAuth::Certificate {
            cert: cert.clone(),
            key: "(redacted)".into(),
        },
        LinkAuth::UserPassword { user, .. } => LinkAuth::UserPassword {
            user: user.clone(),
            password: "(redacted)".into(),
        },
        LinkAuth::Credentials(_) => LinkAuth::Credentials("(redacted)".into()),
    };
    LinkSpec {
        auth,
        ..spec.clone()
    }
}

/// Why one attempt at running a link ended.
#[derive(Debug)]
pub(crate) struct Failed {
    /// What to show.
    pub(crate) error: String,
    /// The remote refused the link's credentials or grants.
    pub(crate) refused: bool,
    /// Whether the attempt got anywhere (the delays start again from the first).
    pub(crate) progressed: bool,
}

impl Failed {
    pub(crate) fn new(error: impl std::fmt::Display, progressed: bool) -> Self {
        Self {
            error: error.to_string(),
            refused: false,
            progressed,
        }
    }

    /// From an SDK error: refused when the remote says who or what is not allowed.
    pub(crate) fn client(error: &quiver_client::Error, progressed: bool) -> Self {
        let refused = matches!(
            error.code(),
            Some(ErrorCode::Unauthenticated | ErrorCode::Forbidden)
        );
        Self {
            error: error.to_string(),
            refused,
            progressed,
        }
    }
}

/// Runs a link until it is stopped: connects, forwards until something fails, and
/// tries again after a delay.
async fn run(broker: Arc<Broker>, spec: LinkSpec, status: Arc<Status>, stop: CancellationToken) {
    let mut delay = FIRST_DELAY;
    loop {
        let attempt = async {
            if spec.jetstream.is_some() {
                return jetstream::run(&broker, &spec, &status).await;
            }
            let client = match connect(&spec).await {
                Ok(client) => client,
                Err(e) => return Failed::client(&e, false),
            };
            let run = match spec.direction {
                LinkDirection::Out => out::run(&broker, &spec, &client, &status).boxed(),
                LinkDirection::In => inbound::run(&broker, &spec, &client, &status).boxed(),
            };
            let ended = run.await;
            client.close().await;
            ended
        };
        let failed = tokio::select! {
            failed = attempt => failed,
            () = stop.cancelled() => return,
        };
        if failed.progressed {
            delay = FIRST_DELAY;
        }
        let wait = if failed.refused { REFUSED_DELAY } else { delay };
        warn!(error = %failed.error, retry_in = ?wait, "link interrupted");
        status.failed(LinkState::BackingOff {
            error: failed.error,
            retry_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        });
        tokio::select! {
            () = tokio::time::sleep(jitter(wait)) => {}
            () = stop.cancelled() => return,
        }
        delay = (delay * 2).min(MAX_DELAY);
    }
}

/// `delay`, less up to a fifth at random, so that links of many edges that lost the
/// same hub do not all come back in the same instant.
fn jitter(delay: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    delay - delay / 5 * u32::from(byte[0]) / 255
}

/// A client of the remote, as the spec says: its addresses in turn, its trust and
/// credentials. It does not reconnect by itself: the link does, and resumes at the
/// destination's mark.
async fn connect(spec: &LinkSpec) -> Result<Client, quiver_client::Error> {
    let mut builder = Client::builder()
        .client_name(format!("quiver-link/{}", spec.name))
        .reconnect(Reconnect::Never)
        .connect_timeout(Duration::from_secs(5));
    if let Some(ca) = &spec.ca {
        builder = builder.ca_pem(ca.as_bytes())?;
    }
    builder = match &spec.auth {
        LinkAuth::Anonymous => builder,
        LinkAuth::Token(token) => builder.token(token.clone()),
        LinkAuth::Certificate { cert, key } => {
            builder.client_cert_pem(cert.as_bytes(), key.as_bytes())?
        }
        // Refused by `validate` for a Quiver remote.
        LinkAuth::UserPassword { .. } | LinkAuth::Credentials(_) => builder,
    };
    builder.connect_to(spec.to.iter().map(String::as_str)).await
}
