//! What the daemon shows: an immutable [`Snapshot`] that the daemon's owner task publishes after
//! every change, and the status JSON (SPEC §6) and `explain` answers computed from it. Readers
//! (control socket, metrics) never wait for the daemon: they take the latest snapshot and read
//! the live counters through their own handles on the pinned maps.
use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    config::{DatapathMode, PeeringState},
    datapath::Counters,
    desired::Names,
    tables::{trace, Decision, Tables},
};

/// One VPC as the daemon last reconciled it.
#[derive(Clone, Debug, Serialize)]
pub struct VpcView {
    pub name: String,
    pub netns: String,
    pub host_if: String,
    pub slot: u32,
    pub ready: bool,
    pub error: Option<String>,
    /// Cluster mode: the hosts the VPC is present on.
    pub hosts: Vec<String>,
    /// Attached workloads (`peerd attach`, the CNI plugin).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadView>,
}

/// An attached workload of a VPC.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadView {
    /// Its link in the VPC namespace.
    pub link: String,
    /// "netns NS (IFNAME)" or "tap IF".
    pub workload: String,
    pub addresses: Vec<ipnet::IpNet>,
    /// Why the last reconcile could not set it up.
    pub error: Option<String>,
}

/// A host of the fleet, as this host knows it.
#[derive(Clone, Debug, Serialize)]
pub struct HostView {
    pub name: String,
    pub underlay: IpAddr,
    pub vpcs: Vec<String>,
    /// Slot in this host's datapath (0: this host).
    #[serde(skip)]
    pub slot: u32,
    /// Packets and bytes sent to and received from this host through the tunnel (read when
    /// the status is asked for; none for this host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelCounters>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TunnelCounters {
    pub tx: CounterJson,
    pub rx: CounterJson,
}

/// Cluster mode (SPEC §7).
#[derive(Clone, Debug, Serialize)]
pub struct ClusterStatus {
    pub host: String,
    /// etcd answers (the fleet view is current).
    pub connected: bool,
    /// This host's lease is alive (its record and endpoints are in etcd).
    pub registered: bool,
    /// Revision of the fleet view in force (0: none yet).
    pub revision: i64,
    pub error: Option<String>,
    pub hosts: Vec<HostView>,
    /// Workload addresses on other hosts that this host can send to.
    pub remote_endpoints: usize,
    /// Workload addresses found here and published.
    pub local_endpoints: usize,
    /// Fleet VPCs that cannot be used, MTUs lowered for the encapsulation.
    pub notes: Vec<String>,
}

/// One peering, with its history.
#[derive(Clone, Debug, Serialize)]
pub struct PeeringView {
    pub id: String,
    pub vpcs: [String; 2],
    pub state: PeeringState,
    pub reason: Option<String>,
    pub slot: u32,
    pub first_seen: Option<u64>,
    pub activated_at: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ReconcileReport {
    /// Host changes (namespaces, links, neighbours, routes) and datapath changes (map entries,
    /// links), one line each. Empty: the host already was as configured.
    pub actions: Vec<String>,
    pub duration_ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct FlowLogStatus {
    pub path: PathBuf,
    pub records_written: u64,
    pub rotations: u64,
    /// Packets whose flow could not be aggregated (flow map full): lost to the log, not hidden.
    pub lost_packets: u64,
    pub error: Option<String>,
}

/// Everything readers need, as of the last change.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub generation: u64,
    pub config_error: Option<String>,
    pub datapath: DatapathMode,
    pub vpcs: Vec<VpcView>,
    pub peerings: Vec<PeeringView>,
    pub last_reconcile: ReconcileReport,
    /// Problems not tied to one VPC (a map write, the backstop).
    pub errors: Vec<String>,
    pub flow_log: Option<FlowLogStatus>,
    /// Packets and bytes the backstop dropped (`None`: it could not be read).
    pub backstop: Option<(u64, u64)>,
    pub reconciles: u64,
    pub reconcile_seconds: Option<prometheus_client::metrics::histogram::Histogram>,
    pub last_reload_unix: u64,
    /// The datapath's tables and the names of their slots, for `explain`.
    pub tables: Tables,
    pub names: Names,
    pub cluster: Option<ClusterStatus>,
    /// Entries the datapath maps hold (as the last reconcile wrote them) and their sizes.
    pub maps: Vec<MapUsage>,
}

/// One datapath map's use: `peerd_map_entries` / `peerd_map_capacity`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MapUsage {
    /// The pinned name (`peerd_common::maps`).
    pub name: &'static str,
    pub entries: u64,
    pub capacity: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CounterJson {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct VpcStatus {
    pub name: String,
    pub netns: String,
    pub ready: bool,
    pub host_if: String,
    pub error: Option<String>,
    /// Drops of traffic from this VPC, by reason (only reasons that happened).
    pub drops: BTreeMap<&'static str, CounterJson>,
    /// Cluster mode: the hosts the VPC is present on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Attached workloads (`peerd attach`, the CNI plugin).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PeeringStatus {
    pub id: String,
    pub vpcs: [String; 2],
    pub state: PeeringState,
    pub reason: Option<String>,
    pub first_seen: Option<u64>,
    pub activated_at: Option<u64>,
    /// Forwarded from vpcs[0] to vpcs[1], and back.
    pub forwarded: [CounterJson; 2],
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub generation: u64,
    pub config_error: Option<String>,
    pub datapath: &'static str,
    pub vpcs: Vec<VpcStatus>,
    pub peerings: Vec<PeeringStatus>,
    /// Drops that belong to no VPC here: from a link of no VPC, or (cluster mode) from another
    /// host with an unknown source or VNI.
    pub unattributed_drops: BTreeMap<&'static str, CounterJson>,
    pub errors: Vec<String>,
    /// VPC traffic that reached the host stack and was dropped there (a program missing).
    pub backstop: Option<CounterJson>,
    pub last_reconcile: ReconcileReport,
    pub flow_log: Option<FlowLogStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
    /// Entries and size of every datapath map the daemon fills.
    pub maps: Vec<MapUsage>,
}

pub fn mode_name(m: DatapathMode) -> &'static str {
    match m {
        DatapathMode::Tc => "tc",
        DatapathMode::Xdp => "xdp",
    }
}

/// Drops counted against VPC slot `slot` (0: none), by reason, only those that happened.
fn drops_of(counters: Option<&Counters>, slot: u32) -> BTreeMap<&'static str, CounterJson> {
    counters
        .map(|c| c.drops(slot))
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, c)| c.packets > 0)
        .map(|(r, c)| {
            (
                r.name(),
                CounterJson {
                    packets: c.packets,
                    bytes: c.bytes,
                },
            )
        })
        .collect()
}

