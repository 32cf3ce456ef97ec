//! Reference programs for `cargo xtask bench` (never attached by the daemon): an empty
//! program per hook (the cost baseline) and an unconditional redirect per hook (the ceiling of
//! what that hook can forward: MACs set, then redirect, no decision).
use aya_ebpf::{
    bindings::{
        xdp_action::{XDP_DROP, XDP_PASS},
        TC_ACT_OK, TC_ACT_SHOT,
    },
    helpers::{bpf_redirect, bpf_redirect_peer},
    macros::{classifier, map, xdp},
    maps::HashMap,
    programs::{TcContext, XdpContext},
};
use peerd_common::VpcInfo;

use crate::parse::{ptr_at, EthHdr};

/// Ingress ifindex -> where the ceiling programs send everything.
#[map(name = "PEERD_BENCH")]
static BENCH: HashMap<u32, VpcInfo> = HashMap::with_max_entries(64, 0);

#[classifier]
pub fn bench_empty_tc(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[xdp]
pub fn bench_empty_xdp(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Sets the MACs for the target; None when there is no target or no Ethernet header.
#[inline(always)]
fn target(data: usize, data_end: usize, ifindex: u32) -> Option<u32> {
    // SAFETY: map lookup result is valid for the program's run.
    let t = unsafe { BENCH.get(&ifindex) }?;
    let eth = ptr_at::<EthHdr>(data, data_end, 0)?;
    // SAFETY: bounds-checked by ptr_at.
    unsafe {
        for i in 0..6 {
            (*eth).dst[i] = t.ns_mac[i];
            (*eth).src[i] = t.gw_mac[i];
        }
    }
    Some(t.host_ifindex)
}

#[classifier]
pub fn bench_redirect_tc(ctx: TcContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    match target(ctx.data(), ctx.data_end(), ifindex) {
        // SAFETY: plain helper call.
        Some(out) => unsafe { bpf_redirect_peer(out, 0) as i32 },
        None => TC_ACT_SHOT,
    }
}

#[xdp]
pub fn bench_redirect_xdp(ctx: XdpContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    match target(ctx.data(), ctx.data_end(), ifindex) {
        // SAFETY: plain helper call.
        Some(out) => unsafe { bpf_redirect(out, 0) as u32 },
        None => XDP_DROP,
    }
}
