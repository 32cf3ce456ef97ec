//! Rules across files: VPC names unique, the ends of a peering id agree, and the whole set
//! fits the datapath's maps.
//!
//! VPCs are checked in the order given, and each error is laid on the VPC met last among those
//! involved. The resilient loader lists the files that did not change first, so an error that
//! a change brings in lands on the changed file, which is the one reverted.
use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use peerd_common::{MAX_PEERINGS, MAX_PREFIXES, MAX_TABLES, MAX_VPCS};

use super::model::{Diagnostic, Vpc};

/// Sizes of the datapath's maps, as entries usable by configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Capacity {
    pub vpcs: usize,
    pub peerings: usize,
    pub tables: usize,
    /// Per LPM trie: IPv4 and IPv6 sources, IPv4 and IPv6 routes.
    pub prefixes: usize,
}

impl Capacity {
    pub(crate) const DATAPATH: Capacity = Capacity {
        // Slot 0 is reserved (packets from no VPC) or unused; table ids start at 1.
        vpcs: MAX_VPCS as usize - 1,
        peerings: MAX_PEERINGS as usize - 1,
        tables: MAX_TABLES as usize - 1,
        prefixes: MAX_PREFIXES as usize,
    };
}

/// One VPC in checking order, with the index of its file (returned with each error).
pub(crate) type Entry<'a> = (&'a Vpc, usize);

fn is_v4(n: &IpNet) -> bool {
    matches!(n, IpNet::V4(_))
}

/// Per-family counts: `[IPv4, IPv6]`.
fn by_family<'a>(nets: impl Iterator<Item = &'a IpNet>) -> [usize; 2] {
    let mut c = [0, 0];
    for n in nets {
        c[usize::from(!is_v4(n))] += 1;
    }
    c
}

