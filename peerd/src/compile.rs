//! From a validated configuration and the peerings' states to what the host and the datapath
//! should hold: per VPC its namespace, link and in-namespace routes; the datapath's tables.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::SystemTime,
};

use ipnet::IpNet;
use peerd_common::{PeeringInfo, RouteTarget, PEERING_ACTIVE, ROUTE_INSIDE_DST, TABLE_NONE};

use crate::{
    config::{Config, Peering, PeeringState, Vpc},
    netns,
    state::{self, State},
    tables::Tables,
};

pub const MAIN: &str = "main";

/// One VPC as the host should have it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VpcPlan {
    pub name: String,
    pub slot: u32,
    pub netns: String,
    pub host_if: String,
    pub mtu: u32,
    /// Destinations routed via the gateway inside the namespace.
    pub ns_routes: Vec<IpNet>,
}

/// Everything a reconcile needs. `tables.ifaces` / `tables.vpcs` are filled once the links
/// exist (they need ifindexes and MACs).
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub vpcs: Vec<VpcPlan>,
    pub peerings: Vec<Peering>,
    pub tables: Tables,
    /// Table id -> (VPC, table name), for explain and status.
    pub table_names: BTreeMap<u32, (String, String)>,
    /// Peering id -> slot.
    pub peering_slots: BTreeMap<String, u32>,
}

/// Adds history to the states decided from the configuration alone (SPEC §4):
/// a peering that was active and lost an end is `disconnected`; one pending longer than
/// `pending_expiry` is `expired` and stays so (the requester must ask again with a new id).
pub fn apply_lifecycle(
    cfg: &Config,
    peerings: &mut [Peering],
    st: &mut State,
    now: SystemTime,
) -> Result<(), state::Error> {
    for p in peerings.iter_mut() {
        let rec = st.peering(&p.id, now)?;
        let prev = rec.state;
        match p.state {
            // An expired request stays expired, even if the other end accepts it now: the
            // requester asks again with a new id (as in AWS).
            PeeringState::PendingAcceptance | PeeringState::Active
                if prev == Some(PeeringState::Expired) =>
            {
                p.state = PeeringState::Expired;
                p.reason = Some("nobody accepted the request in time".into());
            }
            PeeringState::PendingAcceptance
                if matches!(
                    prev,
                    Some(PeeringState::Active | PeeringState::Disconnected)
                ) =>
            {
                p.state = PeeringState::Disconnected;
                p.reason = Some("one end removed its declaration".into());
                if prev == Some(PeeringState::Active) {
                    rec.ended_at = Some(state::unix(now));
                }
            }
            PeeringState::PendingAcceptance => {
                let age = state::unix(now).saturating_sub(rec.first_seen);
                if age >= cfg.daemon.pending_expiry.as_secs() {
                    p.state = PeeringState::Expired;
                    p.reason = Some("nobody accepted the request in time".into());
                    rec.ended_at = Some(state::unix(now));
                }
            }
            PeeringState::Active if prev != Some(PeeringState::Active) => {
                rec.activated_at = Some(state::unix(now));
                rec.ended_at = None;
            }
            PeeringState::Active if rec.activated_at.is_none() => {
                rec.activated_at = Some(state::unix(now));
            }
            _ => {}
        }
        rec.state = Some(p.state);
    }
    Ok(())
}

fn is_explicit(v: &Vpc) -> bool {
    !v.route_tables.is_empty()
}

