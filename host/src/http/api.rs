//! The console's JSON API (`/api/…`): what the web console reads and does, as the
//! principal whose token it sends (docs/operations.md, The console).
//!
//! Every request is the QUIC side's: a protocol `Op` carried out by
//! [`Broker::answer`], which checks the principal's right first and cuts lists to
//! what it may see; publishing, browsing and re-driving go through the same
//! `Broker` methods and rights checks as the session's. Nothing here reaches past the
//! broker.
//!
//! Errors are `{"error": {"code": "TopicNotFound", "message": "…"}}` with a status
//! that says the same: 401 for no or bad credentials, 403 for a missing right, 404,
//! 409, 400, 503. A request with a body must send it as JSON (`Content-Type:
//! application/json`), which a page of another origin cannot do without the
//! browser asking first; anonymous requests (loopback only) must also name a
//! loopback or IP host, so a page cannot reach the API by re-pointing its own
//! name at 127.0.0.1 (DNS rebinding).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use bytes::Bytes;
use quiver_protocol::{
    ErrorCode, GroupInfo, Header, LinkInfo, LinkState, NewRecord, OnError, Op, OpReply,
    PluginStatus, Receipt, Record, ServerStatus, Stage, StageLimits, StartAt, TopicInfo,
    TopicPattern, WireError,
};
use serde::{Deserialize, Serialize};

use super::{Peer, Shared, authenticate};
use crate::auth::file::AuthFile;
use crate::auth::{Access, Right};
use crate::broker::redrive::{Redrive, Selection, parse_through};
use crate::broker::{Broker, BrokerError, PublishOrder, Publishes, authorize, one_outcome};
use crate::util::{hex, now_ms, parse_start, to_the_end};

/// Records a browse returns at most.
const MAX_PAGE: usize = 500;

/// The API's routes.
pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/whoami", get(whoami))
        .route("/api/overview", get(overview))
        .route("/api/topics", get(topics))
        .route("/api/topics/{name}", get(topic))
        .route("/api/topics/{name}/records", get(browse).post(publish))
        .route("/api/topics/{name}/plugins", post(attach))
        .route("/api/topics/{name}/plugins/{plugin}", delete(detach))
        .route("/api/groups", get(groups))
        .route("/api/groups/{name}", get(group))
        .route("/api/groups/{name}/reset", post(reset_group))
        .route("/api/dead-letters", get(dead_letters))
        .route("/api/dead-letters/{dlq}/redrive", post(redrive))
        .route("/api/plugins", get(plugins))
        .route("/api/plugins/{name}/lift", post(lift))
        .route("/api/links", get(links))
        .route("/api/principals", get(principals))
}

/// An API error: the status, and the body's code and message.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    code: String,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_owned(),
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidArgument", message)
    }

    fn unexpected(answer: &OpReply) -> Self {
        let message = format!("the broker gave an unexpected answer: {answer:?}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", message)
    }
}

