//! The forwarding decision (SPEC §5), independent of the attach point.
//!
//! Input: the frame and the interface it arrived on. Output: deliver to a VPC's link (the frame
//! already rewritten: TTL / hop limit decremented, MACs set), reply out of the same link (ARP
//! for the gateway), or drop (already counted by reason).
use peerd_common::{
    fwd_index, DropReason, FlowKey, IfaceInfo, RouteTarget, VpcInfo, IFACE_SRC4, IFACE_SRC6,
    IFACE_SRC_TRIE, PEERING_ACTIVE, ROUTE_INSIDE_DST, TABLE_NONE, VPC_PRESENT, VPC_REMOTE,
};

use crate::{
    arp::{self, Arp},
    flow,
    maps::{self, count_drop},
    parse::{ptr_at, EthHdr, Ipv4Hdr, Ipv6Hdr, ETH_LEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6},
};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Deliver,
    /// Cluster mode: encapsulate to host `host` with VNI `vni`, out of the VXLAN device
    /// (`ifindex`).
    Tunnel,
    Reply,
    Drop,
}

/// The outcome. A plain struct with every field always set (not an enum with payloads): with
/// payload enums LLVM may compute on another variant's uninitialised slots, which can hold a
/// packet pointer, and the verifier rejects that arithmetic.
#[derive(Clone, Copy)]
pub struct Verdict {
    pub action: Action,
    /// Why, for drops.
    pub reason: DropReason,
    /// Host-side link of the destination VPC, for deliveries.
    pub ifindex: u32,
    pub fwd_slot: u32,
    pub dst_vpc: u32,
    /// Cluster mode: the host slot the packet goes to (`Tunnel`) or came from (receiving).
    pub host: u32,
    pub vni: u32,
}

impl Verdict {
    pub const REPLY: Verdict = Verdict {
        action: Action::Reply,
        reason: DropReason::Malformed,
        ifindex: 0,
        fwd_slot: 0,
        dst_vpc: 0,
        host: 0,
        vni: 0,
    };

    pub fn dropped(reason: DropReason) -> Verdict {
        Verdict {
            action: Action::Drop,
            reason,
            ifindex: 0,
            fwd_slot: 0,
            dst_vpc: 0,
            host: 0,
            vni: 0,
        }
    }
}

/// Counts a drop and returns the verdict.
#[inline(always)]
pub fn drop(vpc: u32, reason: DropReason, len: u32) -> Verdict {
    count_drop(vpc, reason, len);
    Verdict::dropped(reason)
}

/// Decides what happens to the frame at `data..data_end` (`len` bytes in all) that arrived
/// on `ifindex`. `vlan_tagged`: the frame carried an 802.1Q / 802.1ad tag that the kernel has
/// already taken out of the data (TC sees `__sk_buff.vlan_present`; XDP sees tags in the data
/// and drops them as an unsupported ethertype).
#[inline(always)]
pub fn process(data: usize, data_end: usize, ifindex: u32, len: u32, vlan_tagged: bool) -> Verdict {
    // SAFETY: map lookup result is valid for the program's run.
    let Some(iface) = (unsafe { maps::IFACES.get(&ifindex) }) else {
        return drop(0, DropReason::UnknownInterface, len);
    };
    let vpc = iface.vpc;
    if vlan_tagged {
        // VPC links are untagged: a tagged frame is not the plain IP packet it now looks like.
        return drop(vpc, DropReason::UnsupportedProtocol, len);
    }
    let Some(eth) = ptr_at::<EthHdr>(data, data_end, 0) else {
        return drop(vpc, DropReason::Malformed, len);
    };
    // SAFETY: bounds-checked by ptr_at.
    let (proto, dst_mac0) = unsafe { (u16::from_be_bytes((*eth).proto), (*eth).dst[0]) };
    match proto {
        ETH_P_IP | ETH_P_IPV6 if dst_mac0 & 1 != 0 => drop(vpc, DropReason::NotUnicast, len),
        ETH_P_IP => ipv4(data, data_end, iface, len),
        ETH_P_IPV6 => ipv6(data, data_end, iface, len),
        ETH_P_ARP => {
            // The link's own VPC slot must be in use: its gateway MAC is the answer.
            let Some(me) = maps::VPCS.get(vpc).filter(|me| me.flags & VPC_PRESENT != 0) else {
                return drop(vpc, DropReason::UnknownInterface, len);
            };
            match arp::answer(data, data_end, &me.gw_mac) {
                Arp::Replied => Verdict::REPLY,
                Arp::NotForUs => drop(vpc, DropReason::UnsupportedProtocol, len),
                Arp::Malformed => drop(vpc, DropReason::Malformed, len),
            }
        }
        _ => drop(vpc, DropReason::UnsupportedProtocol, len),
    }
}