/// Builds the plan. Slots come from (and are recorded in) `st`.
pub fn compile(cfg: &Config, peerings: Vec<Peering>, st: &mut State) -> Result<Plan, state::Error> {
    let mut plan = Plan::default();
    let by_name: BTreeMap<&str, &Vpc> = cfg.vpcs.iter().map(|v| (v.name.as_str(), v)).collect();
    let names: BTreeSet<String> = cfg.vpcs.iter().map(|v| v.name.clone()).collect();
    let ids: BTreeSet<String> = peerings.iter().map(|p| p.id.clone()).collect();
    st.retain(&names, &ids);

    let mut slot = BTreeMap::new();
    for v in &cfg.vpcs {
        slot.insert(v.name.as_str(), st.vpc_slot(&v.name)?);
    }
    let state_of: BTreeMap<&str, &Peering> = peerings.iter().map(|p| (p.id.as_str(), p)).collect();

    // Peerings.
    for p in &peerings {
        let s = st.peering(&p.id, SystemTime::now())?.slot;
        plan.peering_slots.insert(p.id.clone(), s);
        let end = |n: &str| slot.get(n).copied().unwrap_or(0);
        plan.tables.peerings.insert(
            s,
            PeeringInfo {
                state: if p.state == PeeringState::Active {
                    PEERING_ACTIVE
                } else {
                    0
                },
                vpc_a: end(&p.vpcs[0]),
                vpc_b: end(&p.vpcs[1]),
                _pad: 0,
            },
        );
    }
    // The other end of a peering, seen from `vpc`.
    let other = |vpc: &str, id: &str| -> Option<&str> {
        let p = state_of.get(id)?;
        if p.vpcs[0] == vpc {
            Some(p.vpcs[1].as_str())
        } else {
            Some(p.vpcs[0].as_str())
        }
    };

    for v in &cfg.vpcs {
        let me = slot[v.name.as_str()];
        let mut ns_routes = BTreeSet::new();
        if is_explicit(v) {
            let mut table_ids = BTreeMap::new();
            for t in &v.route_tables {
                let id = st.table_id(&v.name, &t.name)?;
                table_ids.insert(t.name.as_str(), id);
                plan.table_names
                    .insert(id, (v.name.clone(), t.name.clone()));
                for r in &t.routes {
                    let peer = other(&v.name, &r.peering).unwrap_or("");
                    let dst_vpc = slot.get(peer).copied().unwrap_or(0);
                    let pslot = plan.peering_slots.get(&r.peering).copied().unwrap_or(0);
                    let inside = by_name
                        .get(peer)
                        .is_some_and(|p| p.cidrs.iter().any(|c| c.contains(&r.destination)));
                    plan.tables.routes.insert(
                        (id, r.destination),
                        RouteTarget {
                            peering: pslot,
                            dst_vpc,
                            flags: if inside { ROUTE_INSIDE_DST } else { 0 },
                            _pad: 0,
                        },
                    );
                    ns_routes.insert(r.destination);
                }
            }
            let main = table_ids.get(MAIN).copied().unwrap_or(TABLE_NONE);
            for c in &v.cidrs {
                plan.tables.src.insert((me, *c), main);
            }
            for s in &v.subnets {
                if let Some(id) = table_ids.get(s.route_table.as_str()) {
                    plan.tables.src.insert((me, s.cidr), *id);
                }
            }
        } else {
            // Automatic routing: every CIDR of every active peer.
            let id = st.table_id(&v.name, MAIN)?;
            plan.table_names
                .insert(id, (v.name.clone(), MAIN.to_owned()));
            for c in &v.cidrs {
                plan.tables.src.insert((me, *c), id);
            }
            for pe in &v.peerings {
                let Some(p) = state_of.get(pe.id.as_str()) else {
                    continue;
                };
                if p.state != PeeringState::Active {
                    continue;
                }
                let Some(peer) = other(&v.name, &pe.id).and_then(|n| by_name.get(n)) else {
                    continue;
                };
                // Automatic routes are the peer's own CIDRs: always inside it.
                let target = RouteTarget {
                    peering: plan.peering_slots[&pe.id],
                    dst_vpc: slot[peer.name.as_str()],
                    flags: ROUTE_INSIDE_DST,
                    _pad: 0,
                };
                for c in &peer.cidrs {
                    plan.tables.routes.insert((id, *c), target);
                    ns_routes.insert(*c);
                }
            }
        }
        let netns = format!("{}{}", cfg.daemon.netns_prefix, v.name);
        plan.vpcs.push(VpcPlan {
            name: v.name.clone(),
            slot: me,
            host_if: netns::host_ifname(&netns),
            netns,
            mtu: v.mtu.unwrap_or(1500),
            ns_routes: ns_routes.into_iter().collect(),
        });
    }
    plan.peerings = peerings;
    Ok(plan)
}
