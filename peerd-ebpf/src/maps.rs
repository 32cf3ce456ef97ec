//! The datapath's maps (pinned by name under the daemon's pin dir) and counter helpers.
use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray, PerCpuHashMap},
};
use peerd_common::{
    drop_index, host_index, Counter, DropReason, EndpointKey, FlowBudget, FlowKey, FlowValue,
    IfaceInfo, KeyV4, KeyV6, PeeringInfo, RouteTarget, SrcInfo, Underlay, VpcInfo, CONFIG_ENTRIES,
    CONFIG_FLAGS, CONFIG_FLOW_WINDOW, CONFIG_VXLAN_IFINDEX, DROP_SLOTS, MAX_ENDPOINTS, MAX_FLOWS,
    MAX_HOSTS, MAX_PEERINGS, MAX_PREFIXES, MAX_VPCS,
};

#[map(name = "PEERD_IFACES")]
pub static IFACES: HashMap<u32, IfaceInfo> = HashMap::pinned(MAX_VPCS, 0);

#[map(name = "PEERD_VPCS")]
pub static VPCS: Array<VpcInfo> = Array::pinned(MAX_VPCS, 0);

#[map(name = "PEERD_PEERINGS")]
pub static PEERINGS: Array<PeeringInfo> = Array::pinned(MAX_PEERINGS, 0);

#[map(name = "PEERD_SRC_V4")]
pub static SRC_V4: LpmTrie<KeyV4, SrcInfo> = LpmTrie::pinned(MAX_PREFIXES, 0);

#[map(name = "PEERD_SRC_V6")]
pub static SRC_V6: LpmTrie<KeyV6, SrcInfo> = LpmTrie::pinned(MAX_PREFIXES, 0);

#[map(name = "PEERD_ROUTES_V4")]
pub static ROUTES_V4: LpmTrie<KeyV4, RouteTarget> = LpmTrie::pinned(MAX_PREFIXES, 0);

#[map(name = "PEERD_ROUTES_V6")]
pub static ROUTES_V6: LpmTrie<KeyV6, RouteTarget> = LpmTrie::pinned(MAX_PREFIXES, 0);

#[map(name = "PEERD_DROPS")]
pub static DROPS: PerCpuArray<Counter> = PerCpuArray::pinned(MAX_VPCS * DROP_SLOTS, 0);

/// Packets handed to the kernel for delivery, per peering and direction (see
/// `peerd_common::maps::FWD` for exactly what that promises).
#[map(name = "PEERD_FWD")]
pub static FWD: PerCpuArray<Counter> = PerCpuArray::pinned(MAX_PEERINGS * 2, 0);

#[map(name = "PEERD_CONFIG")]
pub static CONFIG: Array<u32> = Array::pinned(CONFIG_ENTRIES, 0);

#[map(name = "PEERD_FLOWS")]
pub static FLOWS: PerCpuHashMap<FlowKey, FlowValue> = PerCpuHashMap::pinned(MAX_FLOWS, 0);

#[map(name = "PEERD_FLOW_LOST")]
pub static FLOW_LOST: PerCpuArray<Counter> = PerCpuArray::pinned(1, 0);

/// Per-flow entries each source VPC created in the current flow-log window.
#[map(name = "PEERD_FLOW_BUDGET")]
pub static FLOW_BUDGET: Array<FlowBudget> = Array::pinned(MAX_VPCS, 0);

/// Cluster mode: where each workload address of a VPC present on other hosts is.
#[map(name = "PEERD_ENDPOINTS")]
pub static ENDPOINTS: HashMap<EndpointKey, u32> = HashMap::pinned(MAX_ENDPOINTS, 0);

#[map(name = "PEERD_HOSTS")]
pub static HOSTS: Array<Underlay> = Array::pinned(MAX_HOSTS, 0);

#[map(name = "PEERD_UNDERLAY")]
pub static UNDERLAY: HashMap<Underlay, u32> = HashMap::pinned(MAX_HOSTS, 0);

#[map(name = "PEERD_VNIS")]
pub static VNIS: HashMap<u32, u32> = HashMap::pinned(MAX_VPCS, 0);