/// Steps 3–5 of the decision, shared by both families once the lookups are done.
#[inline(always)]
fn choose(
    src_vpc: u32,
    src_table: Option<u32>,
    route: impl FnOnce(u32) -> Option<&'static RouteTarget>,
    dst_in: impl FnOnce(u32) -> bool,
    len: u32,
) -> Result<(u32, u32, u32), Verdict> {
    let Some(table) = src_table else {
        return Err(drop(src_vpc, DropReason::SpoofedSource, len));
    };
    if table == TABLE_NONE {
        return Err(drop(src_vpc, DropReason::NoRoute, len));
    }
    let Some(target) = route(table) else {
        return Err(drop(src_vpc, DropReason::NoRoute, len));
    };
    let (peering, dst_vpc, inside) = (
        target.peering,
        target.dst_vpc,
        target.flags & ROUTE_INSIDE_DST != 0,
    );
    let Some(p) = maps::PEERINGS.get(peering) else {
        return Err(drop(src_vpc, DropReason::Blackhole, len));
    };
    if p.state != PEERING_ACTIVE {
        return Err(drop(src_vpc, DropReason::Blackhole, len));
    }
    // The peering must join the source VPC to the route's destination VPC (SPEC §5 steps 4
    // and 5). The daemon compiles only such routes; this keeps a stale or inconsistent table
    // from forwarding over another VPC's peering, or counting it in the wrong direction.
    let dir = if p.vpc_a == src_vpc && p.vpc_b == dst_vpc {
        0
    } else if p.vpc_b == src_vpc && p.vpc_a == dst_vpc {
        1
    } else {
        return Err(drop(src_vpc, DropReason::Blackhole, len));
    };
    if !inside && !dst_in(dst_vpc) {
        return Err(drop(src_vpc, DropReason::NotPeerDestination, len));
    }
    Ok((peering, dir, dst_vpc))
}

/// Rewrites the MACs for delivery into `dst_vpc` and returns the verdict; drops when the
/// destination VPC's slot is not in use (nowhere to deliver). This is the last check: the
/// caller hands a `Deliver` verdict to the kernel and counts it as forwarded.
///
/// Cluster mode: when the destination VPC is present on other hosts too (`VPC_REMOTE`),
/// `locate` finds the destination address's host: this one (0) delivers here, another host
/// gets the packet through the tunnel, none drops it (`NoEndpoint`).
#[inline(always)]
fn deliver(
    eth: *mut EthHdr,
    src_vpc: u32,
    dst_vpc: u32,
    fwd_slot: u32,
    len: u32,
    locate: impl FnOnce(u32) -> Option<u32>,
) -> Verdict {
    let Some(d) = maps::VPCS.get(dst_vpc) else {
        return drop(src_vpc, DropReason::DestinationUnavailable, len);
    };
    if d.flags != VPC_PRESENT {
        // Only cluster mode's VPCs, and slots not in use, take this branch.
        if d.flags & VPC_REMOTE == 0 {
            return drop(src_vpc, DropReason::DestinationUnavailable, len);
        }
        match locate(dst_vpc) {
            None => return drop(src_vpc, DropReason::NoEndpoint, len),
            Some(0) if d.flags & VPC_PRESENT == 0 => {
                return drop(src_vpc, DropReason::DestinationUnavailable, len)
            }
            Some(0) => {}
            Some(host) => return tunnel(src_vpc, dst_vpc, d.vni, host, fwd_slot, len),
        }
    }
    local(eth, d, dst_vpc, fwd_slot)
}

