//! A link's spec from its declaration (`[[links]]` in the config file, or the flags of
//! `quiver link create`, which share [`LinkConfig`]): files read, names checked.

use quiver_protocol::{
    JetStreamRemote, LinkAuth, LinkDirection, LinkSpec, OnError, Stage, StartAt, StreamRetention,
    StreamSetup, StreamStorage,
};

use crate::config::LinkConfig;
use crate::util::parse_start;

/// The spec a declaration describes; files (CA, certificate, key) are read here, so a
/// spec carries their contents.
pub fn spec_of(config: &LinkConfig) -> Result<LinkSpec, String> {
    let name = &config.name;
    let direction = match config.direction.as_deref() {
        None | Some("out") => LinkDirection::Out,
        Some("in") => LinkDirection::In,
        Some(other) => {
            return Err(format!(
                "link `{name}`: direction `{other}` is not out or in"
            ));
        }
    };
    let from = match config.from.as_deref() {
        None => StartAt::Earliest,
        Some(from) => parse_start(from).map_err(|e| format!("link `{name}`: from {e}"))?,
    };
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read_to_string(path).map_err(|e| {
            format!(
                "link `{name}`: cannot read the {what} {}: {e}",
                path.display()
            )
        })
    };
    let ca = config
        .ca
        .as_deref()
        .map(|p| read("CA certificate", p))
        .transpose()?;
    let given = [
        config.token.is_some(),
        config.cert.is_some() || config.key.is_some(),
        config.creds.is_some(),
        config.user.is_some() || config.password.is_some(),
    ];
    if given.iter().filter(|given| **given).count() > 1 {
        return Err(format!(
            "link `{name}`: give one way to authenticate: a token, a certificate and key, \
             a credentials file, or a user and password"
        ));
    }
    let auth = if let Some(token) = &config.token {
        LinkAuth::Token(token.clone())
    } else if config.cert.is_some() || config.key.is_some() {
        let (Some(cert), Some(key)) = (&config.cert, &config.key) else {
            return Err(format!(
                "link `{name}`: a client certificate needs its key, and a key its certificate"
            ));
        };
        LinkAuth::Certificate {
            cert: read("client certificate", cert)?,
            key: read("client key", key)?,
        }
    } else if let Some(creds) = &config.creds {
        LinkAuth::Credentials(read("credentials file", creds)?)
    } else if config.user.is_some() || config.password.is_some() {
        let (Some(user), Some(password)) = (&config.user, &config.password) else {
            return Err(format!(
                "link `{name}`: a user needs a password, and a password its user"
            ));
        };
        LinkAuth::UserPassword {
            user: user.clone(),
            password: password.clone(),
        }
    } else {
        LinkAuth::Anonymous
    };
    let jetstream = jetstream_of(config)?;
    let pipeline = match &config.plugin {
        None if config.params.is_empty() => Vec::new(),
        None => return Err(format!("link `{name}`: params without a plugin")),
        Some(plugin) => vec![Stage {
            plugin: plugin.clone(),
            params: config.params.clone().into_iter().collect(),
            on_error: OnError::FailClosed,
            attached_by: None,
        }],
    };
    Ok(LinkSpec {
        name: name.clone(),
        to: config.to.clone(),
        direction,
        topics: config.topics.clone(),
        prefix: config.prefix.clone(),
        from,
        max_rate: config.max_rate,
        ca,
        auth,
        pipeline,
        jetstream,
    })
}

/// The JetStream side of a declaration, if its remote is JetStream (it names a stream).
fn jetstream_of(config: &LinkConfig) -> Result<Option<JetStreamRemote>, String> {
    let name = &config.name;
    let Some(stream) = &config.stream else {
        let set = config.create_stream
            || !config.subject_prefix.is_empty()
            || config.replicas.is_some()
            || config.storage.is_some()
            || config.retention.is_some();
        return match set {
            true => Err(format!(
                "link `{name}`: JetStream settings without a stream (--stream)"
            )),
            false => Ok(None),
        };
    };
    let create = match config.create_stream {
        false
            if config.replicas.is_some()
                || config.storage.is_some()
                || config.retention.is_some() =>
        {
            return Err(format!(
                "link `{name}`: replicas, storage and retention are for a stream the link \
                 creates (--create-stream)"
            ));
        }
        false => None,
        true => Some(StreamSetup {
            replicas: config.replicas.unwrap_or(1),
            storage: match config.storage.as_deref() {
                None | Some("file") => StreamStorage::File,
                Some("memory") => StreamStorage::Memory,
                Some(other) => {
                    return Err(format!(
                        "link `{name}`: storage `{other}` is not file or memory"
                    ));
                }
            },
            retention: match config.retention.as_deref() {
                None | Some("limits") => StreamRetention::Limits,
                Some("interest") => StreamRetention::Interest,
                Some("work-queue") => StreamRetention::WorkQueue,
                Some(other) => {
                    return Err(format!(
                        "link `{name}`: retention `{other}` is not limits, interest or work-queue"
                    ));
                }
            },
        }),
    };
    Ok(Some(JetStreamRemote {
        stream: stream.clone(),
        subject_prefix: config.subject_prefix.clone(),
        create,
    }))
}
