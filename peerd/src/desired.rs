//! The desired state: a pure function of the configuration, the peerings' states, the slots and
//! what is known of the host (facts), with no clock and no writes. Every reconciler
//! (`reconcile::*`) makes one part of the system match it; `peerd plan` diffs it without
//! applying.
use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use peerd_common::{
    PeeringInfo, RouteTarget, VpcInfo, PEERING_ACTIVE, ROUTE_INSIDE_DST, TABLE_NONE, VPC_PRESENT,
    VPC_REMOTE,
};

use crate::{
    config::{Config, DatapathMode, Peering, PeeringState, Vpc},
    state::State,
    tables::Tables,
};

pub const MAIN: &str = "main";

/// What is known of one VPC's veth pair (from the last observation, or the last good one when
/// the link could not be observed or built: the datapath keeps its entries).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkFacts {
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    pub ns_ifindex: u32,
    pub ns_mac: [u8; 6],
}

/// What the reconcilers found on the host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// VPC name -> its veth pair.
    pub links: BTreeMap<String, LinkFacts>,
    /// Host links (name, ifindex) on which this datapath mode's program is attached.
    pub attached: BTreeSet<(String, u32)>,
    /// Host links that still have a pinned XDP link (while switching XDP -> TC).
    pub xdp_links: BTreeSet<String>,
    /// Cluster mode: the VXLAN device (peerd's, in collect_md mode), if it exists.
    pub vxlan: Option<VxlanFacts>,
}

/// What is known of the host's VXLAN device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VxlanFacts {
    pub ifindex: u32,
    /// The receive program is attached to it (it may be up).
    pub rx_attached: bool,
}

/// One VPC as the host should have it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VpcWant {
    pub name: String,
    pub slot: u32,
    pub netns: String,
    pub host_if: String,
    pub mtu: u32,
    /// Destinations routed via the gateway inside the namespace.
    pub routes: Vec<IpNet>,
    /// VPC-side offloads: `Some(true)` for XDP (GRO on, TX checksum off), `Some(false)` for
    /// TC, `None` to leave them while XDP links remain during a switch to TC.
    pub xdp: Option<bool>,
    /// The host end may be up: the datapath program is attached to it. A link that carries VPC
    /// traffic is never up without its filter.
    pub up: bool,
}

/// Slot -> name maps, for status, explain and flow logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    pub vpcs: BTreeMap<u32, String>,
    pub peerings: BTreeMap<u32, String>,
    /// Table id -> (VPC, table name).
    pub tables: BTreeMap<u32, (String, String)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub mode: DatapathMode,
    /// VPC name -> how the host should have it.
    pub vpcs: BTreeMap<String, VpcWant>,
    pub peerings: Vec<Peering>,
    /// The datapath maps' contents.
    pub tables: Tables,
    /// Host link name -> ifindex: where the program must be attached (links that exist).
    pub programs: BTreeMap<String, u32>,
    pub names: Names,
    /// Cluster mode only.
    pub cluster: Option<ClusterWant>,
}

/// Everything `desired` depends on.
pub struct Inputs<'a> {
    pub config: &'a Config,
    pub peerings: &'a [Peering],
    /// Slots and link names, already assigned for every VPC, table and peering of `config`.
    pub slots: &'a State,
    pub facts: &'a Facts,
    /// Cluster mode: the fleet as last known.
    pub fleet: Option<Fleet<'a>>,
}

/// What the desired state of a host in a fleet depends on besides its configuration.
#[derive(Clone, Copy)]
pub struct Fleet<'a> {
    pub view: &'a crate::cluster::FleetView,
    pub this_host: &'a str,
    /// Workload addresses found in each placed VPC's namespace on this host.
    pub local_endpoints: &'a BTreeMap<String, BTreeSet<std::net::IpAddr>>,
    /// UDP port and MTU of the VXLAN device.
    pub vxlan_port: u16,
    pub underlay_mtu: u32,
    pub underlay_v6: bool,
}

/// Bytes VXLAN adds in front of the inner frame: outer IP (20 or 40), UDP (8), VXLAN (8),
/// inner Ethernet (14).
pub fn vxlan_overhead(underlay_v6: bool) -> u32 {
    if underlay_v6 {
        70
    } else {
        50
    }
}