/// The delivery into `dst_vpc`'s link here (`d`, in use): MACs rewritten.
#[inline(always)]
pub fn local(eth: *mut EthHdr, d: &VpcInfo, dst_vpc: u32, fwd_slot: u32) -> Verdict {
    // SAFETY: `eth` was bounds-checked by the caller. Byte by byte: a slice copy would become
    // a memmove call, which BPF cannot link.
    unsafe {
        let e = &mut *eth;
        for i in 0..6 {
            e.dst[i] = d.ns_mac[i];
            e.src[i] = d.gw_mac[i];
        }
    }
    Verdict {
        action: Action::Deliver,
        reason: DropReason::Malformed,
        ifindex: d.host_ifindex,
        fwd_slot,
        dst_vpc,
        host: 0,
        vni: 0,
    }
}

/// Cluster mode: the packet goes to host slot `host` through the VXLAN device, if there is
/// one and the host is known (else `DestinationUnavailable` / `NoEndpoint`).
#[inline(always)]
fn tunnel(src_vpc: u32, dst_vpc: u32, vni: u32, host: u32, fwd_slot: u32, len: u32) -> Verdict {
    let ifindex = maps::vxlan_ifindex();
    if ifindex == 0 {
        return drop(src_vpc, DropReason::DestinationUnavailable, len);
    }
    if maps::HOSTS.get(host).is_none_or(|h| h.family == 0) {
        return drop(src_vpc, DropReason::NoEndpoint, len);
    }
    Verdict {
        action: Action::Tunnel,
        reason: DropReason::Malformed,
        ifindex,
        fwd_slot,
        dst_vpc,
        host,
        vni,
    }
}

/// Cluster mode, a destination in the sending VPC's own CIDRs (`in_own`) when the VPC is
/// present on other hosts: the host the address is on (`Some(0)`: here, or no such VPC
/// presence elsewhere: the decision goes on as on one host), or the drop when it is nowhere.
#[inline(always)]
fn same_vpc(
    iface: &IfaceInfo,
    in_own: impl FnOnce() -> bool,
    locate: impl FnOnce(u32) -> Option<u32>,
    len: u32,
) -> Result<u32, Verdict> {
    if iface.flags & VPC_REMOTE == 0 || !in_own() {
        return Ok(0);
    }
    match locate(iface.vpc) {
        Some(h) => Ok(h),
        None => Err(drop(iface.vpc, DropReason::NoEndpoint, len)),
    }
}

/// IPv4 address as the 16 bytes of an endpoint key.
#[inline(always)]
pub fn addr16(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0] = a[0];
    out[1] = a[1];
    out[2] = a[2];
    out[3] = a[3];
    out
}

/// The route table for an IPv4 source in the link's VPC (longest matching source prefix); None
/// when the source is not the VPC's (spoofed).
#[inline(always)]
fn src_table_v4(iface: &IfaceInfo, src: [u8; 4]) -> Option<u32> {
    let n = iface.n_src4;
    if n == IFACE_SRC_TRIE {
        return maps::src_v4(iface.vpc, src).map(|s| s.table);
    }
    let a = u32::from_ne_bytes(src);
    for i in 0..IFACE_SRC4 {
        if i as u32 >= n {
            break;
        }
        let e = &iface.src4[i];
        if a & u32::from_ne_bytes(e.mask) == u32::from_ne_bytes(e.net) {
            return Some(e.table);
        }
    }
    None
}