#[map(name = "PEERD_ALLOWED_V4")]
pub static ALLOWED_V4: LpmTrie<KeyV4, u32> = LpmTrie::pinned(MAX_PREFIXES, 0);

#[map(name = "PEERD_ALLOWED_V6")]
pub static ALLOWED_V6: LpmTrie<KeyV6, u32> = LpmTrie::pinned(MAX_PREFIXES, 0);

#[map(name = "PEERD_HOST_COUNTERS")]
pub static HOST_COUNTERS: PerCpuArray<Counter> = PerCpuArray::pinned(MAX_HOSTS * 2, 0);

#[inline(always)]
pub fn config() -> u32 {
    CONFIG.get(CONFIG_FLAGS).copied().unwrap_or(0)
}

/// The flow log's current window number.
#[inline(always)]
pub fn flow_window() -> u32 {
    CONFIG.get(CONFIG_FLOW_WINDOW).copied().unwrap_or(0)
}

/// Cluster mode: the VXLAN device (0: none).
#[inline(always)]
pub fn vxlan_ifindex() -> u32 {
    CONFIG.get(CONFIG_VXLAN_IFINDEX).copied().unwrap_or(0)
}

/// Packets sent to (`HOST_TX`) or received from (`HOST_RX`) a host through the tunnel.
#[inline(always)]
pub fn count_host(host: u32, dir: u32, len: u32) {
    bump(&HOST_COUNTERS, host_index(host, dir), len);
}

/// The host slot of workload `addr` (IPv4 in the first 4 bytes) of VPC `vpc`.
#[inline(always)]
pub fn endpoint(vpc: u32, family: u32, addr: [u8; 16]) -> Option<u32> {
    // SAFETY: map lookup result is valid for the program's run.
    unsafe { ENDPOINTS.get(&EndpointKey { vpc, family, addr }) }.copied()
}

#[inline(always)]
pub fn allowed_v4(vpc: u32, addr: [u8; 4]) -> Option<u32> {
    ALLOWED_V4
        .get(Key::new(
            64,
            KeyV4 {
                id: vpc.to_be_bytes(),
                addr,
            },
        ))
        .copied()
}

#[inline(always)]
pub fn allowed_v6(vpc: u32, addr: [u8; 16]) -> Option<u32> {
    ALLOWED_V6
        .get(Key::new(
            160,
            KeyV6 {
                id: vpc.to_be_bytes(),
                addr,
            },
        ))
        .copied()
}

#[inline(always)]
pub fn count_flow_lost(len: u32) {
    bump(&FLOW_LOST, 0, len);
}

#[inline(always)]
fn bump(map: &PerCpuArray<Counter>, index: u32, len: u32) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len as u64;
        }
    }
}

/// Every drop goes through here: counted per source VPC and reason.
#[inline(always)]
pub fn count_drop(vpc: u32, reason: DropReason, len: u32) {
    bump(&DROPS, drop_index(vpc, reason), len);
}

/// A forward, counted when the packet is handed to the kernel for delivery.
#[inline(always)]
pub fn count_fwd(slot: u32, len: u32) {
    bump(&FWD, slot, len);
}

#[inline(always)]
pub fn src_v4(id: u32, addr: [u8; 4]) -> Option<&'static SrcInfo> {
    SRC_V4.get(Key::new(
        64,
        KeyV4 {
            id: id.to_be_bytes(),
            addr,
        },
    ))
}

#[inline(always)]
pub fn src_v6(id: u32, addr: [u8; 16]) -> Option<&'static SrcInfo> {
    SRC_V6.get(Key::new(
        160,
        KeyV6 {
            id: id.to_be_bytes(),
            addr,
        },
    ))
}

#[inline(always)]
pub fn route_v4(table: u32, addr: [u8; 4]) -> Option<&'static RouteTarget> {
    ROUTES_V4.get(Key::new(
        64,
        KeyV4 {
            id: table.to_be_bytes(),
            addr,
        },
    ))
}

#[inline(always)]
pub fn route_v6(table: u32, addr: [u8; 16]) -> Option<&'static RouteTarget> {
    ROUTES_V6.get(Key::new(
        160,
        KeyV6 {
            id: table.to_be_bytes(),
            addr,
        },
    ))
}
