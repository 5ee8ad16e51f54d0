//! Carrying out a request that is not a publish (topic, group, plugin and link admin,
//! queries, request-reply) for a principal, whichever listener it came in by: the
//! QUIC session's control stream and the console's API both come here.

use std::sync::Arc;
use std::time::Duration;

use quiver_protocol::{Op, OpReply, Stage, StageLimits};

use super::{Broker, BrokerError, authorize};
use crate::auth::Access;

impl Broker {
    /// Carries out a request that is not a publish for `access`'s principal: checks
    /// its right first (`authorize::request`), and cuts a list answer to what the
    /// principal may see. A stage attached is marked with who attached it (its
    /// routes are checked against that principal's grants).
    pub async fn answer(self: &Arc<Self>, access: &Access, op: Op) -> Result<OpReply, BrokerError> {
        authorize::request(self, access, &op)?;
        let attached_by = |stage| Stage {
            attached_by: access.principal().map(str::to_owned),
            ..stage
        };
        let op = match op {
            Op::AttachPlugin { topic, stage } => Op::AttachSized {
                topic,
                stage: attached_by(stage),
                limits: StageLimits::default(),
            },
            Op::AttachSized {
                topic,
                stage,
                limits,
            } => Op::AttachSized {
                topic,
                stage: attached_by(stage),
                limits,
            },
            other => other,
        };
        let answer = execute(self, op).await?;
        Ok(authorize::visible(self, access, answer))
    }
}

/// A rollout request's answer: the plugin's diff.
fn diff_reply(
    diff: Result<quiver_protocol::PluginDiff, crate::plugins::AdminError>,
) -> Result<OpReply, BrokerError> {
    Ok(OpReply::Diff(Box::new(diff?)))
}

/// Carries out an authorized request. Publishes have their own way (they keep their
/// connection's order: `broker::publish`).
async fn execute(broker: &Arc<Broker>, op: Op) -> Result<OpReply, BrokerError> {
    match op {
        Op::Publish { .. }
        | Op::PublishEach { .. }
        | Op::PublishAcross { .. }
        | Op::PublishThrough { .. }
        | Op::Forward(_) => Err(BrokerError::InvalidArgument(
            "a publish is dispatched, not executed".into(),
        )),
        Op::CreateLink(spec) => broker
            .links()?
            .create(*spec)
            .await
            .map(|info| OpReply::Link(Box::new(info))),
        Op::DeleteLink { name } => broker
            .links()?
            .delete(&name)
            .await
            .map(|()| OpReply::Deleted),
        Op::DescribeLink { name } => broker
            .links()?
            .describe(&name)
            .map(|info| OpReply::Link(Box::new(info))),
        Op::ListLinks => Ok(OpReply::Links(broker.links()?.list())),
        Op::DescribeServer => broker
            .describe_server()
            .await
            .map(|status| OpReply::Server(Box::new(status))),
        Op::DescribeBroker => Ok(OpReply::Broker(quiver_protocol::BrokerInfo {
            id: broker.storage().broker_id(),
            version: concat!("quiver/", env!("CARGO_PKG_VERSION")).to_owned(),
        })),
        Op::PauseLink { name } => broker
            .links()?
            .pause(&name, true)
            .await
            .map(|info| OpReply::Link(Box::new(info))),
        Op::ResumeLink { name } => broker
            .links()?
            .pause(&name, false)
            .await
            .map(|info| OpReply::Link(Box::new(info))),
        Op::CreateTopic { name, config } => broker
            .create_topic(&name, &config)
            .await
            .map(OpReply::Topic),
        Op::DeleteTopic { name } => broker.delete_topic(&name).await.map(|()| OpReply::Deleted),
        Op::AlterTopic {
            name,
            retention,
            durability,
        } => broker
            .alter_topic(&name, retention, durability)
            .await
            .map(OpReply::Topic),
        Op::PurgeTopic { name, before } => {
            broker.purge_topic(&name, before).await.map(OpReply::Topic)
        }
        Op::DescribeTopic { name } => broker.describe_topic(&name).map(OpReply::Topic),
        Op::ListTopics => Ok(OpReply::Topics(broker.list_topics())),
        Op::DeployPlugin {
            name,
            version,
            wasm,
        } => broker
            .deploy_plugin(&name, version, wasm)
            .await
            .map(OpReply::Plugin),
        Op::UpgradePlugin {
            name,
            version,
            wasm,
        } => broker
            .upgrade_plugin(&name, version, wasm)
            .await
            .map(OpReply::Plugin),
        Op::RemovePlugin { name } => broker.remove_plugin(&name).await.map(|()| OpReply::Deleted),
        Op::ListPlugins => Ok(OpReply::Plugins(broker.list_plugins())),
        Op::PluginStatus { name } => broker.plugin_status(&name).map(OpReply::PluginStatus),
        Op::AttachPlugin { topic, stage } => broker
            .attach_plugin(&topic, stage, StageLimits::default())
            .await
            .map(OpReply::Topic),
        Op::AttachSized {
            topic,
            stage,
            limits,
        } => broker
            .attach_plugin(&topic, stage, limits)
            .await
            .map(OpReply::Topic),
        Op::PluginSandboxes { name } => broker.plugin_sandboxes(&name).map(OpReply::Sandboxes),
        Op::ShadowPlugin {
            name,
            version,
            wasm,
        } => diff_reply(broker.plugins().roll_out(&name, version, wasm, None).await),
        Op::CanaryPlugin {
            name,
            version,
            wasm,
            percent,
        } => diff_reply(
            broker
                .plugins()
                .roll_out(&name, version, wasm, Some(percent))
                .await,
        ),
        Op::DiffPlugin { name } => diff_reply(broker.plugins().diff(&name)),
        Op::PromotePlugin { name } => diff_reply(broker.plugins().promote(&name).await),
        Op::RollbackPlugin { name } => diff_reply(broker.plugins().rollback(&name).await),
        Op::DetachPlugin { topic, plugin } => broker
            .detach_plugin(&topic, &plugin)
            .await
            .map(OpReply::Topic),
        Op::CreateGroup { name, settings } => broker
            .create_group(&name, settings)
            .await
            .map(OpReply::Group),
        Op::DeleteGroup { name } => broker.delete_group(&name).await.map(|()| OpReply::Deleted),
        Op::DescribeGroup { name } => broker.describe_group(&name).await.map(OpReply::Group),
        Op::ListGroups => Ok(OpReply::Groups(broker.list_groups().await)),
        Op::ResetGroup { name, to } => broker.reset_group(&name, to).await.map(OpReply::Group),
        Op::Request {
            topic,
            record,
            timeout_ms,
        } => {
            let timeout = Duration::from_millis(timeout_ms);
            broker
                .request(&topic, record, timeout)
                .await
                .map(OpReply::Response)
        }
        Op::Reply { to, record } => broker.reply(&to, record).map(|()| OpReply::Replied),
        Op::LiftQuarantine { name } => broker.lift_quarantine(&name).map(OpReply::PluginStatus),
    }
}
