//! Types shared by the eBPF datapath and the daemon.
//!
//! Every map key and value is `#[repr(C)]`, `Copy`, free of implicit padding, and has the same
//! layout on the BPF target and on the host (checked at compile time below).
#![cfg_attr(target_arch = "bpf", no_std)]

/// Why the datapath dropped a packet. The discriminant is the counter slot.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Truncated headers, bad version, IHL, length or IPv4 header checksum.
    Malformed = 0,
    /// Broadcast or multicast, or a link-local destination.
    NotUnicast = 1,
    /// Not IPv4, IPv6, or ARP for the gateway; or VLAN-tagged (802.1Q / 802.1ad), whatever
    /// it carries: VPC links are untagged.
    UnsupportedProtocol = 2,
    /// The source address is not in the source VPC's CIDRs.
    SpoofedSource = 3,
    /// No route in the applicable table matches the destination.
    NoRoute = 4,
    /// The route names a peering that is not active.
    Blackhole = 5,
    /// The destination is not in the CIDRs of the peering's other VPC.
    NotPeerDestination = 6,
    /// TTL / hop limit would reach zero.
    TtlExceeded = 7,
    /// The route's destination VPC has no link in the datapath (`VPC_PRESENT` unset: the VPC
    /// is being created or removed, or its link could not be set up), so there is nowhere to
    /// deliver. Slot 8, formerly `redirect-failed`: counters keep their meaning across the
    /// rename, since the redirect helpers (flags 0) never fail and this was its only cause.
    DestinationUnavailable = 8,
    /// The packet arrived on an interface that belongs to no VPC (counted in slot 0), or an
    /// ARP request arrived on the link of a VPC slot that is not in use (counted there).
    UnknownInterface = 9,
    /// Cluster mode: the destination VPC is present on other hosts, and its address is an
    /// endpoint on none (no workload there, or its host left the fleet).
    NoEndpoint = 10,
    /// Cluster mode, receiving: the outer source is not a host of the fleet (counted in slot 0).
    UnknownHost = 11,
    /// Cluster mode, receiving: the VNI names no VPC present here (counted in slot 0).
    UnknownVni = 12,
    /// Cluster mode, receiving: the inner destination is not an endpoint of the VPC here.
    NotLocalEndpoint = 13,
    /// Cluster mode, receiving: the inner source is neither in the destination VPC's CIDRs nor
    /// in the CIDRs of a VPC it has an active peering with.
    NotAllowedSource = 14,
}

impl DropReason {
    pub const ALL: [DropReason; 15] = [
        DropReason::Malformed,
        DropReason::NotUnicast,
        DropReason::UnsupportedProtocol,
        DropReason::SpoofedSource,
        DropReason::NoRoute,
        DropReason::Blackhole,
        DropReason::NotPeerDestination,
        DropReason::TtlExceeded,
        DropReason::DestinationUnavailable,
        DropReason::UnknownInterface,
        DropReason::NoEndpoint,
        DropReason::UnknownHost,
        DropReason::UnknownVni,
        DropReason::NotLocalEndpoint,
        DropReason::NotAllowedSource,
    ];

    /// The name operators see (status, metrics, explain).
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NotUnicast => "not-unicast",
            DropReason::UnsupportedProtocol => "unsupported-protocol",
            DropReason::SpoofedSource => "spoofed-source",
            DropReason::NoRoute => "no-route",
            DropReason::Blackhole => "blackhole",
            DropReason::NotPeerDestination => "not-peer-destination",
            DropReason::TtlExceeded => "ttl-exceeded",
            DropReason::DestinationUnavailable => "destination-unavailable",
            DropReason::UnknownInterface => "unknown-interface",
            DropReason::NoEndpoint => "no-endpoint",
            DropReason::UnknownHost => "unknown-host",
            DropReason::UnknownVni => "unknown-vni",
            DropReason::NotLocalEndpoint => "not-local-endpoint",
            DropReason::NotAllowedSource => "not-allowed-source",
        }
    }

    pub fn from_u32(v: u32) -> Option<DropReason> {
        DropReason::ALL.iter().copied().find(|r| *r as u32 == v)
    }
}

