//! The desired state: a pure function of the configuration, the peerings' states, the slots and
//! what is known of the host (facts), with no clock and no writes. Every reconciler
//! (`reconcile::*`) makes one part of the system match it; `peerd plan` diffs it without
//! applying.
use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use peerd_common::{
    PeeringInfo, RouteTarget, VpcInfo, PEERING_ACTIVE, ROUTE_INSIDE_DST, TABLE_NONE, VPC_PRESENT,
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
}

/// Everything `desired` depends on.
pub struct Inputs<'a> {
    pub config: &'a Config,
    pub peerings: &'a [Peering],
    /// Slots and link names, already assigned for every VPC, table and peering of `config`.
    pub slots: &'a State,
    pub facts: &'a Facts,
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
        let (Some(me), Some(host_if)) = (slot(&v.name), st.links.get(&v.name)) else {
            continue;
        };
        d.names.vpcs.insert(me, v.name.clone());
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
                mtu: v.mtu.unwrap_or(1500),
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
    d
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
    };
    for v in &cfg.vpcs {
        w.vpcs.insert(
            v.name.as_str(),
            format!("{}{}", cfg.daemon.netns_prefix, v.name),
        );
        if is_explicit(v) {
            w.tables.extend(
                v.route_tables
                    .iter()
                    .map(|t| (v.name.as_str(), t.name.as_str())),
            );
        } else {
            w.tables.insert((v.name.as_str(), MAIN));
        }
        w.peerings.extend(v.peerings.iter().map(|p| p.id.as_str()));
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

    const AB: &str = "[[vpc]]\nname = \"a\"\ncidrs = [\"10.0.0.0/16\"]\n[[vpc.peering]]\nid = \"pcx-ab\"\npeer = \"b\"\n[[vpc]]\nname = \"b\"\ncidrs = [\"10.1.0.0/16\"]\n[[vpc.peering]]\nid = \"pcx-ab\"\npeer = \"a\"\n";

    #[test]
    fn links_without_facts_get_no_entries_and_stay_down_until_attached() {
        let (cfg, p, st) = setup(AB);
        let mut facts = Facts::default();
        let d = desired(&Inputs {
            config: &cfg,
            peerings: &p,
            slots: &st,
            facts: &facts,
        });
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
        let d = desired(&Inputs {
            config: &cfg,
            peerings: &p,
            slots: &st,
            facts: &facts,
        });
        assert_eq!(d.tables.ifaces.get(&7), Some(&st.vpcs["a"]));
        assert_eq!(d.programs.get(&a_if), Some(&7));
        assert!(!d.vpcs["a"].up, "not up before the program is attached");
        facts.attached.insert((a_if, 7));
        let d2 = desired(&Inputs {
            config: &cfg,
            peerings: &p,
            slots: &st,
            facts: &facts,
        });
        assert!(d2.vpcs["a"].up);
        // Pure: the same inputs, the same output.
        assert_eq!(
            d2,
            desired(&Inputs {
                config: &cfg,
                peerings: &p,
                slots: &st,
                facts: &facts,
            })
        );
    }
}
