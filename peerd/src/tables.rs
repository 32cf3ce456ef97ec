//! The datapath's desired contents, as plain Rust values, and the reference model of the
//! forwarding decision (SPEC §5) over them. The eBPF program implements the same decision over
//! the same tables (written to its maps by `datapath`); tests compare the two.
use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use peerd_common::{
    DropReason, IfaceInfo, PeeringInfo, RouteTarget, VpcInfo, PEERING_ACTIVE, TABLE_NONE,
    VPC_PRESENT,
};

/// Everything the datapath's maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    /// Host-side veth ifindex -> VPC slot.
    pub ifaces: BTreeMap<u32, IfaceInfo>,
    /// VPC slot -> delivery info.
    pub vpcs: BTreeMap<u32, VpcInfo>,
    /// Peering slot -> state and ends.
    pub peerings: BTreeMap<u32, PeeringInfo>,
    /// (VPC slot, VPC CIDR or subnet) -> route table for sources in it (`TABLE_NONE`: none).
    pub src: BTreeMap<(u32, IpNet), u32>,
    /// (table, destination) -> target.
    pub routes: BTreeMap<(u32, IpNet), RouteTarget>,
}

/// What the datapath does with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Deliver {
        dst_vpc: u32,
        peering: u32,
        table: u32,
        route: IpNet,
    },
    Drop(DropReason),
}

/// Longest-prefix match of `addr` among the keys `(id, prefix)` of `map`.
pub fn lpm<V>(map: &BTreeMap<(u32, IpNet), V>, id: u32, addr: IpAddr) -> Option<(IpNet, &V)> {
    let max = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    (0..=max).rev().find_map(|len| {
        let net = IpNet::new(addr, len).ok()?.trunc();
        map.get(&(id, net)).map(|v| (net, v))
    })
}

/// Is `addr` unicast and routable in the sense of SPEC §5 step 1?
pub fn is_forwardable_unicast(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => !a.is_multicast() && !a.is_broadcast(),
        IpAddr::V6(a) => {
            let o = a.octets();
            !(o[0] == 0xff || (o[0] == 0xfe && o[1] & 0xc0 == 0x80))
        }
    }
}

/// The decision and the steps that led to it (for `peerd explain`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trace {
    /// The route table that applied to the source (`None`: spoofed, or `TABLE_NONE`).
    pub table: Option<u32>,
    /// The longest-prefix-match route, if any.
    pub route: Option<(IpNet, RouteTarget)>,
    pub decision: Decision,
}

/// The decision for a well-formed packet from VPC slot `src_vpc`.
pub fn decide(t: &Tables, src_vpc: u32, src: IpAddr, dst: IpAddr, ttl: u8) -> Decision {
    trace(t, src_vpc, src, dst, ttl).decision
}

pub fn trace(t: &Tables, src_vpc: u32, src: IpAddr, dst: IpAddr, ttl: u8) -> Trace {
    let mut tr = Trace {
        table: None,
        route: None,
        decision: Decision::Drop(DropReason::Malformed),
    };
    let drop = |mut tr: Trace, r| {
        tr.decision = Decision::Drop(r);
        tr
    };
    if src.is_ipv4() != dst.is_ipv4() {
        return tr;
    }
    if !is_forwardable_unicast(dst) {
        return drop(tr, DropReason::NotUnicast);
    }
    let Some((_, &table)) = lpm(&t.src, src_vpc, src) else {
        return drop(tr, DropReason::SpoofedSource);
    };
    if table == TABLE_NONE {
        return drop(tr, DropReason::NoRoute);
    }
    tr.table = Some(table);
    let Some((route, target)) = lpm(&t.routes, table, dst) else {
        return drop(tr, DropReason::NoRoute);
    };
    tr.route = Some((route, *target));
    match t.peerings.get(&target.peering) {
        Some(p) if p.state == PEERING_ACTIVE => {}
        _ => return drop(tr, DropReason::Blackhole),
    }
    if lpm(&t.src, target.dst_vpc, dst).is_none() {
        return drop(tr, DropReason::NotPeerDestination);
    }
    if ttl <= 1 {
        return drop(tr, DropReason::TtlExceeded);
    }
    match t.vpcs.get(&target.dst_vpc) {
        Some(v) if v.flags & VPC_PRESENT != 0 => {
            tr.decision = Decision::Deliver {
                dst_vpc: target.dst_vpc,
                peering: target.peering,
                table,
                route,
            };
            tr
        }
        _ => drop(tr, DropReason::RedirectFailed),
    }
}