/// The status: the snapshot with the counters read now.
pub fn status(s: &Snapshot, counters: Option<&Counters>) -> Status {
    let counter = |c: peerd_common::Counter| CounterJson {
        packets: c.packets,
        bytes: c.bytes,
    };
    let vpcs = s
        .vpcs
        .iter()
        .map(|v| VpcStatus {
            name: v.name.clone(),
            netns: v.netns.clone(),
            ready: v.ready,
            host_if: v.host_if.clone(),
            error: v.error.clone(),
            drops: drops_of(counters, v.slot),
            hosts: v.hosts.clone(),
            workloads: v.workloads.clone(),
        })
        .collect();
    let peerings = s
        .peerings
        .iter()
        .map(|p| {
            let fwd = |dir| {
                counters
                    .map(|c| counter(c.forwarded(p.slot, dir)))
                    .unwrap_or_default()
            };
            PeeringStatus {
                id: p.id.clone(),
                vpcs: p.vpcs.clone(),
                state: p.state,
                reason: p.reason.clone(),
                first_seen: p.first_seen,
                activated_at: p.activated_at,
                forwarded: [fwd(0), fwd(1)],
            }
        })
        .collect();
    Status {
        generation: s.generation,
        config_error: s.config_error.clone(),
        datapath: mode_name(s.datapath),
        vpcs,
        peerings,
        unattributed_drops: drops_of(counters, 0),
        errors: s.errors.clone(),
        backstop: s
            .backstop
            .map(|(packets, bytes)| CounterJson { packets, bytes }),
        last_reconcile: s.last_reconcile.clone(),
        flow_log: s.flow_log.clone(),
        cluster: s.cluster.clone().map(|mut c| {
            for h in c.hosts.iter_mut().filter(|h| h.slot != 0) {
                h.tunnel = counters.map(|k| {
                    let (tx, rx) = k.host(h.slot);
                    TunnelCounters {
                        tx: counter(tx),
                        rx: counter(rx),
                    }
                });
            }
            c
        }),
        maps: s.maps.clone(),
    }
}

/// `peerd explain`: what the datapath does with one packet, and why.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Explanation {
    pub from: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// "deliver" or "drop".
    pub verdict: String,
    pub reason: Option<String>,
    pub table: Option<String>,
    pub route: Option<String>,
    pub peering: Option<String>,
    pub peering_state: Option<PeeringState>,
    pub to: Option<String>,
    /// Cluster mode: the host the packet goes to through the tunnel (the destination is a
    /// workload there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

pub fn explain(s: &Snapshot, from: &str, src: IpAddr, dst: IpAddr) -> Result<Explanation, String> {
    let v = s
        .vpcs
        .iter()
        .find(|v| v.name == from)
        .ok_or_else(|| format!("no VPC named \"{from}\" in the configuration in force"))?;
    let tr = trace(&s.tables, v.slot, src, dst, 64);
    let peering = tr
        .route
        .and_then(|(_, t)| s.names.peerings.get(&t.peering).cloned());
    let peering_state = peering
        .as_ref()
        .and_then(|id| s.peerings.iter().find(|p| &p.id == id))
        .map(|p| p.state);
    let vpc_name = |slot| s.names.vpcs.get(&slot).cloned();
    let (verdict, reason, to, host) = match tr.decision {
        Decision::Deliver { dst_vpc, .. } => ("deliver", None, vpc_name(dst_vpc), None),
        Decision::Tunnel { dst_vpc, host, .. } => {
            let name = s
                .cluster
                .as_ref()
                .and_then(|c| c.hosts.iter().find(|h| h.slot == host))
                .map_or_else(|| format!("host slot {host}"), |h| h.name.clone());
            ("deliver", None, vpc_name(dst_vpc), Some(name))
        }
        Decision::Drop(r) => ("drop", Some(r.name().to_owned()), None, None),
    };
    Ok(Explanation {
        from: from.to_owned(),
        src,
        dst,
        verdict: verdict.into(),
        reason,
        table: tr
            .table
            .and_then(|t| s.names.tables.get(&t))
            .map(|(_, n)| n.clone()),
        route: tr.route.map(|(r, _)| r.to_string()),
        peering,
        peering_state,
        to,
        host,
    })
}