/// As `src_table_v4`, for IPv6 (compared as four 32-bit words).
#[inline(always)]
fn src_table_v6(iface: &IfaceInfo, src: &[u8; 16]) -> Option<u32> {
    let n = iface.n_src6;
    if n == IFACE_SRC_TRIE {
        return maps::src_v6(iface.vpc, *src).map(|s| s.table);
    }
    let w = |b: &[u8; 16], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    for i in 0..IFACE_SRC6 {
        if i as u32 >= n {
            break;
        }
        let e = &iface.src6[i];
        let mut same = true;
        for j in [0, 4, 8, 12] {
            same &= w(src, j) & w(&e.mask, j) == w(&e.net, j);
        }
        if same {
            return Some(e.table);
        }
    }
    None
}

/// Source and destination ports of a TCP or UDP header at `l4` (0, 0 when cut short).
#[inline(always)]
fn ports(data: usize, data_end: usize, l4: usize) -> (u16, u16) {
    match ptr_at::<[u8; 4]>(data, data_end, l4) {
        // SAFETY: bounds-checked by ptr_at.
        Some(p) => unsafe {
            (
                u16::from_be_bytes([(*p)[0], (*p)[1]]),
                u16::from_be_bytes([(*p)[2], (*p)[3]]),
            )
        },
        None => (0, 0),
    }
}

/// The IPv4 header after the Ethernet header, if well-formed (version, IHL, total length
/// within the frame, header checksum), with its IHL.
#[inline(always)]
pub fn ipv4_hdr(data: usize, data_end: usize, len: u32) -> Option<(&'static mut Ipv4Hdr, u32)> {
    let ip = ptr_at::<Ipv4Hdr>(data, data_end, ETH_LEN)?;
    // SAFETY: bounds-checked by ptr_at; the packet outlives the program's use of it.
    let h = unsafe { &mut *ip };
    let ihl = (h.ver_ihl & 0x0f) as u32;
    if h.ver_ihl >> 4 != 4 || ihl < 5 {
        return None;
    }
    let tot_len = u16::from_be_bytes(h.tot_len) as u32;
    if tot_len < ihl * 4 || tot_len + ETH_LEN as u32 > len {
        return None;
    }
    if !ipv4_checksum_ok(data, data_end, ihl) {
        return None;
    }
    Some((h, ihl))
}

/// The IPv6 header after the Ethernet header, if well-formed (version, payload length within
/// the frame).
#[inline(always)]
pub fn ipv6_hdr(data: usize, data_end: usize, len: u32) -> Option<&'static mut Ipv6Hdr> {
    let ip = ptr_at::<Ipv6Hdr>(data, data_end, ETH_LEN)?;
    // SAFETY: bounds-checked by ptr_at; the packet outlives the program's use of it.
    let h = unsafe { &mut *ip };
    if h.ver_tc_flow[0] >> 4 != 6 {
        return None;
    }
    let payload = u16::from_be_bytes(h.payload_len) as u32;
    if payload == 0 || payload + 40 + ETH_LEN as u32 > len {
        return None;
    }
    Some(h)
}

/// Records an IPv4 packet's flow (call only when the flow log is on).
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "the header fields, already loaded"
)]
pub fn flow_v4(
    vpc: u32,
    data: usize,
    data_end: usize,
    ihl: u32,
    (src, dst, proto, frag): ([u8; 4], [u8; 4], u8, [u8; 2]),
    v: &Verdict,
    len: u32,
) {
    let mut key = FlowKey {
        src_vpc: vpc,
        family: 4,
        proto,
        ..FlowKey::default()
    };
    for i in 0..4 {
        key.src[i] = src[i];
        key.dst[i] = dst[i];
    }
    // Ports from the first fragment of TCP and UDP.
    let first_fragment = u16::from_be_bytes(frag) & 0x1fff == 0;
    if first_fragment && (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
        let l4 = ETH_LEN + ((ihl as usize) & 0x0f) * 4;
        (key.src_port, key.dst_port) = ports(data, data_end, l4);
    }
    flow::record(&mut key, v, len);
}