/// The cluster part of the desired state: what the datapath needs for cross-host traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterWant {
    /// Host slot -> underlay address (other hosts).
    pub hosts: BTreeMap<u32, std::net::IpAddr>,
    pub host_names: BTreeMap<u32, String>,
    /// (VPC slot, workload address) -> host slot (0: this host).
    pub endpoints: BTreeMap<(u32, std::net::IpAddr), u32>,
    /// VNI -> slot, for VPCs present here (the receiving side).
    pub vnis: BTreeMap<u32, u32>,
    /// VPC slot -> VNI, for every VPC of the fleet.
    pub vpc_vni: BTreeMap<u32, u32>,
    /// Slots of VPCs present on other hosts too.
    pub remote: BTreeSet<u32>,
    /// (slot of a VPC present here, source prefix) -> peering slot: who may send to it from
    /// another host besides its own VPC.
    pub allowed: BTreeMap<(u32, IpNet), u32>,
    /// The VXLAN device: UDP port and MTU.
    pub vxlan_port: u16,
    pub vxlan_mtu: u32,
    /// VPC -> the hosts it is present on (status).
    pub vpc_hosts: BTreeMap<String, Vec<String>>,
    /// What the operator should know (an MTU lowered for the encapsulation).
    pub notes: Vec<String>,
}

fn is_explicit(v: &Vpc) -> bool {
    !v.route_tables.is_empty()
}

