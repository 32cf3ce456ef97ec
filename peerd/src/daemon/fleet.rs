//! The owner task's cluster-mode state (SPEC §7): the fleet as last known (forwarding goes on
//! with it while etcd is away), whether this host is registered, the workload addresses found
//! in its VPC namespaces (published as endpoints) and the event streams that report changes
//! to them.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{
    agent::{FromAgent, ToAgent},
    cluster::FleetView,
    config::ClusterConfig,
    desired::{self, ClusterWant},
    endpoints,
    netlink::{self, Netlink},
    netns,
};

/// The owner task's ends of the channels to the fleet agent.
pub struct Link {
    pub to_agent: mpsc::UnboundedSender<ToAgent>,
    pub from_agent: mpsc::UnboundedReceiver<FromAgent>,
}

pub struct Cluster {
    pub cfg: ClusterConfig,
    /// The fleet as last known: `None` until the first view (nothing is reconciled before:
    /// what the datapath holds stays).
    pub view: Option<Arc<FleetView>>,
    pub store_connected: bool,
    pub store_error: Option<String>,
    pub registered: bool,
    pub register_error: Option<String>,
    to_agent: mpsc::UnboundedSender<ToAgent>,
    pub from_agent: Option<mpsc::UnboundedReceiver<FromAgent>>,
    /// Workload addresses found in each placed VPC's namespace.
    pub local_endpoints: BTreeMap<String, BTreeSet<IpAddr>>,
    /// What was sent to the agent for each VPC.
    published: BTreeMap<String, BTreeSet<IpAddr>>,
    /// Address and route event streams of the VPC namespaces (namespace inode, task).
    watchers: BTreeMap<String, (u64, tokio::task::JoinHandle<()>)>,
    events_tx: mpsc::UnboundedSender<String>,
    pub events_rx: Option<mpsc::UnboundedReceiver<String>>,
    /// MTU of the underlay path, and its family.
    pub underlay_mtu: u32,
    /// The fleet's VPCs that could not be used, and other problems to show.
    pub errors: Vec<String>,
    /// The cluster part of the last desired state.
    pub want: Option<ClusterWant>,
}

impl Cluster {
    pub fn new(cfg: ClusterConfig, link: Link) -> Cluster {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Cluster {
            cfg,
            view: None,
            store_connected: false,
            store_error: None,
            registered: false,
            register_error: None,
            to_agent: link.to_agent,
            from_agent: Some(link.from_agent),
            local_endpoints: BTreeMap::new(),
            published: BTreeMap::new(),
            watchers: BTreeMap::new(),
            events_tx,
            events_rx: Some(events_rx),
            underlay_mtu: 1500,
            errors: Vec::new(),
            want: None,
        }
    }

    /// The underlay's MTU: configured, or that of the link holding the underlay address.
    pub async fn find_underlay_mtu(&mut self, nl: &Netlink) {
        if let Some(m) = self.cfg.underlay_mtu {
            self.underlay_mtu = m;
            return;
        }
        match netlink::mtu_of_address(&nl.host(), self.cfg.underlay).await {
            Ok(Some(m)) => self.underlay_mtu = m,
            Ok(None) => warn!(
                underlay = %self.cfg.underlay,
                "no link here holds the underlay address; assuming an underlay MTU of 1500"
            ),
            Err(e) => warn!(error = %e, "reading the underlay MTU; assuming 1500"),
        }
    }

    /// The VXLAN device's UDP port and MTU (the underlay's less the encapsulation).
    pub fn vxlan(&self) -> (u16, u32) {
        let overhead = desired::vxlan_overhead(self.cfg.underlay.is_ipv6());
        (
            self.cfg.vxlan_port,
            self.underlay_mtu.saturating_sub(overhead),
        )
    }

    /// What `desired` needs of the fleet, when a view is known.
    pub fn fleet(&self) -> Option<desired::Fleet<'_>> {
        Some(desired::Fleet {
            view: self.view.as_deref()?,
            this_host: &self.cfg.host,
            local_endpoints: &self.local_endpoints,
            vxlan_port: self.cfg.vxlan_port,
            underlay_mtu: self.underlay_mtu,
            underlay_v6: self.cfg.underlay.is_ipv6(),
        })
    }

    /// Looks at the workloads of every placed VPC (`vpcs`: name -> namespace and CIDRs),
    /// publishes what changed, and follows each namespace's address and route events.
    /// Returns whether any set changed.
    pub async fn refresh_endpoints(
        &mut self,
        nl: &Netlink,
        vpcs: &BTreeMap<String, (String, Vec<ipnet::IpNet>)>,
    ) -> bool {
        let mut changed = false;
        for (vpc, (ns, cidrs)) in vpcs {
            let Some(ino) = netns::inode(ns) else {
                continue;
            };
            let stale = self
                .watchers
                .get(vpc)
                .is_none_or(|(i, t)| *i != ino || t.is_finished());
            if stale {
                match nl.ns_events(ns).await {
                    Ok(mut rx) => {
                        let tx = self.events_tx.clone();
                        let name = vpc.clone();
                        let task = tokio::spawn(async move {
                            use futures::StreamExt as _;
                            while rx.next().await.is_some() {
                                if tx.send(name.clone()).is_err() {
                                    return;
                                }
                            }
                        });
                        if let Some((_, old)) = self.watchers.insert(vpc.clone(), (ino, task)) {
                            old.abort();
                        }
                    }
                    Err(e) => warn!(vpc = %vpc, error = %e, "cannot follow the VPC's addresses"),
                }
            }
            match endpoints::observe(nl, ns, cidrs).await {
                Ok(found) => {
                    if self.local_endpoints.get(vpc) != Some(&found) {
                        changed = true;
                        self.local_endpoints.insert(vpc.clone(), found);
                    }
                }
                Err(e) => warn!(vpc = %vpc, error = %e, "reading the VPC's workloads"),
            }
        }
        // VPCs no longer placed here: their endpoints go.
        let gone: Vec<String> = self
            .local_endpoints
            .keys()
            .filter(|v| !vpcs.contains_key(*v))
            .cloned()
            .collect();
        for v in gone {
            self.local_endpoints.remove(&v);
            if let Some((_, t)) = self.watchers.remove(&v) {
                t.abort();
            }
            changed = true;
        }
        self.publish_endpoints();
        changed
    }

    /// Sends the agent every set that differs from what it was last sent.
    fn publish_endpoints(&mut self) {
        let mut all: BTreeSet<&String> = self.local_endpoints.keys().collect();
        all.extend(self.published.keys());
        let mut sent = Vec::new();
        for vpc in all {
            let now = self.local_endpoints.get(vpc).cloned().unwrap_or_default();
            if self.published.get(vpc) != Some(&now) {
                info!(vpc = %vpc, endpoints = now.len(), "publishing endpoints");
                let _ = self
                    .to_agent
                    .send(ToAgent::Endpoints(vpc.clone(), now.clone()));
                sent.push((vpc.clone(), now));
            }
        }
        for (vpc, now) in sent {
            if now.is_empty() && !self.local_endpoints.contains_key(&vpc) {
                self.published.remove(&vpc);
            } else {
                self.published.insert(vpc, now);
            }
        }
    }
}
