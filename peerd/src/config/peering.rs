//! Peering states decidable from the configuration (SPEC §4). `expired` and `disconnected`
//! need history and are added by the daemon (`compile::apply_lifecycle`).
use std::{collections::BTreeMap, fmt, time::SystemTime};

use serde::{Deserialize, Serialize};

use super::{model::Config, parse::overlaps};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeeringState {
    PendingAcceptance,
    Active,
    Failed,
    Rejected,
    Expired,
    Disconnected,
}

impl PeeringState {
    /// Every state of the lifecycle (metrics export each as a 0/1 series).
    pub const ALL: [PeeringState; 6] = [
        PeeringState::PendingAcceptance,
        PeeringState::Active,
        PeeringState::Failed,
        PeeringState::Rejected,
        PeeringState::Expired,
        PeeringState::Disconnected,
    ];
}

impl fmt::Display for PeeringState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PeeringState::PendingAcceptance => "pending-acceptance",
            PeeringState::Active => "active",
            PeeringState::Failed => "failed",
            PeeringState::Rejected => "rejected",
            PeeringState::Expired => "expired",
            PeeringState::Disconnected => "disconnected",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peering {
    pub id: String,
    /// Requester (the end declared first), then accepter.
    pub vpcs: [String; 2],
    pub state: PeeringState,
    pub reason: Option<String>,
}

/// One peering per id, sorted by id. `first_seen` orders duplicates and quota losers
/// (later loses; unknown or equal: the larger id loses).
pub fn evaluate_peerings(
    cfg: &Config,
    first_seen: &dyn Fn(&str) -> Option<SystemTime>,
) -> Vec<Peering> {
    // id -> ends in config order: (vpc, peer, reject)
    let mut ends: BTreeMap<&str, Vec<(&str, &str, bool)>> = BTreeMap::new();
    for v in &cfg.vpcs {
        for p in &v.peerings {
            ends.entry(&p.id)
                .or_default()
                .push((&v.name, &p.peer, p.reject));
        }
    }
    let mut out: BTreeMap<String, Peering> = BTreeMap::new();
    let mut candidates = Vec::new(); // ids that pass rules 1-5 as active
    let mut pending = Vec::new();
    for (id, es) in &ends {
        let Some(&(req, peer, req_reject)) = es.first() else {
            continue;
        };
        let mut p = Peering {
            id: id.to_string(),
            vpcs: [req.into(), peer.into()],
            state: PeeringState::Failed,
            reason: None,
        };
        let acc = es.get(1);
        if peer == req {
            p.reason = Some("a VPC cannot peer with itself".into());
        } else if cfg.vpc(peer).is_none() {
            p.reason = Some(format!("peer VPC \"{peer}\" does not exist"));
        } else if req_reject || acc.is_some_and(|a| a.2) {
            p.state = PeeringState::Rejected;
        } else if acc.is_none() {
            p.state = PeeringState::PendingAcceptance;
            pending.push(id.to_string());
        } else if let Some(reason) = overlap(cfg, req, peer) {
            p.reason = Some(reason);
        } else {
            p.state = PeeringState::Active;
            candidates.push(id.to_string());
        }
        out.insert(id.to_string(), p);
    }
    // Later first (loses): later first_seen, then larger id.
    let order = |ids: &mut Vec<String>| {
        ids.sort_by(|a, b| {
            let (fa, fb) = (first_seen(a), first_seen(b));
            match (fa, fb) {
                (Some(x), Some(y)) if x != y => x.cmp(&y),
                _ => a.cmp(b),
            }
        })
    };
    order(&mut candidates);
    // Rule 6: one peering per pair.
    let mut pairs: BTreeMap<(String, String), String> = BTreeMap::new();
    for id in &candidates {
        let Some(p) = out.get_mut(id) else {
            continue;
        };
        let mut k = p.vpcs.clone();
        k.sort();
        let key = (k[0].clone(), k[1].clone());
        if let Some(first) = pairs.get(&key) {
            p.state = PeeringState::Failed;
            p.reason = Some(format!(
                "VPCs \"{}\" and \"{}\" already have peering {first}",
                key.0, key.1
            ));
        } else {
            pairs.insert(key, id.clone());
        }
    }
    // Rule 7: quotas.
    let mut active: BTreeMap<String, u32> = BTreeMap::new();
    for id in &candidates {
        let Some(p) = out.get_mut(id) else {
            continue;
        };
        if p.state != PeeringState::Active {
            continue;
        }
        let max = cfg.daemon.max_active_peerings_per_vpc;
        if let Some(over) = p
            .vpcs
            .iter()
            .find(|v| active.get(*v).copied().unwrap_or(0) >= max)
        {
            p.state = PeeringState::Failed;
            p.reason = Some(format!(
                "VPC \"{over}\" exceeds max_active_peerings_per_vpc = {max}"
            ));
            continue;
        }
        for v in &p.vpcs {
            *active.entry(v.clone()).or_default() += 1;
        }
    }
    order(&mut pending);
    let mut requested: BTreeMap<String, u32> = BTreeMap::new();
    for id in &pending {
        let Some(p) = out.get_mut(id) else {
            continue;
        };
        let max = cfg.daemon.max_pending_peerings_per_vpc;
        let n = requested.entry(p.vpcs[0].clone()).or_default();
        if *n >= max {
            p.state = PeeringState::Failed;
            p.reason = Some(format!(
                "VPC \"{}\" exceeds max_pending_peerings_per_vpc = {max}",
                p.vpcs[0]
            ));
        } else {
            *n += 1;
        }
    }
    out.into_values().collect()
}

fn overlap(cfg: &Config, a: &str, b: &str) -> Option<String> {
    let (va, vb) = (cfg.vpc(a)?, cfg.vpc(b)?);
    for ca in &va.cidrs {
        for cb in &vb.cidrs {
            if overlaps(ca, cb) {
                return Some(format!(
                    "CIDR {ca} of VPC \"{a}\" overlaps CIDR {cb} of VPC \"{b}\""
                ));
            }
        }
    }
    None
}