/// The desired state. Items without a slot (which `State::assign` prevents) are left out
/// rather than panicking.
pub fn desired(inp: &Inputs<'_>) -> Desired {
    let cfg = inp.config;
    let st = inp.slots;
    let mode = cfg.daemon.datapath;
    let mut d = Desired {
        mode,
        peerings: inp.peerings.to_vec(),
        ..Desired::default()
    };
    let by_name: BTreeMap<&str, &Vpc> = cfg.vpcs.iter().map(|v| (v.name.as_str(), v)).collect();
    let slot = |n: &str| st.vpc_slot(n);
    let state_of: BTreeMap<&str, &Peering> =
        inp.peerings.iter().map(|p| (p.id.as_str(), p)).collect();

    for p in inp.peerings {
        let Some(s) = st.peering_slot(&p.id) else {
            continue;
        };
        d.names.peerings.insert(s, p.id.clone());
        d.tables.peerings.insert(
            s,
            PeeringInfo {
                state: if p.state == PeeringState::Active {
                    PEERING_ACTIVE
                } else {
                    0
                },
                vpc_a: slot(&p.vpcs[0]).unwrap_or(0),
                vpc_b: slot(&p.vpcs[1]).unwrap_or(0),
                _pad: 0,
            },
        );
    }
    // The other end of a peering, seen from `vpc`.
    let other = |vpc: &str, id: &str| -> Option<&str> {
        let p = state_of.get(id)?;
        Some(if p.vpcs[0] == vpc {
            p.vpcs[1].as_str()
        } else {
            p.vpcs[0].as_str()
        })
    };

    for v in &cfg.vpcs {
        let Some(me) = slot(&v.name) else {
            continue;
        };
        d.names.vpcs.insert(me, v.name.clone());
        let Some(host_if) = st.links.get(&v.name) else {
            // Not present here (cluster mode): its CIDRs only, so that traffic to it passes the
            // destination check; no source of this host is in it.
            for c in &v.cidrs {
                d.tables.src.insert((me, *c), TABLE_NONE);
            }
            continue;
        };
        let mut routes = BTreeSet::new();
        if is_explicit(v) {
            let mut table_ids = BTreeMap::new();
            for t in &v.route_tables {
                let Some(id) = st.table_id(&v.name, &t.name) else {
                    continue;
                };
                table_ids.insert(t.name.as_str(), id);
                d.names.tables.insert(id, (v.name.clone(), t.name.clone()));
                for r in &t.routes {
                    let peer = other(&v.name, &r.peering).unwrap_or("");
                    let inside = by_name
                        .get(peer)
                        .is_some_and(|p| p.cidrs.iter().any(|c| c.contains(&r.destination)));
                    d.tables.routes.insert(
                        (id, r.destination),
                        RouteTarget {
                            peering: st.peering_slot(&r.peering).unwrap_or(0),
                            dst_vpc: slot(peer).unwrap_or(0),
                            flags: if inside { ROUTE_INSIDE_DST } else { 0 },
                            _pad: 0,
                        },
                    );
                    routes.insert(r.destination);
                }
            }
            let main = table_ids.get(MAIN).copied().unwrap_or(TABLE_NONE);
            for c in &v.cidrs {
                d.tables.src.insert((me, *c), main);
            }
            for s in &v.subnets {
                if let Some(id) = table_ids.get(s.route_table.as_str()) {
                    d.tables.src.insert((me, s.cidr), *id);
                }
            }
        } else if let Some(id) = st.table_id(&v.name, MAIN) {
            // Automatic routing: every CIDR of every active peer.
            d.names.tables.insert(id, (v.name.clone(), MAIN.to_owned()));
            for c in &v.cidrs {
                d.tables.src.insert((me, *c), id);
            }
            for pe in &v.peerings {
                let active = state_of
                    .get(pe.id.as_str())
                    .is_some_and(|p| p.state == PeeringState::Active);
                let peer = other(&v.name, &pe.id).and_then(|n| by_name.get(n));
                let (true, Some(peer), Some(pslot)) = (active, peer, st.peering_slot(&pe.id))
                else {
                    continue;
                };
                let Some(dst_vpc) = slot(&peer.name) else {
                    continue;
                };
                // Automatic routes are the peer's own CIDRs: always inside it.
                let target = RouteTarget {
                    peering: pslot,
                    dst_vpc,
                    flags: ROUTE_INSIDE_DST,
                    _pad: 0,
                };
                for c in &peer.cidrs {
                    d.tables.routes.insert((id, *c), target);
                    routes.insert(*c);
                }
            }
        }
        if let Some(f) = &inp.fleet {
            // Present on other hosts too: the namespace sends its own CIDRs to the gateway
            // (its local addresses and the routes to its local workloads are more specific).
            let elsewhere = f
                .view
                .hosts
                .values()
                .any(|h| h.name != f.this_host && h.vpcs.contains(&v.name));
            if elsewhere {
                routes.extend(v.cidrs.iter().copied());
            }
        }
        let link = inp.facts.links.get(&v.name);
        if let Some(l) = link {
            d.tables.ifaces.insert(l.host_ifindex, me);
            d.tables.vpcs.insert(
                me,
                VpcInfo {
                    host_ifindex: l.host_ifindex,
                    flags: VPC_PRESENT,
                    ns_mac: l.ns_mac,
                    gw_mac: l.host_mac,
                    vni: 0,
                },
            );
            d.programs.insert(host_if.clone(), l.host_ifindex);
        }
        let up = link.is_some_and(|l| {
            inp.facts
                .attached
                .contains(&(host_if.clone(), l.host_ifindex))
        });
        d.vpcs.insert(
            v.name.clone(),
            VpcWant {
                name: v.name.clone(),
                slot: me,
                netns: format!("{}{}", cfg.daemon.netns_prefix, v.name),
                host_if: host_if.clone(),
                mtu: vpc_mtu(v, inp.fleet.as_ref()),
                routes: routes.into_iter().collect(),
                xdp: match mode {
                    DatapathMode::Xdp => Some(true),
                    DatapathMode::Tc if inp.facts.xdp_links.contains(host_if) => None,
                    DatapathMode::Tc => Some(false),
                },
                up,
            },
        );
    }
    if let Some(f) = &inp.fleet {
        let c = cluster(inp, f, &d);
        cluster_tables(&mut d.tables, &c, inp.facts.vxlan);
        d.cluster = Some(c);
    }
    d
}

/// The datapath's part of cluster mode: VNIs and `VPC_REMOTE` on the VPCs (a VPC that is only
/// on other hosts gets a slot entry without a link), the endpoints, hosts, VNIs and allowed
/// sources, and the VXLAN device once it exists.
fn cluster_tables(t: &mut Tables, c: &ClusterWant, vxlan: Option<VxlanFacts>) {
    for (&slot, &vni) in &c.vpc_vni {
        let remote = c.remote.contains(&slot);
        match t.vpcs.get_mut(&slot) {
            Some(v) => {
                v.vni = vni;
                if remote {
                    v.flags |= VPC_REMOTE;
                }
            }
            None if remote => {
                t.vpcs.insert(
                    slot,
                    VpcInfo {
                        flags: VPC_REMOTE,
                        vni,
                        ..VpcInfo::default()
                    },
                );
            }
            None => {}
        }
    }
    t.endpoints = c.endpoints.clone();
    t.hosts = c.hosts.clone();
    t.vnis = c.vnis.clone();
    t.allowed = c.allowed.clone();
    t.vxlan_ifindex = vxlan.map_or(0, |v| v.ifindex);
}

