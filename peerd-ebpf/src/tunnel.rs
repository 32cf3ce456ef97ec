//! Cluster mode's receiving side (SPEC §7): a frame that arrived through the VXLAN device is
//! checked again before it is delivered: the outer source is a host of the fleet, the VNI names
//! a VPC present here, the inner packet is well-formed, its destination is an endpoint of that
//! VPC here, and its source is the VPC's own or allowed by an active peering.
use peerd_common::{fwd_index, DropReason, Underlay, PEERING_ACTIVE, VPC_PRESENT};

use crate::{
    decide::{self, drop, flow_v4, flow_v6, ipv4_hdr, ipv6_hdr, Verdict},
    flow, maps,
    parse::{ptr_at, EthHdr, ETH_P_IP, ETH_P_IPV6},
};

/// The decision for the inner frame at `data..data_end` (`len` bytes), which came from
/// `outer` (the outer source address) with VNI `vni`. A delivery's `host` is the sending
/// host's slot.
#[inline(always)]
pub fn receive(
    data: usize,
    data_end: usize,
    outer: &Underlay,
    vni: u32,
    len: u32,
    vlan_tagged: bool,
) -> Verdict {
    // SAFETY: map lookup results are valid for the program's run.
    let Some(host) = (unsafe { maps::UNDERLAY.get(outer) }).copied() else {
        return drop(0, DropReason::UnknownHost, len);
    };
    // SAFETY: as above.
    let Some(vpc) = (unsafe { maps::VNIS.get(&vni) }).copied() else {
        return drop(0, DropReason::UnknownVni, len);
    };
    if vlan_tagged {
        return drop(vpc, DropReason::UnsupportedProtocol, len);
    }
    let Some(eth) = ptr_at::<EthHdr>(data, data_end, 0) else {
        return drop(vpc, DropReason::Malformed, len);
    };
    // SAFETY: bounds-checked by ptr_at.
    let proto = u16::from_be_bytes(unsafe { (*eth).proto });
    let mut v = match proto {
        ETH_P_IP => {
            let Some((h, ihl)) = ipv4_hdr(data, data_end, len) else {
                return drop(vpc, DropReason::Malformed, len);
            };
            let fields = (h.src, h.dst, h.proto, h.frag);
            let (src, dst) = (fields.0, fields.1);
            let (v, from) = if dst[0] & 0xf0 == 0xe0 || dst == [255, 255, 255, 255] {
                (drop(vpc, DropReason::NotUnicast, len), vpc)
            } else {
                check(
                    eth,
                    vpc,
                    maps::endpoint(vpc, 4, decide::addr16(dst)),
                    || maps::src_v4(vpc, src).is_some(),
                    || maps::allowed_v4(vpc, src),
                    len,
                )
            };
            if flow::enabled() {
                flow_v4(from, data, data_end, ihl, fields, &v, len);
            }
            v
        }
        ETH_P_IPV6 => {
            let Some(h) = ipv6_hdr(data, data_end, len) else {
                return drop(vpc, DropReason::Malformed, len);
            };
            let fields = (h.src, h.dst, h.next_hdr);
            let (src, dst) = (fields.0, fields.1);
            let (v, from) = if dst[0] == 0xff || (dst[0] == 0xfe && dst[1] & 0xc0 == 0x80) {
                (drop(vpc, DropReason::NotUnicast, len), vpc)
            } else {
                check(
                    eth,
                    vpc,
                    maps::endpoint(vpc, 6, dst),
                    || maps::src_v6(vpc, src).is_some(),
                    || maps::allowed_v6(vpc, src),
                    len,
                )
            };
            if flow::enabled() {
                flow_v6(from, data, data_end, fields, &v, len);
            }
            v
        }
        _ => drop(vpc, DropReason::UnsupportedProtocol, len),
    };
    v.host = host;
    v
}

/// The checks on the inner addresses, then the delivery into `vpc`'s link here. Also returns
/// the source VPC for the flow log (the peer's slot when a peering allowed it).
#[inline(always)]
fn check(
    eth: *mut EthHdr,
    vpc: u32,
    endpoint: Option<u32>,
    own_source: impl FnOnce() -> bool,
    allowed: impl FnOnce() -> Option<u32>,
    len: u32,
) -> (Verdict, u32) {
    if endpoint != Some(0) {
        return (drop(vpc, DropReason::NotLocalEndpoint, len), vpc);
    }
    // The same VPC on another host (no peering: slot 0), or an active peer.
    let (fwd_slot, from) = if own_source() {
        (0, vpc)
    } else {
        let peer = allowed().and_then(|p| maps::PEERINGS.get(p).map(|i| (p, i)));
        match peer {
            Some((p, i)) if i.state == PEERING_ACTIVE && i.vpc_a == vpc => {
                (fwd_index(p, 1), i.vpc_b)
            }
            Some((p, i)) if i.state == PEERING_ACTIVE && i.vpc_b == vpc => {
                (fwd_index(p, 0), i.vpc_a)
            }
            _ => return (drop(vpc, DropReason::NotAllowedSource, len), vpc),
        }
    };
    match maps::VPCS.get(vpc) {
        Some(d) if d.flags & VPC_PRESENT != 0 => (decide::local(eth, d, vpc, fwd_slot), from),
        _ => (drop(vpc, DropReason::DestinationUnavailable, len), from),
    }
}