/// Counter slots reserved per VPC in [`DROPS`](map names) (room for new reasons).
pub const DROP_SLOTS: u32 = 16;
const _: () = assert!(DropReason::ALL.len() as u32 <= DROP_SLOTS);
/// VPC slots. Slot 0 is reserved for packets from interfaces that belong to no VPC.
pub const MAX_VPCS: u32 = 4096;
/// Peering slots. Slot 0 is never used.
pub const MAX_PEERINGS: u32 = 16384;
/// Route table slots (one `main` per VPC plus named tables).
pub const MAX_TABLES: u32 = 65536;
/// Entries per LPM trie (addresses of VPCs and subnets; routes).
pub const MAX_PREFIXES: u32 = 262_144;
/// Host slots (cluster mode). Slot 0 is this host.
pub const MAX_HOSTS: u32 = 1024;
/// Workload addresses of the fleet one host knows (cluster mode).
pub const MAX_ENDPOINTS: u32 = 262_144;
/// Table id meaning "this source has no route table" (explicit VPC without `main`).
pub const TABLE_NONE: u32 = u32::MAX;

/// Map names, shared so the daemon finds what the datapath declares.
pub mod maps {
    pub const IFACES: &str = "PEERD_IFACES";
    pub const VPCS: &str = "PEERD_VPCS";
    pub const PEERINGS: &str = "PEERD_PEERINGS";
    pub const SRC_V4: &str = "PEERD_SRC_V4";
    pub const SRC_V6: &str = "PEERD_SRC_V6";
    pub const ROUTES_V4: &str = "PEERD_ROUTES_V4";
    pub const ROUTES_V6: &str = "PEERD_ROUTES_V6";
    pub const DROPS: &str = "PEERD_DROPS";
    /// Forwarded packets and bytes per peering and direction. "Forwarded" means: the datapath
    /// decided to deliver the packet (every check of SPEC §5 passed and the destination VPC's
    /// link was present in `PEERD_VPCS`), rewrote it, and handed it to the kernel with a
    /// redirect verdict towards that link. The kernel carries out the redirect after the
    /// program returns; a packet it drops then (the link deleted in between, a full queue, an
    /// XDP frame the VPC-side end cannot receive) is counted in that link's statistics, not
    /// here. So this is the number of packets peerd sent on their way, an upper bound of those
    /// delivered; bytes are the frame's length as received (a GSO packet counts once).
    pub const FWD: &str = "PEERD_FWD";
    pub const CONFIG: &str = "PEERD_CONFIG";
    pub const FLOWS: &str = "PEERD_FLOWS";
    pub const FLOW_LOST: &str = "PEERD_FLOW_LOST";
    pub const FLOW_BUDGET: &str = "PEERD_FLOW_BUDGET";
    /// Cluster mode: (VPC slot, address) -> host slot of the workload (0: this host).
    pub const ENDPOINTS: &str = "PEERD_ENDPOINTS";
    /// Cluster mode: host slot -> underlay address.
    pub const HOSTS: &str = "PEERD_HOSTS";
    /// Cluster mode: underlay address -> host slot (the receiving side's outer source check).
    pub const UNDERLAY: &str = "PEERD_UNDERLAY";
    /// Cluster mode: VNI -> slot of the VPC present here.
    pub const VNIS: &str = "PEERD_VNIS";
    /// Cluster mode: (VPC slot, source prefix) -> peering slot: sources on other hosts that
    /// may reach a VPC present here besides its own.
    pub const ALLOWED_V4: &str = "PEERD_ALLOWED_V4";
    pub const ALLOWED_V6: &str = "PEERD_ALLOWED_V6";
    /// Cluster mode: packets and bytes through the tunnel per host slot (`host_index`).
    pub const HOST_COUNTERS: &str = "PEERD_HOST_COUNTERS";