/// A VPC's link MTU: as configured, and in cluster mode at most what the underlay carries
/// after the encapsulation.
fn vpc_mtu(v: &Vpc, fleet: Option<&Fleet<'_>>) -> u32 {
    let mtu = v.mtu.unwrap_or(1500);
    match fleet {
        Some(f) => mtu.min(f.underlay_mtu.saturating_sub(vxlan_overhead(f.underlay_v6))),
        None => mtu,
    }
}

fn cluster(inp: &Inputs<'_>, f: &Fleet<'_>, d: &Desired) -> ClusterWant {
    let st = inp.slots;
    let view = f.view;
    let mut c = ClusterWant {
        vxlan_port: f.vxlan_port,
        vxlan_mtu: f.underlay_mtu.saturating_sub(vxlan_overhead(f.underlay_v6)),
        ..ClusterWant::default()
    };
    for h in view.hosts.values().filter(|h| h.name != f.this_host) {
        if let Some(s) = st.hosts.get(&h.name) {
            c.hosts.insert(*s, h.underlay);
            c.host_names.insert(*s, h.name.clone());
        }
    }
    for h in view.hosts.values() {
        for v in &h.vpcs {
            c.vpc_hosts
                .entry(v.clone())
                .or_default()
                .push(h.name.clone());
        }
    }
    for v in &inp.config.vpcs {
        let (Some(slot), Some(fv)) = (st.vpc_slot(&v.name), view.vpcs.get(&v.name)) else {
            continue;
        };
        c.vpc_vni.insert(slot, fv.vni);
        let elsewhere = c
            .vpc_hosts
            .get(&v.name)
            .is_some_and(|hs| hs.iter().any(|h| h != f.this_host));
        if elsewhere {
            c.remote.insert(slot);
        }
        if d.vpcs.contains_key(&v.name) {
            c.vnis.insert(fv.vni, slot);
            let want = vpc_mtu(v, Some(f));
            if v.mtu.is_some_and(|m| m > want) {
                c.notes.push(format!(
                    "VPC {}: mtu {} lowered to {want}: the VXLAN underlay (mtu {}, {}) takes {} bytes",
                    v.name,
                    v.mtu.unwrap_or(1500),
                    f.underlay_mtu,
                    if f.underlay_v6 { "IPv6" } else { "IPv4" },
                    vxlan_overhead(f.underlay_v6)
                ));
            }
        }
    }
    // Remote workloads: the most recent publisher of each address; this host's own from what
    // it finds in its namespaces (fresher than etcd).
    for ((vpc, addr), e) in view.endpoint_hosts() {
        let (Some(slot), Some(host)) = (st.vpc_slot(vpc), st.hosts.get(&e.host)) else {
            continue;
        };
        if e.host != f.this_host {
            c.endpoints.insert((slot, addr), *host);
        }
    }
    for (vpc, addrs) in f.local_endpoints {
        if let Some(slot) = st.vpc_slot(vpc) {
            for a in addrs {
                c.endpoints.insert((slot, *a), 0);
            }
        }
    }
    // Who may reach a VPC present here from another host: its active peers' CIDRs.
    let by_name: BTreeMap<&str, &Vpc> = inp
        .config
        .vpcs
        .iter()
        .map(|v| (v.name.as_str(), v))
        .collect();
    for p in inp
        .peerings
        .iter()
        .filter(|p| p.state == PeeringState::Active)
    {
        let Some(pslot) = st.peering_slot(&p.id) else {
            continue;
        };
        for (here, other) in [(&p.vpcs[0], &p.vpcs[1]), (&p.vpcs[1], &p.vpcs[0])] {
            let (true, Some(slot), Some(o)) = (
                d.vpcs.contains_key(here),
                st.vpc_slot(here),
                by_name.get(other.as_str()),
            ) else {
                continue;
            };
            for cidr in &o.cidrs {
                c.allowed.insert((slot, *cidr), pslot);
            }
        }
    }
    c
}