/// Records an IPv6 packet's flow (call only when the flow log is on).
#[inline(always)]
pub fn flow_v6(
    vpc: u32,
    data: usize,
    data_end: usize,
    (src, dst, proto): ([u8; 16], [u8; 16], u8),
    v: &Verdict,
    len: u32,
) {
    let mut key = FlowKey {
        src_vpc: vpc,
        family: 6,
        proto,
        src,
        dst,
        ..FlowKey::default()
    };
    if proto == IPPROTO_TCP || proto == IPPROTO_UDP {
        (key.src_port, key.dst_port) = ports(data, data_end, ETH_LEN + 40);
    }
    flow::record(&mut key, v, len);
}

#[inline(always)]
fn ipv4(data: usize, data_end: usize, iface: &IfaceInfo, len: u32) -> Verdict {
    let vpc = iface.vpc;
    let Some((h, ihl)) = ipv4_hdr(data, data_end, len) else {
        return drop(vpc, DropReason::Malformed, len);
    };
    let fields = (h.src, h.dst, h.proto, h.frag);
    let v = ipv4_route(data, h, iface, fields.0, fields.1, len);
    // The flow key only when the flow log is on: building it is a good part of the cost.
    if flow::enabled() {
        flow_v4(vpc, data, data_end, ihl, fields, &v, len);
    }
    v
}

#[inline(always)]
fn ipv4_route(
    data: usize,
    h: &mut Ipv4Hdr,
    iface: &IfaceInfo,
    src: [u8; 4],
    dst: [u8; 4],
    len: u32,
) -> Verdict {
    let vpc = iface.vpc;
    if dst[0] & 0xf0 == 0xe0 || dst == [255, 255, 255, 255] {
        return drop(vpc, DropReason::NotUnicast, len);
    }
    let locate = |v: u32| maps::endpoint(v, 4, addr16(dst));
    let src_table = src_table_v4(iface, src);
    let target = target(
        iface,
        src_table,
        || src_table_v4(iface, dst).is_some(),
        locate,
        |table| maps::route_v4(table, dst),
        |dst_vpc| maps::src_v4(dst_vpc, dst).is_some(),
        len,
    );
    let (host, fwd_slot, dst_vpc) = match target {
        Ok(t) => t,
        Err(v) => return v,
    };
    if h.ttl <= 1 {
        return drop(vpc, DropReason::TtlExceeded, len);
    }
    // RFC 1624 incremental update, as the kernel's ip_decrease_ttl.
    let mut check = u16::from_be_bytes(h.check) as u32 + 0x0100;
    check += (check >= 0xffff) as u32;
    h.check = (check as u16).to_be_bytes();
    h.ttl -= 1;
    if host != 0 {
        return same_vpc_tunnel(vpc, host, len);
    }
    deliver(data as *mut EthHdr, vpc, dst_vpc, fwd_slot, len, locate)
}

/// Where a packet from `iface`'s VPC goes: (host slot, forward counter slot, destination
/// VPC). Cluster mode first: an address of the sending VPC itself on another host goes
/// there (host slot non-zero, counted in slot 0). Otherwise the SPEC §5 decision (host 0).
#[inline(always)]
fn target(
    iface: &IfaceInfo,
    src_table: Option<u32>,
    in_own: impl FnOnce() -> bool,
    locate: impl FnOnce(u32) -> Option<u32>,
    route: impl FnOnce(u32) -> Option<&'static RouteTarget>,
    dst_in: impl FnOnce(u32) -> bool,
    len: u32,
) -> Result<(u32, u32, u32), Verdict> {
    let vpc = iface.vpc;
    let host = match src_table {
        Some(_) => same_vpc(iface, in_own, locate, len)?,
        None => 0,
    };
    if host != 0 {
        return Ok((host, 0, vpc));
    }
    let (peering, dir, dst_vpc) = choose(vpc, src_table, route, dst_in, len)?;
    Ok((0, fwd_index(peering, dir), dst_vpc))
}

