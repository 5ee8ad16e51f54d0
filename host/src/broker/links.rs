//! How a request reaches the links: the [`LinkControl`] the server hands the broker
//! once the links (`crate::links`, which sit above the broker and use it) are started.
//! The session asks the broker, so it never imports what lives beside it.

use std::sync::Arc;

use futures::future::BoxFuture;
use quiver_protocol::{LinkInfo, LinkSpec};

use super::{Broker, BrokerError};

/// Declaring, describing and stopping links.
pub trait LinkControl: Send + Sync + std::fmt::Debug {
    /// Declares a link and starts it.
    fn create(&self, spec: LinkSpec) -> BoxFuture<'_, Result<LinkInfo, BrokerError>>;
    /// Stops a link and forgets it.
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), BrokerError>>;
    /// Pauses (`true`) or resumes a link.
    fn pause<'a>(
        &'a self,
        name: &'a str,
        paused: bool,
    ) -> BoxFuture<'a, Result<LinkInfo, BrokerError>>;
    /// One link's description.
    fn describe(&self, name: &str) -> Result<LinkInfo, BrokerError>;
    /// Every link, sorted by name.
    fn list(&self) -> Vec<LinkInfo>;
}

impl Broker {
    /// Hands the broker its links (once, at start-up).
    pub fn set_links(&self, links: Arc<dyn LinkControl>) {
        let _ = self.links.set(links);
    }

    /// The links, once started.
    pub fn links(&self) -> Result<&Arc<dyn LinkControl>, BrokerError> {
        self.links.get().ok_or_else(|| {
            BrokerError::InvalidArgument("links are not running on this broker".into())
        })
    }
}