impl From<WireError> for ApiError {
    fn from(e: WireError) -> Self {
        let status = match e.code {
            ErrorCode::TopicNotFound
            | ErrorCode::PluginNotFound
            | ErrorCode::GroupNotFound
            | ErrorCode::LinkNotFound => StatusCode::NOT_FOUND,
            ErrorCode::TopicExists
            | ErrorCode::PluginExists
            | ErrorCode::GroupExists
            | ErrorCode::LinkExists
            | ErrorCode::PluginInUse => StatusCode::CONFLICT,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::RecordTooLarge | ErrorCode::BatchTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Storage
            | ErrorCode::ShuttingDown
            | ErrorCode::Overloaded
            | ErrorCode::PluginQuarantined
            | ErrorCode::NoResponders => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::LimitReached => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, &format!("{:?}", e.code), e.message)
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        Self::from(WireError::from(&e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Detail<'a>,
        }
        #[derive(Serialize)]
        struct Detail<'a> {
            code: &'a str,
            message: &'a str,
        }
        let body = Json(Body {
            error: Detail {
                code: &self.code,
                message: &self.message,
            },
        });
        match self.status {
            StatusCode::UNAUTHORIZED => {
                (self.status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
            }
            status => (status, body).into_response(),
        }
    }
}

type Answer<T> = Result<Json<T>, ApiError>;

/// The principal a request speaks for.
pub(super) struct Caller(Access);

impl FromRequestParts<Shared> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, shared: &Shared) -> Result<Self, ApiError> {
        let unauthenticated =
            |message: String| ApiError::new(StatusCode::UNAUTHORIZED, "Unauthenticated", message);
        let Some(peer) = parts.extensions.get::<Peer>() else {
            return Err(unauthenticated("the connection has no peer".into()));
        };
        let anonymous =
            !parts.headers.contains_key(header::AUTHORIZATION) && peer.cert_name.is_none();
        if anonymous && !local_host(&parts.headers) {
            return Err(unauthenticated(
                "anonymous requests must name the broker by a loopback or IP address \
                 (Host), or send `Authorization: Bearer <token>`"
                    .into(),
            ));
        }
        authenticate(&shared.auth, peer, &parts.headers)
            .map(Caller)
            .map_err(unauthenticated)
    }
}

/// Whether the request's `Host` is an IP address or `localhost`: a page that
/// re-points its own name at the broker's address sends that name instead.
fn local_host(headers: &axum::http::HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(':') && port.parse::<u16>().is_ok() => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

impl Caller {
    fn is_admin(&self) -> bool {
        self.0.is_unrestricted() || self.0.allows_pattern(Right::Admin, &TopicPattern::every())
    }
}

/// Carries out `op` as the caller, to its end even if the client goes away.
async fn ask(broker: &Arc<Broker>, caller: &Caller, op: Op) -> Result<OpReply, ApiError> {
    let (broker, access) = (Arc::clone(broker), caller.0.clone());
    Ok(to_the_end(async move { broker.answer(&access, op).await }).await?)
}

#[derive(Debug, Serialize)]
struct WhoAmI {
    principal: Option<String>,
    admin: bool,
    version: &'static str,
}

async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        principal: caller.0.principal().map(str::to_owned),
        admin: caller.is_admin(),
        version: concat!("quiver/", env!("CARGO_PKG_VERSION")),
    })
}

/// A topic as the console shows it: its description and the bytes it took in.
#[derive(Debug, Serialize)]
struct TopicView {
    #[serde(flatten)]
    info: TopicInfo,
    /// Bytes appended since the broker started.
    bytes_in: u64,
}

impl TopicView {
    fn new(broker: &Broker, info: TopicInfo) -> Self {
        let bytes_in = broker.topic(&info.name).map_or(0, |log| log.bytes_in());
        Self { info, bytes_in }
    }
}

async fn visible_topics(shared: &Shared, caller: &Caller) -> Result<Vec<TopicInfo>, ApiError> {
    match ask(&shared.broker, caller, Op::ListTopics).await? {
        OpReply::Topics(topics) => Ok(topics),
        other => Err(ApiError::unexpected(&other)),
    }
}

async fn topics(State(shared): State<Shared>, caller: Caller) -> Answer<Vec<TopicView>> {
    let topics = visible_topics(&shared, &caller).await?;
    let views = topics
        .into_iter()
        .map(|info| TopicView::new(&shared.broker, info))
        .collect();
    Ok(Json(views))
}

async fn topic_answer(shared: &Shared, caller: &Caller, op: Op) -> Answer<TopicView> {
    match ask(&shared.broker, caller, op).await? {
        OpReply::Topic(info) => Ok(Json(TopicView::new(&shared.broker, info))),
        other => Err(ApiError::unexpected(&other)),
    }
}

