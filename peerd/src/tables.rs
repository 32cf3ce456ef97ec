//! The datapath's desired contents, as plain Rust values, and the reference model of the
//! forwarding decision (SPEC §5) over them. The eBPF program implements the same decision over
//! the same tables (written to its maps by `datapath`); tests compare the two.
use std::{collections::BTreeMap, net::IpAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use peerd_common::{
    DropReason, IfaceInfo, PeeringInfo, RouteTarget, SrcV4, SrcV6, VpcInfo, IFACE_SRC_TRIE,
    PEERING_ACTIVE, TABLE_NONE, VPC_PRESENT, VPC_REMOTE,
};

/// Everything the datapath's maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    /// Host-side veth ifindex -> VPC slot.
    pub ifaces: BTreeMap<u32, u32>,
    /// VPC slot -> delivery info.
    pub vpcs: BTreeMap<u32, VpcInfo>,
    /// Peering slot -> state and ends.
    pub peerings: BTreeMap<u32, PeeringInfo>,
    /// (VPC slot, VPC CIDR or subnet) -> route table for sources in it (`TABLE_NONE`: none).
    pub src: BTreeMap<(u32, IpNet), u32>,
    /// (table, destination) -> target.
    pub routes: BTreeMap<(u32, IpNet), RouteTarget>,
    /// Cluster mode: (VPC slot, workload address) -> host slot (0: this host), for VPCs
    /// present on other hosts (`VPC_REMOTE`) and for the VPCs present here (receiving side).
    pub endpoints: BTreeMap<(u32, IpAddr), u32>,
    /// Cluster mode: host slot -> underlay address (other hosts of the fleet).
    pub hosts: BTreeMap<u32, IpAddr>,
    /// Cluster mode: VNI -> slot of a VPC present here.
    pub vnis: BTreeMap<u32, u32>,
    /// Cluster mode: (slot of a VPC present here, source prefix) -> peering slot: sources on
    /// other hosts that may reach it besides its own CIDRs.
    pub allowed: BTreeMap<(u32, IpNet), u32>,
    /// Cluster mode: the VXLAN device tunnelled packets go out of (0: none).
    pub vxlan_ifindex: u32,
}

impl Tables {
    /// The `PEERD_IFACES` values: for every link, its VPC and, when they fit, the VPC's source
    /// prefixes inline (longest first); otherwise `IFACE_SRC_TRIE` sends the program to the
    /// source tries. Either way the program finds the same table as `lpm` over `src`.
    pub fn iface_infos(&self) -> BTreeMap<u32, IfaceInfo> {
        // Per VPC: its IPv4 and IPv6 source prefixes, longest first.
        type Prefixes<N> = Vec<(N, u32)>;
        let mut by_vpc: BTreeMap<u32, (Prefixes<Ipv4Net>, Prefixes<Ipv6Net>)> = BTreeMap::new();
        for (&(vpc, net), &table) in &self.src {
            let e = by_vpc.entry(vpc).or_default();
            match net {
                IpNet::V4(n) => e.0.push((n, table)),
                IpNet::V6(n) => e.1.push((n, table)),
            }
        }
        for (v4, v6) in by_vpc.values_mut() {
            v4.sort_by_key(|(n, _)| std::cmp::Reverse(n.prefix_len()));
            v6.sort_by_key(|(n, _)| std::cmp::Reverse(n.prefix_len()));
        }
        let none = Default::default();
        self.ifaces
            .iter()
            .map(|(&ifindex, &vpc)| {
                let (v4, v6) = by_vpc.get(&vpc).unwrap_or(&none);
                let flags = self.vpcs.get(&vpc).map_or(0, |v| v.flags & VPC_REMOTE);
                let mut info = IfaceInfo {
                    vpc,
                    flags,
                    ..Default::default()
                };
                info.n_src4 = inline(v4, &mut info.src4, |n, table| SrcV4 {
                    net: n.network().octets(),
                    mask: n.netmask().octets(),
                    table,
                });
                info.n_src6 = inline(v6, &mut info.src6, |n, table| SrcV6 {
                    net: n.network().octets(),
                    mask: n.netmask().octets(),
                    table,
                });
                (ifindex, info)
            })
            .collect()
    }
}