    /// Every map peerd pins (teardown removes these and nothing else).
    pub const ALL: &[&str] = &[
        IFACES,
        VPCS,
        PEERINGS,
        SRC_V4,
        SRC_V6,
        ROUTES_V4,
        ROUTES_V6,
        DROPS,
        FWD,
        CONFIG,
        FLOWS,
        FLOW_LOST,
        FLOW_BUDGET,
        ENDPOINTS,
        HOSTS,
        UNDERLAY,
        VNIS,
        ALLOWED_V4,
        ALLOWED_V6,
        HOST_COUNTERS,
    ];
}

/// `PEERD_CONFIG` entries.
pub const CONFIG_ENTRIES: u32 = 3;
/// `PEERD_CONFIG[CONFIG_FLAGS]`: bits, the runtime switches of the datapath.
pub const CONFIG_FLAGS: u32 = 0;
/// `PEERD_CONFIG[CONFIG_FLOW_WINDOW]`: the flow log's window number, bumped by the daemon at
/// every drain; a per-VPC flow budget from an older window counts as unused.
pub const CONFIG_FLOW_WINDOW: u32 = 1;
/// `PEERD_CONFIG[CONFIG_VXLAN_IFINDEX]`: cluster mode: the VXLAN device tunnelled packets are
/// redirected to (0: none).
pub const CONFIG_VXLAN_IFINDEX: u32 = 2;
/// Bit of `PEERD_CONFIG[CONFIG_FLAGS]`: aggregate flows for the flow log.
pub const CONFIG_FLOW_LOG: u32 = 1;
/// Flows aggregated between two drains of the flow log; beyond this, packets' flows are lost
/// (and counted in `PEERD_FLOW_LOST`).
pub const MAX_FLOWS: u32 = 32_768;
/// New per-flow entries one source VPC may create in one window (1/8 of the map): past it, the
/// VPC's packets of new flows are added to its aggregate entries instead, so one VPC (e.g.
/// spraying spoofed sources) cannot fill the map and cost every other VPC its flows.
pub const FLOW_BUDGET: u32 = MAX_FLOWS / 8;

/// `PEERD_FLOWS` key: one direction of a 5-tuple, from one VPC, with one verdict; or, with
/// `FLOW_AGGREGATE` in `kind`, every packet of one source VPC, family and verdict whose own
/// flow did not fit the VPC's budget (`FLOW_BUDGET`), with `proto`, ports and addresses zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub src_vpc: u32,
    /// 4 or 6.
    pub family: u8,
    /// IP protocol (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...).
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// The verdict (`FLOW_ACCEPT` or `FLOW_REJECT_BASE + reason`, as in the value), plus
    /// `FLOW_AGGREGATE` for an aggregate entry. The verdict is part of the key so that a
    /// flow's accepted packets and its rejects (e.g. before and after its peering was
    /// deactivated) stay apart, as do an aggregate's.
    pub kind: u16,
    /// IPv4 addresses use the first 4 bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
}
/// Bit of `FlowKey::kind`: an aggregate entry (no 5-tuple).
pub const FLOW_AGGREGATE: u16 = 0x8000;

impl FlowKey {
    /// Is this an aggregate entry (no 5-tuple)?
    pub const fn is_aggregate(&self) -> bool {
        self.kind & FLOW_AGGREGATE != 0
    }

    /// The aggregate entry for `src_vpc`, `family` and `verdict`.
    pub const fn aggregate(src_vpc: u32, family: u8, verdict: u32) -> FlowKey {
        FlowKey {
            src_vpc,
            family,
            proto: 0,
            src_port: 0,
            dst_port: 0,
            kind: FLOW_AGGREGATE | verdict as u16,
            src: [0; 16],
            dst: [0; 16],
        }
    }
}

/// `PEERD_FLOW_BUDGET` value, indexed by source VPC slot: per-flow entries the VPC created in
/// window `window` (shared by all CPUs, added to atomically).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowBudget {
    /// 64 bits: the BPF target has 64-bit atomics only.
    pub used: u64,
    pub window: u32,
    pub _pad: u32,
}

