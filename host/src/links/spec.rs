//! A link's spec from its declaration (`[[links]]` in the config file, or the flags of
//! `quiver link create`, which share [`LinkConfig`]): files read, names checked.

use quiver_protocol::{LinkAuth, LinkDirection, LinkSpec, OnError, Stage, StartAt};

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
    let auth = match (&config.token, &config.cert, &config.key) {
        (None, None, None) => LinkAuth::Anonymous,
        (Some(token), None, None) => LinkAuth::Token(token.clone()),
        (None, Some(cert), Some(key)) => LinkAuth::Certificate {
            cert: read("client certificate", cert)?,
            key: read("client key", key)?,
        },
        (Some(_), _, _) => {
            return Err(format!(
                "link `{name}`: a token and a certificate exclude each other"
            ));
        }
        _ => {
            return Err(format!(
                "link `{name}`: a client certificate needs its key, and a key its certificate"
            ));
        }
    };
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
    })
}