async fn topic(
    State(shared): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> Answer<TopicView> {
    topic_answer(&shared, &caller, Op::DescribeTopic { name }).await
}

#[derive(Debug, Serialize)]
struct Totals {
    records_in: u64,
    bytes_in: u64,
    stored_bytes: u64,
    records: u64,
}

#[derive(Debug, Serialize)]
struct Alert {
    level: &'static str,
    text: String,
    link: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct Overview {
    server: Option<ServerStatus>,
    totals: Totals,
    ready: bool,
    alerts: Vec<Alert>,
}

async fn overview(State(shared): State<Shared>, caller: Caller) -> Answer<Overview> {
    let broker = &shared.broker;
    let topics: Vec<TopicView> = visible_topics(&shared, &caller)
        .await?
        .into_iter()
        .map(|info| TopicView::new(broker, info))
        .collect();
    let totals = Totals {
        records_in: topics.iter().map(|t| t.info.next_offset).sum(),
        bytes_in: topics.iter().map(|t| t.bytes_in).sum(),
        stored_bytes: topics.iter().map(|t| t.info.bytes).sum(),
        records: topics.iter().map(|t| t.info.records).sum(),
    };
    let mut alerts = Vec::new();
    let halted = broker.storage().halted_cause();
    if let Some(cause) = &halted {
        alerts.push(Alert {
            level: "error",
            text: format!(
                "storage refuses writes after a failed write ({cause}); free room and \
                 restart the broker"
            ),
            link: None,
        });
    }
    let server = match caller.is_admin() {
        true => match ask(broker, &caller, Op::DescribeServer).await? {
            OpReply::Server(status) => Some(*status),
            other => return Err(ApiError::unexpected(&other)),
        },
        false => None,
    };
    if caller.is_admin() {
        let now = now_ms();
        for plugin in all_plugin_status(broker) {
            for attachment in &plugin.attachments {
                if attachment
                    .quarantined_until_ms
                    .is_some_and(|until| until > now)
                {
                    alerts.push(Alert {
                        level: "warning",
                        text: format!(
                            "plugin {} is quarantined on {}: {}",
                            plugin.info.name,
                            attachment.target,
                            attachment
                                .last_error
                                .as_deref()
                                .unwrap_or("it failed repeatedly")
                        ),
                        link: Some("#/plugins"),
                    });
                }
            }
        }
        for link in broker.links().map(|l| l.list()).unwrap_or_default() {
            if let LinkState::BackingOff { error, .. } = &link.state {
                alerts.push(Alert {
                    level: "warning",
                    text: format!("link {} cannot reach its remote: {error}", link.spec.name),
                    link: Some("#/links"),
                });
            }
        }
    }
    Ok(Json(Overview {
        server,
        totals,
        ready: halted.is_none(),
        alerts,
    }))
}

fn all_plugin_status(broker: &Broker) -> Vec<PluginStatus> {
    broker
        .list_plugins()
        .into_iter()
        .filter_map(|p| broker.plugin_status(&p.name).ok())
        .collect()
}

#[derive(Debug, Deserialize)]
struct BrowseQuery {
    from: Option<String>,
    limit: Option<usize>,
    key: Option<String>,
}

/// A stored record as JSON: text where it is text.
#[derive(Debug, Serialize)]
struct RecordView {
    offset: u64,
    timestamp_ms: u64,
    key: Option<String>,
    headers: Vec<HeaderView>,
    payload: String,
    /// The payload is not UTF-8: `payload` is its hex.
    binary: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct HeaderView {
    name: String,
    value: String,
}

impl From<Record> for RecordView {
    fn from(record: Record) -> Self {
        let text = |bytes: &Bytes| String::from_utf8_lossy(bytes).into_owned();
        let (payload, binary) = match std::str::from_utf8(&record.payload) {
            Ok(text) => (text.to_owned(), false),
            Err(_) => (hex(&record.payload), true),
        };
        Self {
            offset: record.offset,
            timestamp_ms: record.timestamp,
            key: record.key.as_ref().map(text),
            headers: record
                .headers
                .iter()
                .map(|h| HeaderView {
                    name: h.name.clone(),
                    value: text(&h.value),
                })
                .collect(),
            payload,
            binary,
        }
    }
}

#[derive(Debug, Serialize)]
struct PageView {
    records: Vec<RecordView>,
    next: u64,
    end: u64,
    scanned_to: u64,
}

/// Where to start: `earliest`, `latest`, an offset, `time:MS`, an RFC 3339 time or
/// `-DURATION`.
fn start_at(from: Option<&str>) -> Result<StartAt, ApiError> {
    match from.map(str::trim) {
        None | Some("") => Ok(StartAt::Earliest),
        Some(from) => match from.strip_prefix("time:") {
            Some(ms) => ms
                .parse()
                .map(StartAt::Timestamp)
                .map_err(|_| ApiError::bad_request(format!("`{from}`: time:MS takes ms"))),
            None => parse_start(from).map_err(ApiError::bad_request),
        },
    }
}

async fn browse(
    State(shared): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<BrowseQuery>,
) -> Answer<PageView> {
    let from = start_at(query.from.as_deref())?;
    let limit = query.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    let key = query.key.filter(|k| !k.is_empty());
    let page = shared.broker.browse(
        &caller.0,
        &name,
        from,
        limit,
        key.as_deref().map(str::as_bytes),
    )?;
    Ok(Json(PageView {
        scanned_to: page.next,
        next: page.next,
        end: page.end,
        records: page.records.into_iter().map(RecordView::from).collect(),
    }))
}

#[derive(Debug, Deserialize)]
struct NewRecordView {
    key: Option<String>,
    payload: String,
    #[serde(default)]
    headers: Vec<HeaderView>,
}

async fn publish(
    State(shared): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
    Json(record): Json<NewRecordView>,
) -> Answer<Receipt> {
    authorize::publish(&caller.0, &name)?;
    let record = NewRecord {
        key: record.key.filter(|k| !k.is_empty()).map(Bytes::from),
        headers: record
            .headers
            .into_iter()
            .map(|h| Header {
                name: h.name,
                value: Bytes::from(h.value),
            })
            .collect(),
        payload: Bytes::from(record.payload),
    };
    let publishes = Publishes::One {
        records: vec![record],
        id: None,
    };
    let mut order = PublishOrder::default();
    let outcomes = shared.broker.publish(&mut order, &name, publishes).await;
    // Handed to storage: what follows the commit is done even if the client goes away.
    Ok(Json(one_outcome(to_the_end(outcomes).await)?))
}

#[derive(Debug, Deserialize)]
struct Attach {
    plugin: String,
    #[serde(default)]
    params: Vec<(String, String)>,
    #[serde(default)]
    on_error: OnError,
    /// Its memory cap in bytes and call deadline in milliseconds; unset: the
    /// defaults of the plugin's language.
    #[serde(default)]
    limits: StageLimits,
}

async fn attach(
    State(shared): State<Shared>,
    caller: Caller,
    Path(topic): Path<String>,
    Json(attach): Json<Attach>,
) -> Answer<TopicView> {
    let stage = Stage {
        plugin: attach.plugin,
        params: attach.params,
        on_error: attach.on_error,
        attached_by: None,
    };
    let op = Op::AttachSized {
        topic,
        stage,
        limits: attach.limits,
    };
    topic_answer(&shared, &caller, op).await
}

async fn detach(
    State(shared): State<Shared>,
    caller: Caller,
    Path((topic, plugin)): Path<(String, String)>,
) -> Answer<TopicView> {
    topic_answer(&shared, &caller, Op::DetachPlugin { topic, plugin }).await
}

async fn groups(State(shared): State<Shared>, caller: Caller) -> Answer<Vec<GroupInfo>> {
    match ask(&shared.broker, &caller, Op::ListGroups).await? {
        OpReply::Groups(groups) => Ok(Json(groups)),
        other => Err(ApiError::unexpected(&other)),
    }
}

async fn group_answer(shared: &Shared, caller: &Caller, op: Op) -> Answer<GroupInfo> {
    match ask(&shared.broker, caller, op).await? {
        OpReply::Group(group) => Ok(Json(group)),
        other => Err(ApiError::unexpected(&other)),
    }
}

async fn group(
    State(shared): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> Answer<GroupInfo> {
    group_answer(&shared, &caller, Op::DescribeGroup { name }).await
}

#[derive(Debug, Deserialize)]
struct Reset {
    to: String,
}

async fn reset_group(
    State(shared): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
    Json(reset): Json<Reset>,
) -> Answer<GroupInfo> {
    let to = start_at(Some(&reset.to))?;
    group_answer(&shared, &caller, Op::ResetGroup { name, to }).await
}

#[derive(Debug, Serialize)]
struct DeadLetters {
    topic: String,
    records: u64,
    first_offset: u64,
    next_offset: u64,
    /// The topics and groups that give up records to it.
    of: Vec<String>,
}

async fn dead_letters(State(shared): State<Shared>, caller: Caller) -> Answer<Vec<DeadLetters>> {
    let topics = visible_topics(&shared, &caller).await?;
    let groups = match ask(&shared.broker, &caller, Op::ListGroups).await? {
        OpReply::Groups(groups) => groups,
        other => return Err(ApiError::unexpected(&other)),
    };
    let sources = topics
        .iter()
        .map(|t| (t.dead_letter.clone(), t.name.clone()))
        .chain(groups.iter().filter_map(|g| {
            let dlq = g.settings.dead_letter.clone()?;
            Some((dlq, format!("group {}", g.name)))
        }));
    let mut by_dlq = std::collections::BTreeMap::<String, Vec<String>>::new();
    for (dlq, source) in sources {
        if !dlq.is_empty() {
            by_dlq.entry(dlq).or_default().push(source);
        }
    }
    let list = by_dlq
        .into_iter()
        .filter_map(|(dlq, of)| {
            let info = topics.iter().find(|t| t.name == dlq)?;
            Some(DeadLetters {
                records: info.records,
                first_offset: info.first_offset,
                next_offset: info.next_offset,
                topic: dlq,
                of,
            })
        })
        .collect();
    Ok(Json(list))
}

#[derive(Debug, Deserialize)]
struct RedriveRequest {
    offsets: Option<Vec<u64>>,
    #[serde(default)]
    all: bool,
    from: Option<u64>,
    to: Option<String>,
    /// `NAME@VERSION`: run the target's pipeline with that plugin version.
    through: Option<String>,
}

#[derive(Debug, Serialize)]
struct RedriveReport {
    redriven: Vec<RedrivenView>,
    skipped: u64,
    failed: Vec<FailedView>,
    next: Option<u64>,
}

#[derive(Debug, Serialize)]
struct RedrivenView {
    offset: u64,
    topic: String,
    base_offset: u64,
}

#[derive(Debug, Serialize)]
struct FailedView {
    offset: u64,
    message: String,
}

async fn redrive(
    State(shared): State<Shared>,
    caller: Caller,
    Path(dlq): Path<String>,
    Json(request): Json<RedriveRequest>,
) -> Answer<RedriveReport> {
    let selection = match (request.offsets, request.all) {
        (Some(offsets), false) => Selection::Offsets(offsets),
        (None, true) => Selection::From(request.from.unwrap_or(0)),
        _ => {
            return Err(ApiError::bad_request(
                "give either `offsets` (a list) or `all: true`",
            ));
        }
    };
    let through = match request.through.filter(|t| !t.is_empty()) {
        Some(through) => Some(parse_through(&through).map_err(ApiError::bad_request)?),
        None => None,
    };
    let redrive = Redrive {
        dlq,
        to: request.to.filter(|t| !t.is_empty()),
        filters: Vec::new(),
        through,
    };
    let (broker, access) = (Arc::clone(&shared.broker), caller.0);
    let done =
        to_the_end(async move { broker.redrive(&access, &redrive, selection).await }).await?;
    Ok(Json(RedriveReport {
        redriven: done
            .stored
            .into_iter()
            .map(|(offset, topic, receipt)| RedrivenView {
                offset,
                topic,
                base_offset: receipt.base_offset,
            })
            .collect(),
        skipped: done.skipped,
        failed: done
            .failed
            .into_iter()
            .map(|(offset, e)| FailedView {
                offset,
                message: e.message,
            })
            .collect(),
        next: done.next,
    }))
}

async fn plugins(State(shared): State<Shared>, caller: Caller) -> Answer<Vec<PluginStatus>> {
    let names = match ask(&shared.broker, &caller, Op::ListPlugins).await? {
        OpReply::Plugins(plugins) => plugins,
        other => return Err(ApiError::unexpected(&other)),
    };
    let mut list = Vec::with_capacity(names.len());
    for plugin in names {
        let op = Op::PluginStatus { name: plugin.name };
        match ask(&shared.broker, &caller, op).await {
            Ok(OpReply::PluginStatus(status)) => list.push(status),
            Ok(other) => return Err(ApiError::unexpected(&other)),
            // Removed since it was listed.
            Err(e) if e.status == StatusCode::NOT_FOUND => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Json(list))
}

async fn lift(
    State(shared): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> Answer<PluginStatus> {
    match ask(&shared.broker, &caller, Op::LiftQuarantine { name }).await? {
        OpReply::PluginStatus(status) => Ok(Json(status)),
        other => Err(ApiError::unexpected(&other)),
    }
}

async fn links(State(shared): State<Shared>, caller: Caller) -> Answer<Vec<LinkInfo>> {
    match ask(&shared.broker, &caller, Op::ListLinks).await? {
        OpReply::Links(links) => Ok(Json(links)),
        other => Err(ApiError::unexpected(&other)),
    }
}

#[derive(Debug, Serialize)]
struct PrincipalView {
    name: String,
    grants: Vec<GrantView>,
    certificates: Vec<String>,
    /// The tokens' public ids (never their secrets or hashes).
    tokens: Vec<String>,
}

#[derive(Debug, Serialize)]
struct GrantView {
    right: Right,
    pattern: String,
}

/// The principals of the auth file, read only: for admins.
async fn principals(State(shared): State<Shared>, caller: Caller) -> Answer<Vec<PrincipalView>> {
    if !caller.is_admin() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "listing principals takes admin on every topic",
        ));
    }
    let file = AuthFile::load(shared.auth.file()).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal",
            format!("reading the auth file: {e}"),
        )
    })?;
    let list = file
        .principals
        .into_iter()
        .map(|(name, entry)| PrincipalView {
            name,
            grants: entry
                .grants
                .into_iter()
                .map(|g| GrantView {
                    right: g.right,
                    pattern: g.pattern,
                })
                .collect(),
            certificates: entry.cert_names,
            tokens: entry.tokens.into_iter().map(|t| t.id).collect(),
        })
        .collect();
    Ok(Json(list))
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    use super::*;

    #[test]
    fn only_ip_and_localhost_hosts_are_local() {
        let host = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_str(value).unwrap());
            local_host(&headers)
        };
        assert!(host("127.0.0.1:7849"));
        assert!(host("localhost:7849"));
        assert!(host("[::1]:7849"));
        assert!(host("10.0.0.5"));
        assert!(!host("evil.example:7849"));
        assert!(!host("localhost.evil.example"));
        assert!(!local_host(&HeaderMap::new()));
    }

    #[test]
    fn where_a_browse_starts() {
        assert_eq!(start_at(None).unwrap(), StartAt::Earliest);
        assert_eq!(start_at(Some("latest")).unwrap(), StartAt::Latest);
        assert_eq!(start_at(Some(" 42 ")).unwrap(), StartAt::Offset(42));
        assert_eq!(start_at(Some("time:5")).unwrap(), StartAt::Timestamp(5));
        assert!(start_at(Some("time:soon")).is_err());
        assert!(start_at(Some("yesterday")).is_err());
    }
}