/// `PEERD_FLOWS` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    pub packets: u64,
    pub bytes: u64,
    /// bpf_ktime_get_ns of the first and last packet.
    pub first_ns: u64,
    pub last_ns: u64,
    /// Destination VPC and peering slots for ACCEPT (0 for REJECT, and for an entry whose
    /// packets went over more than one peering: an aggregate, or a flow rerouted mid-window).
    pub dst_vpc: u32,
    pub peering: u32,
    /// `FLOW_ACCEPT`, or `FLOW_REJECT_BASE + DropReason`.
    pub verdict: u32,
    pub _pad: u32,
}
pub const FLOW_ACCEPT: u32 = 0;
pub const FLOW_REJECT_BASE: u32 = 1;
// Every verdict fits in `FlowKey::kind` next to the `FLOW_AGGREGATE` bit.
const _: () = assert!(FLOW_REJECT_BASE + DropReason::ALL.len() as u32 <= FLOW_AGGREGATE as u32);

/// `PEERD_IFACES` value, keyed by the ifindex of a VPC's host-side veth: the VPC behind the
/// link and, when the VPC has few source prefixes (its CIDRs and subnets), those prefixes
/// inline, so the source check is a few mask compares on data the program already holds
/// instead of a trie lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IfaceInfo {
    pub vpc: u32,
    /// Entries used in `src4` / `src6`, or `IFACE_SRC_TRIE`: too many, look them up in
    /// `PEERD_SRC_V4` / `PEERD_SRC_V6`.
    pub n_src4: u32,
    pub n_src6: u32,
    /// The VPC's flags (`VPC_REMOTE`), so the sending side knows without a lookup whether
    /// a destination in its own CIDRs may be on another host.
    pub flags: u32,
    /// The VPC's source prefixes, longest first (so the first match is the longest).
    pub src4: [SrcV4; IFACE_SRC4],
    pub src6: [SrcV6; IFACE_SRC6],
}
pub const IFACE_SRC4: usize = 4;
pub const IFACE_SRC6: usize = 2;
pub const IFACE_SRC_TRIE: u32 = u32::MAX;

/// An inline IPv4 source prefix: `addr & mask == net` selects route table `table`
/// (`TABLE_NONE`: none).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SrcV4 {
    pub net: [u8; 4],
    pub mask: [u8; 4],
    pub table: u32,
}

/// An inline IPv6 source prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SrcV6 {
    pub net: [u8; 16],
    pub mask: [u8; 16],
    pub table: u32,
}

/// `PEERD_VPCS` value, indexed by VPC slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VpcInfo {
    /// Host-side veth; packets for this VPC are redirected to its peer.
    pub host_ifindex: u32,
    /// `VPC_PRESENT` when the slot is in use.
    pub flags: u32,
    /// MAC of the VPC-side veth (destination of delivered frames).
    pub ns_mac: [u8; 6],
    /// MAC of the gateway as the VPC sees it (the host-side veth).
    pub gw_mac: [u8; 6],
    /// Cluster mode: the VPC's fleet-wide id (the VXLAN VNI), 0 on a single host.
    pub vni: u32,
}
/// The VPC has a link here (`host_ifindex`, MACs).
pub const VPC_PRESENT: u32 = 1;
/// Cluster mode: the VPC is present on other hosts too; its addresses are looked up in
/// `PEERD_ENDPOINTS`.
pub const VPC_REMOTE: u32 = 2;

/// `PEERD_ENDPOINTS` key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    pub vpc: u32,
    /// 4 or 6.
    pub family: u32,
    /// IPv4 addresses use the first 4 bytes.
    pub addr: [u8; 16],
}

/// An underlay address: `PEERD_HOSTS` value and `PEERD_UNDERLAY` key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash, PartialOrd, Ord)]
pub struct Underlay {
    /// 4 or 6 (0: no host in this slot).
    pub family: u32,
    /// IPv4 addresses use the first 4 bytes.
    pub addr: [u8; 16],
}

