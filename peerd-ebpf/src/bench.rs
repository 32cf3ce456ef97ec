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
    maps::{Array, HashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use peerd_common::{BenchGen, VpcInfo};

use crate::parse::{ptr_at, EthHdr};

#[map(name = "PEERD_BENCH_SINK")]
static SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The benchmark's sink: on the destination VPC's link, counts and drops (so the count is what
/// the path delivered, without the cost of a socket).
#[classifier]
pub fn bench_sink_tc(_ctx: TcContext) -> i32 {
    if let Some(c) = SINK.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
    TC_ACT_SHOT
}

#[map(name = "PEERD_BENCH_GEN")]
static GEN: Array<BenchGen> = Array::with_max_entries(1, 0);

/// The benchmark's generator, run with BPF_PROG_TEST_RUN in live-frames mode: frames are
/// recycled between repetitions, and every hop after it rewrites headers (TTL, MACs), so the
/// headers are restored from the template each time.
#[xdp]
pub fn bench_gen_xdp(ctx: XdpContext) -> u32 {
    let Some(cfg) = restore(ctx.data(), ctx.data_end()) else {
        return XDP_DROP;
    };
    if cfg.action == 1 {
        // SAFETY: plain helper call.
        unsafe { bpf_redirect(cfg.ifindex, 0) as u32 }
    } else {
        XDP_PASS
    }
}

/// Rewrites the frame's first 34 bytes from the template; None without a template or frame.
#[inline(always)]
fn restore(data: usize, data_end: usize) -> Option<&'static BenchGen> {
    let cfg = GEN.get(0)?;
    let hdr = ptr_at::<[u8; 34]>(data, data_end, 0)?;
    // SAFETY: bounds-checked by ptr_at. Byte by byte: no memcpy in BPF.
    unsafe {
        for i in 0..34 {
            (*hdr)[i] = cfg.template[i];
        }
    }
    Some(cfg)
}

// Program cost. BPF_PROG_TEST_RUN runs a program `repeat` times on the same buffer, and the
// datapath rewrites it (TTL, MACs): after 63 runs every packet would be a TTL drop. So the cost
// programs restore the headers first, and the baseline is a program that only restores.

#[classifier]
pub fn bench_restore_tc(ctx: TcContext) -> i32 {
    let _ = restore(ctx.data(), ctx.data_end());
    TC_ACT_OK
}

#[classifier]
pub fn bench_peerd_tc(ctx: TcContext) -> i32 {
    if restore(ctx.data(), ctx.data_end()).is_none() {
        return TC_ACT_SHOT;
    }
    crate::tc_run(&ctx)
}

#[xdp]
pub fn bench_restore_xdp(ctx: XdpContext) -> u32 {
    let _ = restore(ctx.data(), ctx.data_end());
    XDP_PASS
}

#[xdp]
pub fn bench_peerd_xdp(ctx: XdpContext) -> u32 {
    if restore(ctx.data(), ctx.data_end()).is_none() {
        return XDP_DROP;
    }
    crate::xdp_run(&ctx)
}

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
