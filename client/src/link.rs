//! Links between brokers: declaring and watching them ([`Client::create_link`] and
//! friends), and the request a link itself sends to its destination
//! ([`Client::forward`]).
//!
//! A link runs inside a broker; these calls only manage it. docs/links.md says what a
//! link guarantees.

use std::future::Future;

use quiver_protocol::{BrokerInfo, Forward, Forwarded, LinkInfo, LinkSpec, Op};

use crate::client::{Client, Deleted};
use crate::error::Result;

impl Client {
    /// Declares a link on the broker; it starts forwarding at once and survives
    /// restarts.
    pub async fn create_link(&self, spec: LinkSpec) -> Result<LinkInfo> {
        self.ask::<Box<LinkInfo>>(Op::CreateLink(Box::new(spec)))
            .await
            .map(|info| *info)
    }

    /// Stops a link and forgets it, with its cursors.
    pub async fn delete_link(&self, name: &str) -> Result<()> {
        self.ask::<Deleted>(Op::DeleteLink {
            name: name.to_owned(),
        })
        .await
        .map(drop)
    }

    /// A link's state and its progress in each source topic.
    pub async fn describe_link(&self, name: &str) -> Result<LinkInfo> {
        self.ask::<Box<LinkInfo>>(Op::DescribeLink {
            name: name.to_owned(),
        })
        .await
        .map(|info| *info)
    }

    /// Every link, sorted by name.
    pub async fn list_links(&self) -> Result<Vec<LinkInfo>> {
        self.ask(Op::ListLinks).await
    }

    /// Stops a link forwarding until [`resume_link`](Client::resume_link), across
    /// restarts too.
    pub async fn pause_link(&self, name: &str) -> Result<LinkInfo> {
        self.ask::<Box<LinkInfo>>(Op::PauseLink {
            name: name.to_owned(),
        })
        .await
        .map(|info| *info)
    }

    /// Lets a paused link forward again.
    pub async fn resume_link(&self, name: &str) -> Result<LinkInfo> {
        self.ask::<Box<LinkInfo>>(Op::ResumeLink {
            name: name.to_owned(),
        })
        .await
        .map(|info| *info)
    }

    /// Who the broker is: its id (made with its data dir) and version.
    pub async fn describe_broker(&self) -> Result<BrokerInfo> {
        self.ask(Op::DescribeBroker).await
    }

    /// Stores records forwarded from another broker, each origin offset once (what a
    /// link sends; see docs/protocol.md, "Forwarding between brokers"). Queued when
    /// called, so forwards sent one after the other arrive in that order.
    pub fn forward(
        &self,
        forward: Forward,
    ) -> impl Future<Output = Result<Forwarded>> + Send + 'static {
        self.ask(Op::Forward(forward))
    }
}