/// `PEERD_PEERINGS` value, indexed by peering slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PeeringInfo {
    /// `PEERING_ACTIVE` or 0: only active peerings carry traffic.
    pub state: u32,
    /// VPC slots of the two ends; forwarded bytes from `vpc_a` count as direction 0.
    pub vpc_a: u32,
    pub vpc_b: u32,
    pub _pad: u32,
}
pub const PEERING_ACTIVE: u32 = 1;

/// `PEERD_ROUTES_*` value: where a route sends traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RouteTarget {
    pub peering: u32,
    /// VPC slot of the peering's other end, seen from the table's VPC.
    pub dst_vpc: u32,
    /// `ROUTE_INSIDE_DST` when the route's prefix lies inside one of `dst_vpc`'s CIDRs: then
    /// every destination it matches is in the peer, and the datapath skips that lookup.
    pub flags: u32,
    pub _pad: u32,
}
pub const ROUTE_INSIDE_DST: u32 = 1;

/// `PEERD_SRC_*` value: the route table that applies to sources in this prefix
/// (a VPC CIDR or a subnet); `TABLE_NONE` when none does.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SrcInfo {
    pub table: u32,
}

/// Data part of an IPv4 LPM key: an id (VPC slot or table id, big-endian) then the address.
/// The trie's prefix length is `32 + prefix`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct KeyV4 {
    pub id: [u8; 4],
    pub addr: [u8; 4],
}

/// Data part of an IPv6 LPM key: id (big-endian), then the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct KeyV6 {
    pub id: [u8; 4],
    pub addr: [u8; 16],
}

/// Packets and bytes (per CPU in the maps; summed by the daemon).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Index into `PEERD_DROPS`.
#[inline(always)]
pub const fn drop_index(vpc: u32, reason: DropReason) -> u32 {
    vpc * DROP_SLOTS + reason as u32
}

/// Index into `PEERD_HOST_COUNTERS`: direction 0 is sent to the host, 1 received from it.
#[inline(always)]
pub const fn host_index(host: u32, dir: u32) -> u32 {
    host * 2 + dir
}
pub const HOST_TX: u32 = 0;
pub const HOST_RX: u32 = 1;

/// Index into `PEERD_FWD`: direction 0 is from the peering's `vpc_a`.
#[inline(always)]
pub const fn fwd_index(peering: u32, dir: u32) -> u32 {
    peering * 2 + dir
}

macro_rules! assert_layout {
    ($t:ty, $size:expr, $align:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $size);
        const _: () = assert!(core::mem::align_of::<$t>() == $align);
    };
}
assert_layout!(IfaceInfo, 136, 4);
assert_layout!(SrcV4, 12, 4);
assert_layout!(SrcV6, 36, 4);
assert_layout!(VpcInfo, 24, 4);
assert_layout!(EndpointKey, 24, 4);
assert_layout!(Underlay, 20, 4);
assert_layout!(PeeringInfo, 16, 4);
assert_layout!(RouteTarget, 16, 4);
assert_layout!(SrcInfo, 4, 4);
assert_layout!(KeyV4, 8, 1);
assert_layout!(KeyV6, 20, 1);
assert_layout!(Counter, 16, 8);
assert_layout!(FlowKey, 44, 4);
assert_layout!(FlowValue, 48, 8);
assert_layout!(FlowBudget, 16, 8);

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, and have no padding (asserted above).
    unsafe impl aya::Pod for IfaceInfo {}
    unsafe impl aya::Pod for VpcInfo {}
    unsafe impl aya::Pod for PeeringInfo {}
    unsafe impl aya::Pod for RouteTarget {}
    unsafe impl aya::Pod for SrcInfo {}
    unsafe impl aya::Pod for KeyV4 {}
    unsafe impl aya::Pod for KeyV6 {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for FlowBudget {}
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for Underlay {}
}