/// The tunnel to another host's part of the sending VPC (forwards counted in `PEERD_FWD`
/// slot 0, which no peering uses).
#[inline(always)]
fn same_vpc_tunnel(vpc: u32, host: u32, len: u32) -> Verdict {
    let vni = maps::VPCS.get(vpc).map(|v| v.vni).unwrap_or(0);
    tunnel(vpc, vpc, vni, host, 0, len)
}

/// Verifies the IPv4 header checksum over `ihl` 32-bit words (bounded loop).
#[inline(always)]
fn ipv4_checksum_ok(data: usize, data_end: usize, ihl: u32) -> bool {
    if ihl == 5 {
        // The common case: no options, ten words, unrolled.
        let Some(h) = ptr_at::<[u8; 20]>(data, data_end, ETH_LEN) else {
            return false;
        };
        // SAFETY: bounds-checked by ptr_at.
        let h = unsafe { &*h };
        let mut sum: u32 = 0;
        for i in 0..10 {
            sum += u16::from_be_bytes([h[2 * i], h[2 * i + 1]]) as u32;
        }
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        return sum == 0xffff;
    }
    let mut sum: u32 = 0;
    let words = ihl * 2;
    for i in 0..30u32 {
        if i >= words {
            break;
        }
        let Some(w) = ptr_at::<[u8; 2]>(data, data_end, ETH_LEN + (i as usize) * 2) else {
            return false;
        };
        // SAFETY: bounds-checked by ptr_at.
        sum += u16::from_be_bytes(unsafe { *w }) as u32;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum == 0xffff
}

#[inline(always)]
fn ipv6(data: usize, data_end: usize, iface: &IfaceInfo, len: u32) -> Verdict {
    let vpc = iface.vpc;
    let Some(h) = ipv6_hdr(data, data_end, len) else {
        return drop(vpc, DropReason::Malformed, len);
    };
    let fields = (h.src, h.dst, h.next_hdr);
    let v = ipv6_route(data, h, iface, fields.0, fields.1, len);
    if flow::enabled() {
        flow_v6(vpc, data, data_end, fields, &v, len);
    }
    v
}

#[inline(always)]
fn ipv6_route(
    data: usize,
    h: &mut Ipv6Hdr,
    iface: &IfaceInfo,
    src: [u8; 16],
    dst: [u8; 16],
    len: u32,
) -> Verdict {
    let vpc = iface.vpc;
    // Multicast (ff00::/8) and link-local (fe80::/10) destinations are never forwarded.
    if dst[0] == 0xff || (dst[0] == 0xfe && dst[1] & 0xc0 == 0x80) {
        return drop(vpc, DropReason::NotUnicast, len);
    }
    let locate = |v: u32| maps::endpoint(v, 6, dst);
    let src_table = src_table_v6(iface, &src);
    let target = target(
        iface,
        src_table,
        || src_table_v6(iface, &dst).is_some(),
        locate,
        |table| maps::route_v6(table, dst),
        |dst_vpc| maps::src_v6(dst_vpc, dst).is_some(),
        len,
    );
    let (host, fwd_slot, dst_vpc) = match target {
        Ok(t) => t,
        Err(v) => return v,
    };
    if h.hop_limit <= 1 {
        return drop(vpc, DropReason::TtlExceeded, len);
    }
    h.hop_limit -= 1;
    if host != 0 {
        return same_vpc_tunnel(vpc, host, len);
    }
    deliver(data as *mut EthHdr, vpc, dst_vpc, fwd_slot, len, locate)
}