/// Fills `slots` with `prefixes` and returns how many, or `IFACE_SRC_TRIE` when they do not
/// fit (the program then uses the source tries).
fn inline<N, T>(prefixes: &[(N, u32)], slots: &mut [T], entry: impl Fn(&N, u32) -> T) -> u32 {
    if prefixes.len() > slots.len() {
        return IFACE_SRC_TRIE;
    }
    for (slot, (net, table)) in slots.iter_mut().zip(prefixes) {
        *slot = entry(net, *table);
    }
    prefixes.len() as u32
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
    /// Cluster mode: to host slot `host` through the tunnel, with the destination VPC's VNI
    /// (`peering` 0 for the sending VPC's own addresses on another host).
    Tunnel {
        dst_vpc: u32,
        peering: u32,
        host: u32,
        vni: u32,
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
    // Cluster mode: the sending VPC's own address on another host goes through the tunnel.
    let src_info = t.vpcs.get(&src_vpc).copied().unwrap_or_default();
    if src_info.flags & VPC_REMOTE != 0 && lpm(&t.src, src_vpc, dst).is_some() {
        match t.endpoints.get(&(src_vpc, dst)) {
            None => return drop(tr, DropReason::NoEndpoint),
            Some(0) => {}
            Some(&host) => {
                if ttl <= 1 {
                    return drop(tr, DropReason::TtlExceeded);
                }
                tr.decision = tunnel(t, src_vpc, 0, host, src_info.vni);
                return tr;
            }
        }
    }
    if table == TABLE_NONE {
        return drop(tr, DropReason::NoRoute);
    }
    tr.table = Some(table);
    let Some((route, target)) = lpm(&t.routes, table, dst) else {
        return drop(tr, DropReason::NoRoute);
    };
    tr.route = Some((route, *target));
    // An active peering that joins the source VPC to the route's destination VPC.
    let (s, d) = (src_vpc, target.dst_vpc);
    match t.peerings.get(&target.peering) {
        Some(p)
            if p.state == PEERING_ACTIVE
                && ((p.vpc_a, p.vpc_b) == (s, d) || (p.vpc_b, p.vpc_a) == (s, d)) => {}
        _ => return drop(tr, DropReason::Blackhole),
    }
    if lpm(&t.src, target.dst_vpc, dst).is_none() {
        return drop(tr, DropReason::NotPeerDestination);
    }
    if ttl <= 1 {
        return drop(tr, DropReason::TtlExceeded);
    }
    let deliver = Decision::Deliver {
        dst_vpc: target.dst_vpc,
        peering: target.peering,
        table,
        route,
    };
    tr.decision = match t.vpcs.get(&target.dst_vpc) {
        None => Decision::Drop(DropReason::DestinationUnavailable),
        Some(v) if v.flags & VPC_REMOTE == 0 => match v.flags & VPC_PRESENT {
            0 => Decision::Drop(DropReason::DestinationUnavailable),
            _ => deliver,
        },
        // Cluster mode: the destination VPC is on other hosts too: where is the address?
        Some(v) => match t.endpoints.get(&(target.dst_vpc, dst)) {
            None => Decision::Drop(DropReason::NoEndpoint),
            Some(0) if v.flags & VPC_PRESENT == 0 => {
                Decision::Drop(DropReason::DestinationUnavailable)
            }
            Some(0) => deliver,
            Some(&host) => tunnel(t, target.dst_vpc, target.peering, host, v.vni),
        },
    };
    tr
}

/// The tunnel to `host`, or the drop when there is no VXLAN device or the host is unknown.
fn tunnel(t: &Tables, dst_vpc: u32, peering: u32, host: u32, vni: u32) -> Decision {
    if t.vxlan_ifindex == 0 {
        Decision::Drop(DropReason::DestinationUnavailable)
    } else if !t.hosts.contains_key(&host) {
        Decision::Drop(DropReason::NoEndpoint)
    } else {
        Decision::Tunnel {
            dst_vpc,
            peering,
            host,
            vni,
        }
    }
}

/// Cluster mode, the receiving side (SPEC §7): the decision for a well-formed frame that came
/// through the tunnel from underlay address `outer` with VNI `vni`. A delivery's `peering` is 0
/// for the VPC's own traffic from another host; `table` and `route` are unused (0, default).
pub fn receive(t: &Tables, outer: IpAddr, vni: u32, src: IpAddr, dst: IpAddr) -> Decision {
    if !t.hosts.values().any(|a| *a == outer) {
        return Decision::Drop(DropReason::UnknownHost);
    }
    let Some(&vpc) = t.vnis.get(&vni) else {
        return Decision::Drop(DropReason::UnknownVni);
    };
    if src.is_ipv4() != dst.is_ipv4() {
        return Decision::Drop(DropReason::Malformed);
    }
    if !is_forwardable_unicast(dst) {
        return Decision::Drop(DropReason::NotUnicast);
    }
    if t.endpoints.get(&(vpc, dst)) != Some(&0) {
        return Decision::Drop(DropReason::NotLocalEndpoint);
    }
    let peering = if lpm(&t.src, vpc, src).is_some() {
        0
    } else {
        let p = lpm(&t.allowed, vpc, src).and_then(|(_, p)| Some((*p, t.peerings.get(p)?)));
        match p {
            Some((p, i)) if i.state == PEERING_ACTIVE && (i.vpc_a == vpc || i.vpc_b == vpc) => p,
            _ => return Decision::Drop(DropReason::NotAllowedSource),
        }
    };
    match t.vpcs.get(&vpc) {
        Some(v) if v.flags & VPC_PRESENT != 0 => Decision::Deliver {
            dst_vpc: vpc,
            peering,
            table: 0,
            route: IpNet::default(),
        },
        _ => Decision::Drop(DropReason::DestinationUnavailable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerd_common::IFACE_SRC4;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn iface_infos_inline_longest_first_and_fall_back_to_the_tries() {
        let mut t = Tables::default();
        t.ifaces.insert(7, 1);
        t.ifaces.insert(8, 2);
        // VPC 1: a CIDR and a subnet with its own table, one IPv6 CIDR.
        t.src.insert((1, net("10.0.0.0/16")), 5);
        t.src.insert((1, net("10.0.3.0/24")), 6);
        t.src.insert((1, net("fd00::/48")), 5);
        // VPC 2: more IPv4 prefixes than fit inline, none for IPv6.
        for i in 0..=IFACE_SRC4 {
            t.src.insert((2, net(&format!("10.{}.0.0/16", 10 + i))), 9);
        }
        let infos = t.iface_infos();
        let a = infos[&7];
        assert_eq!((a.vpc, a.n_src4, a.n_src6), (1, 2, 1));
        assert_eq!(
            a.src4[0],
            SrcV4 {
                net: [10, 0, 3, 0],
                mask: [255, 255, 255, 0],
                table: 6
            },
            "the subnet (longer) comes first"
        );
        assert_eq!(a.src4[1].table, 5);
        assert_eq!(a.src6[0].mask[..7], [255, 255, 255, 255, 255, 255, 0]);
        let b = infos[&8];
        assert_eq!((b.vpc, b.n_src4, b.n_src6), (2, IFACE_SRC_TRIE, 0));
    }
}
