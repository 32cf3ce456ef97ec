//! Cluster mode's link to the fleet store, on the daemon's client runtime (not the owner
//! task's thread, whose reconciles make long blocking syscalls: a lease keep-alive must never
//! wait for one). It follows the fleet (`cluster::watch`) and forwards every view to the owner
//! task, keeps this host registered (`cluster::Membership`), and writes the endpoint sets the
//! owner task sends it.
use std::{collections::BTreeSet, net::IpAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::mpsc;
use tracing::warn;

use crate::{
    cluster::{self, EtcdConfig, FleetEvent, FleetHost, FleetView, Membership},
    config::ClusterConfig,
};

/// What the owner task tells the agent.
#[derive(Debug)]
pub enum ToAgent {
    /// This host's endpoints of a VPC are now exactly these.
    Endpoints(String, BTreeSet<IpAddr>),
    /// This host's own record changed (its placed VPCs).
    Host(FleetHost),
}

/// What the agent tells the owner task.
#[derive(Debug, Clone)]
pub enum FromAgent {
    /// The fleet at a new revision.
    View(Arc<FleetView>),
    /// etcd cannot be reached: forwarding continues as last known.
    Disconnected(String),
    /// Whether this host is registered (its lease alive), and why not.
    Membership {
        connected: bool,
        error: Option<String>,
    },
}

/// This host's record in the fleet.
pub fn host_record(c: &ClusterConfig) -> FleetHost {
    FleetHost {
        name: c.host.clone(),
        underlay: c.underlay,
        vxlan_port: c.vxlan_port,
        vpcs: c.vpcs.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Starts the agent on the current runtime; it runs until `to_owner` closes.
pub fn start(
    c: ClusterConfig,
    state_dir: PathBuf,
    to_owner: mpsc::UnboundedSender<FromAgent>,
) -> mpsc::UnboundedSender<ToAgent> {
    let (tx, mut rx) = mpsc::unbounded_channel::<ToAgent>();
    let (fleet_tx, mut fleet_rx) = mpsc::channel::<FleetEvent>(16);
    cluster::watch(EtcdConfig::from(&c), fleet_tx);
    tokio::spawn(async move {
        // Registration keeps trying in the background; endpoint sets wait in it meanwhile.
        let member = loop {
            match Membership::start(&c, &state_dir, host_record(&c)).await {
                Ok(m) => break m,
                Err(e) => {
                    warn!(error = %e, "cannot start the fleet membership; retrying");
                    let _ = to_owner.send(FromAgent::Membership {
                        connected: false,
                        error: Some(e.to_string()),
                    });
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut last = (false, None::<String>);
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    None => return,
                    Some(ToAgent::Endpoints(vpc, set)) => {
                        // Remembered by the membership: written now, or as soon as it can be.
                        if let Err(e) = member.set_endpoints(&vpc, &set).await {
                            tracing::debug!(vpc = %vpc, error = %e, "endpoints not written yet");
                        }
                    }
                    Some(ToAgent::Host(h)) => {
                        let _ = member.update_host(h).await;
                    }
                },
                ev = fleet_rx.recv() => {
                    let Some(ev) = ev else { return };
                    let msg = match ev {
                        FleetEvent::View(v) => FromAgent::View(v),
                        FleetEvent::Disconnected(why) => FromAgent::Disconnected(why),
                    };
                    if to_owner.send(msg).is_err() {
                        return;
                    }
                }
                _ = tick.tick() => {
                    let now = (member.connected(), member.last_error());
                    if now != last {
                        last = now.clone();
                        if to_owner
                            .send(FromAgent::Membership { connected: now.0, error: now.1 })
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        }
    });
    tx
}
