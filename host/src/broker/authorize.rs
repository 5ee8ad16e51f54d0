//! The right each request needs: what every listener (the QUIC session, the console)
//! asks [`Access`] before it carries a request out, and how list answers are cut to
//! what the principal may see.
//!
//! A request whose name or pattern does not parse passes here: carrying it out
//! reports the name with its own error.

use quiver_protocol::{Op, OpReply, TopicName, TopicPattern};

use super::{Broker, BrokerError};
use crate::auth::{Access, Right};

/// Checks that the client's principal may make a request. Requests with an invalid
/// name pass: carrying them out reports the name.
pub fn request(broker: &Broker, access: &Access, op: &Op) -> Result<(), BrokerError> {
    if access.is_unrestricted() {
        return Ok(());
    }
    let topic = |right: Right, name: &str| check_topic(access, right, name);
    match op {
        Op::Publish { topic: name, .. }
        | Op::PublishEach { topic: name, .. }
        | Op::Forward(quiver_protocol::Forward { topic: name, .. })
        | Op::Request { topic: name, .. } => topic(Right::Publish, name),
        // Each run is checked on its own (`publish`), and refused alone.
        Op::PublishAcross { .. } => Ok(()),
        Op::PublishThrough { topic: name, .. } => {
            publish(access, name)?;
            choose_code(access, name)
        }
        // Dead letters are writes to another topic: its publish right is needed too.
        Op::CreateTopic { name, config } => {
            topic(Right::Admin, name)?;
            config
                .dead_letter
                .as_deref()
                .map_or(Ok(()), |dlq| topic(Right::Publish, dlq))
        }
        Op::DeleteTopic { name }
        | Op::AlterTopic { name, .. }
        | Op::PurgeTopic { name, .. }
        | Op::AttachPlugin { topic: name, .. }
        | Op::AttachSized { topic: name, .. }
        | Op::DetachPlugin { topic: name, .. } => topic(Right::Admin, name),
        Op::DescribeTopic { name } => match TopicName::parse(name) {
            Ok(name) => Ok(access.check_visible(&name)?),
            Err(_) => Ok(()),
        },
        // Plugin binaries serve every topic, and links read and write topics as the
        // broker itself: managing either takes admin on all; so does seeing how the
        // broker runs (its data dir and listeners).
        Op::DeployPlugin { .. }
        | Op::UpgradePlugin { .. }
        | Op::ShadowPlugin { .. }
        | Op::CanaryPlugin { .. }
        | Op::PromotePlugin { .. }
        | Op::RollbackPlugin { .. }
        | Op::RemovePlugin { .. }
        | Op::CreateLink(_)
        | Op::DeleteLink { .. }
        | Op::DescribeLink { .. }
        | Op::ListLinks
        | Op::PauseLink { .. }
        | Op::ResumeLink { .. }
        | Op::DescribeServer
        | Op::LiftQuarantine { .. } => {
            Ok(access.check_pattern(Right::Admin, &TopicPattern::every())?)
        }
        Op::CreateGroup { settings, .. } => {
            check_pattern(access, Right::Group, &settings.pattern)?;
            settings
                .dead_letter
                .as_deref()
                .map_or(Ok(()), |dlq| topic(Right::Publish, dlq))
        }
        Op::DeleteGroup { name } | Op::DescribeGroup { name } | Op::ResetGroup { name, .. } => {
            group(broker, access, name)
        }
        // Lists are filtered to what the principal may see (`visible`); a reply needs
        // the request it answers, which only a subscriber received.
        Op::ListTopics
        | Op::ListGroups
        | Op::ListPlugins
        | Op::PluginStatus { .. }
        | Op::PluginSandboxes { .. }
        | Op::DiffPlugin { .. }
        | Op::DescribeBroker
        | Op::Reply { .. } => Ok(()),
    }
}

/// Checks that the client's principal may choose which version of a plugin filters
/// `topic`'s publishes (a publish through a version): the topic's admin right, as
/// for attaching a plugin to it.
pub fn choose_code(access: &Access, topic: &str) -> Result<(), BrokerError> {
    check_topic(access, Right::Admin, topic)
}

/// Checks that the client's principal may publish to `topic` (a name that does not
/// parse passes: publishing reports it).
pub fn publish(access: &Access, topic: &str) -> Result<(), BrokerError> {
    check_topic(access, Right::Publish, topic)
}

/// Checks a right on one topic; a name that does not parse passes (the request
/// reports it). An unrestricted client is not checked at all, nor its topic parsed.
fn check_topic(access: &Access, right: Right, topic: &str) -> Result<(), BrokerError> {
    if access.is_unrestricted() {
        return Ok(());
    }
    match TopicName::parse(topic) {
        Ok(name) => Ok(access.check_topic(right, &name)?),
        Err(_) => Ok(()),
    }
}

/// Checks a right on every topic a pattern matches; an invalid pattern passes (the
/// request reports it).
fn check_pattern(access: &Access, right: Right, pattern: &str) -> Result<(), BrokerError> {
    match TopicPattern::parse(pattern) {
        Ok(pattern) => Ok(access.check_pattern(right, &pattern)?),
        Err(_) => Ok(()),
    }
}

/// Checks the subscribe right on a subscription's pattern.
pub fn subscribe(access: &Access, pattern: &str) -> Result<(), BrokerError> {
    check_pattern(access, Right::Subscribe, pattern)
}

/// Checks the group right on the topics a group consumes; an unknown group passes
/// (the request reports it).
pub fn group(broker: &Broker, access: &Access, group: &str) -> Result<(), BrokerError> {
    match broker.group(group) {
        Ok(group) => Ok(access.check_pattern(Right::Group, group.pattern())?),
        Err(_) => Ok(()),
    }
}

/// Leaves out of a list answer what the principal holds no right on.
pub fn visible(broker: &Broker, access: &Access, answer: OpReply) -> OpReply {
    if access.is_unrestricted() {
        return answer;
    }
    match answer {
        OpReply::Topics(mut topics) => {
            topics.retain(|t| TopicName::parse(&t.name).is_ok_and(|name| access.may_see(&name)));
            OpReply::Topics(topics)
        }
        OpReply::Groups(mut groups) => {
            groups.retain(|g| {
                broker
                    .group(&g.name)
                    .is_ok_and(|group| access.allows_pattern(Right::Group, group.pattern()))
            });
            OpReply::Groups(groups)
        }
        other => other,
    }
}