/// Does VPC `name` have a namespace on this host? Every VPC on a single host; in cluster mode
/// those `[cluster] vpcs` lists.
pub fn placed(cfg: &Config, name: &str) -> bool {
    match &cfg.daemon.cluster {
        None => true,
        Some(c) => c.vpcs.iter().any(|v| v == name),
    }
}

/// What `State::assign` must place for `cfg`: every VPC (with its namespace name), every route
/// table and every declared peering id.
pub fn wanted<'a>(cfg: &'a Config, taken_links: &'a BTreeSet<String>) -> crate::state::Wanted<'a> {
    let mut w = crate::state::Wanted {
        vpcs: BTreeMap::new(),
        tables: BTreeSet::new(),
        peerings: BTreeSet::new(),
        taken_links,
        netns_prefix: &cfg.daemon.netns_prefix,
        placed: BTreeSet::new(),
        hosts: BTreeSet::new(),
    };
    for v in &cfg.vpcs {
        w.vpcs.insert(
            v.name.as_str(),
            format!("{}{}", cfg.daemon.netns_prefix, v.name),
        );
        w.peerings.extend(v.peerings.iter().map(|p| p.id.as_str()));
        if !placed(cfg, &v.name) {
            // A VPC of the fleet that has no namespace here: a destination only.
            continue;
        }
        w.placed.insert(v.name.as_str());
        if is_explicit(v) {
            w.tables.extend(
                v.route_tables
                    .iter()
                    .map(|t| (v.name.as_str(), t.name.as_str())),
            );
        } else {
            w.tables.insert((v.name.as_str(), MAIN));
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle;
    use std::path::Path;

    fn setup(text: &str) -> (Config, Vec<Peering>, State) {
        let cfg = Config::from_str(text, Path::new("t.toml")).unwrap();
        let none = BTreeSet::new();
        let st = State::default().assign(&wanted(&cfg, &none), 0).unwrap();
        let (p, recs) = lifecycle::evaluate(&cfg, &st.peerings, 0);
        let mut st = st;
        st.peerings = recs;
        (cfg, p, st)
    }

    fn on_one_host(cfg: &Config, p: &[Peering], st: &State, facts: &Facts) -> Desired {
        desired(&Inputs {
            config: cfg,
            peerings: p,
            slots: st,
            facts,
            fleet: None,
        })
    }

    const AB: &str = "[[vpc]]\nname = \"a\"\ncidrs = [\"10.0.0.0/16\"]\n[[vpc.peering]]\nid = \"pcx-ab\"\npeer = \"b\"\n[[vpc]]\nname = \"b\"\ncidrs = [\"10.1.0.0/16\"]\n[[vpc.peering]]\nid = \"pcx-ab\"\npeer = \"a\"\n";

    #[test]
    fn links_without_facts_get_no_entries_and_stay_down_until_attached() {
        let (cfg, p, st) = setup(AB);
        let mut facts = Facts::default();
        let d = on_one_host(&cfg, &p, &st, &facts);
        assert!(d.tables.ifaces.is_empty() && d.tables.vpcs.is_empty());
        assert_eq!(d.tables.routes.len(), 2, "routes need no facts");
        assert!(!d.vpcs["a"].up);
        let a_if = st.links["a"].clone();
        facts.links.insert(
            "a".into(),
            LinkFacts {
                host_ifindex: 7,
                ..Default::default()
            },
        );
        let d = on_one_host(&cfg, &p, &st, &facts);
        assert_eq!(d.tables.ifaces.get(&7), Some(&st.vpcs["a"]));
        assert_eq!(d.programs.get(&a_if), Some(&7));
        assert!(!d.vpcs["a"].up, "not up before the program is attached");
        facts.attached.insert((a_if, 7));
        let d2 = on_one_host(&cfg, &p, &st, &facts);
        assert!(d2.vpcs["a"].up);
        // Pure: the same inputs, the same output.
        assert_eq!(d2, on_one_host(&cfg, &p, &st, &facts));
    }
}