pub(crate) fn cross_check(vpcs: &[Entry<'_>], cap: &Capacity) -> Vec<(Diagnostic, usize)> {
    let mut out = Vec::new();
    let mut push = |file: usize, loc: &super::Location, message: String| {
        out.push((
            Diagnostic {
                location: Some(loc.clone()),
                message,
            },
            file,
        ))
    };

    // Names. A duplicate inside one file is that file's own error (see `parse`).
    let mut names: BTreeMap<&str, (&Vpc, usize)> = BTreeMap::new();
    let mut unique: Vec<Entry<'_>> = Vec::new();
    for &(v, f) in vpcs {
        match names.get(v.name.as_str()) {
            Some(&(first, ff)) => {
                if ff != f {
                    push(
                        f,
                        &v.name_location,
                        format!(
                            "VPC \"{}\" is already defined at {}",
                            v.name, first.name_location
                        ),
                    );
                }
            }
            None => {
                names.insert(&v.name, (v, f));
                unique.push((v, f));
            }
        }
    }

    // Both ends of an id must agree on the pair; an id has at most two ends.
    let mut ends: BTreeMap<&str, Vec<(&Vpc, &super::PeeringEnd, usize)>> = BTreeMap::new();
    for &(v, f) in &unique {
        for p in &v.peerings {
            ends.entry(p.id.as_str()).or_default().push((v, p, f));
        }
    }
    for (id, es) in &ends {
        match es.as_slice() {
            [_, _, (_, pc, fc), ..] => {
                let names: Vec<&str> = es.iter().map(|(v, _, _)| v.name.as_str()).collect();
                push(
                    *fc,
                    &pc.location,
                    format!(
                        "peering {id} is declared by more than two VPCs ({})",
                        names.join(", ")
                    ),
                );
            }
            [(va, pa, _), (vb, pb, fb)] if pa.peer != vb.name || pb.peer != va.name => {
                push(
                    *fb,
                    &pb.location,
                    format!(
                        "the two ends of peering {id} disagree: VPC \"{}\" peers with \"{}\" (at {}), VPC \"{}\" peers with \"{}\"",
                        va.name, pa.peer, pa.location, vb.name, pb.peer
                    ),
                );
            }
            _ => {}
        }
    }

    // Capacity, counted as the VPCs come: each resource is blamed on the VPC that first
    // passes its limit. A route that automatic routing derives from a pair (an automatic VPC
    // declaring a peer, and that peer's CIDRs) is counted when the later of the two comes.
    let mut seen: BTreeMap<&str, &Vpc> = BTreeMap::new();
    let mut auto_declarers: BTreeMap<&str, Vec<&Vpc>> = BTreeMap::new();
    let mut ids: BTreeSet<&str> = BTreeSet::new();
    let (mut n_vpcs, mut n_tables) = (0usize, 0usize);
    let (mut src, mut routes) = ([0usize; 2], [0usize; 2]);
    let mut reported = BTreeSet::new();
    const FAMILY: [&str; 2] = ["IPv4", "IPv6"];
    const SRC_MAP: [&str; 2] = ["PEERD_SRC_V4", "PEERD_SRC_V6"];
    const ROUTE_MAP: [&str; 2] = ["PEERD_ROUTES_V4", "PEERD_ROUTES_V6"];
    for &(v, f) in &unique {
        let automatic = v.route_tables.is_empty();
        let mut over: Vec<(&'static str, String)> = Vec::new();
        n_vpcs += 1;
        if n_vpcs > cap.vpcs {
            over.push((
                "vpcs",
                format!("at most {} VPCs (map PEERD_VPCS)", cap.vpcs),
            ));
        }
        n_tables += if automatic { 1 } else { v.route_tables.len() };
        if n_tables > cap.tables {
            over.push((
                "tables",
                format!(
                    "at most {} route tables in all VPCs (a VPC without tables has one: main)",
                    cap.tables
                ),
            ));
        }
        for p in &v.peerings {
            ids.insert(&p.id);
        }
        if ids.len() > cap.peerings {
            over.push((
                "peerings",
                format!(
                    "at most {} peering ids (map PEERD_PEERINGS), every declared id counts whatever its state",
                    cap.peerings
                ),
            ));
        }
        let own = by_family(v.cidrs.iter().chain(v.subnets.iter().map(|s| &s.cidr)));
        let mut add = if automatic {
            [0, 0]
        } else {
            by_family(
                v.route_tables
                    .iter()
                    .flat_map(|t| t.routes.iter().map(|r| &r.destination)),
            )
        };
        // An automatic table holds each CIDR of each peer once, however many ids name it.
        let peers: BTreeSet<&str> = if automatic {
            v.peerings
                .iter()
                .map(|p| p.peer.as_str())
                .filter(|p| *p != v.name)
                .collect()
        } else {
            BTreeSet::new()
        };
        for p in &peers {
            if let Some(peer) = seen.get(p) {
                let c = by_family(peer.cidrs.iter());
                add[0] += c[0];
                add[1] += c[1];
            }
        }
        let mine = by_family(v.cidrs.iter());
        let declarers = auto_declarers.get(v.name.as_str()).map_or(0, Vec::len);
        add[0] += declarers * mine[0];
        add[1] += declarers * mine[1];
        for fam in 0..2 {
            src[fam] += own[fam];
            routes[fam] += add[fam];
            let limits = [
                (
                    src[fam],
                    SRC_MAP[fam],
                    "source prefixes (CIDRs and subnets) in all VPCs",
                    "",
                ),
                (
                    routes[fam],
                    ROUTE_MAP[fam],
                    "routes in all route tables",
                    "; automatic routing counts every CIDR of every declared peer",
                ),
            ];
            for (n, map, what, why) in limits {
                if n > cap.prefixes {
                    let fam = FAMILY[fam];
                    let limit = format!("at most {} {fam} {what} (map {map}{why})", cap.prefixes);
                    over.push((map, limit));
                }
            }
        }
        for (what, limit) in over {
            if reported.insert(what) {
                push(
                    f,
                    &v.location,
                    format!("VPC \"{}\" does not fit in the datapath: {limit}", v.name),
                );
            }
        }
        seen.insert(&v.name, v);
        for p in peers {
            auto_declarers.entry(p).or_default().push(v);
        }
    }
    out
}
