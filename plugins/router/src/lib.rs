//! Routes each record to topics chosen by a JSON field or a header value.
//!
//! Parameters:
//! - `field` (a dotted JSON path) or `header` (a header name): where the value is;
//! - `routes` (required): `VALUE=TOPIC,…`; a value may go to several topics joined
//!   with `+` (`eu=orders.eu+audit.eu`);
//! - `default`: what happens to records whose value has no route (or is missing):
//!   `keep` (stay in the topic: the default), `drop`, or a topic to route them to.

use quiver_plugin_sdk::json::{Value, field, serde_json, text};
use quiver_plugin_sdk::{Event, Outcome, Plugin, export_plugin, param};

struct Router;

enum Source {
    Field(String),
    Header(String),
}

struct Routes {
    source: Source,
    routes: Vec<(String, Vec<String>)>,
    default: Outcome,
}

impl Routes {
    fn from_params() -> Result<Self, String> {
        let source = match (param("field"), param("header")) {
            (Some(path), None) => Source::Field(path),
            (None, Some(name)) => Source::Header(name),
            _ => return Err("set exactly one of the parameters `field` and `header`".into()),
        };
        let spec = param("routes")
            .ok_or("parameter `routes` is required, e.g. eu=orders.eu,us=orders.us")?;
        let mut routes = Vec::new();
        for route in spec.split(',').filter(|r| !r.trim().is_empty()) {
            let (value, topics) = route
                .split_once('=')
                .ok_or_else(|| format!("route `{route}` is not VALUE=TOPIC"))?;
            let topics: Vec<String> = topics.split('+').map(|t| t.trim().to_owned()).collect();
            routes.push((value.trim().to_owned(), topics));
        }
        let default = match param("default").as_deref() {
            None | Some("keep") => Outcome::Keep,
            Some("drop") => Outcome::Drop,
            Some(topic) => Outcome::Route(vec![topic.to_owned()]),
        };
        Ok(Self {
            source,
            routes,
            default,
        })
    }

    fn value(&self, event: &Event) -> Option<String> {
        match &self.source {
            Source::Header(name) => event
                .header(name)
                .map(|v| String::from_utf8_lossy(v).into_owned()),
            Source::Field(path) => {
                let json: Value = serde_json::from_slice(&event.payload).ok()?;
                field(&json, path).map(text)
            }
        }
    }

    fn decide(&self, event: &Event) -> Outcome {
        let topics = self
            .value(event)
            .and_then(|v| self.routes.iter().find(|(value, _)| *value == v))
            .map(|(_, topics)| topics.clone());
        match topics {
            Some(topics) => Outcome::Route(topics),
            None => self.default.clone(),
        }
    }
}

impl Plugin for Router {
    fn process(_topic: String, events: Vec<Event>) -> Result<Vec<Outcome>, String> {
        let routes = Routes::from_params()?;
        Ok(events.iter().map(|e| routes.decide(e)).collect())
    }
}

export_plugin!(Router);
