//! The benchmark's eBPF programs (`cargo xtask bench`; never part of peerd's object):
//! - a generator run with BPF_PROG_TEST_RUN in live-frames mode, and a counting sink;
//! - the hooks' ceilings: an unconditional redirect per hook (MACs set, no decision), and an
//!   empty program per hook;
//! - the cross-host ceiling: the tunnel key and a redirect to a VXLAN device (sending host);
//!   the receiving host's VXLAN device runs `bench_vxlan_rx_tc` (the TC redirect ceiling, plus
//!   the packet type peerd's receive program sets too);
//! - cost wrappers that restore the headers from a template, then tail-call either the empty
//!   program (the baseline) or peerd's own entry point, which userspace places in the program
//!   arrays from peerd's loaded object.
#![no_std]
#![no_main]

#[expect(
    dead_code,
    reason = "the map names are for userspace, which includes the same file"
)]
mod shared;

use aya_ebpf::{
    bindings::{
        bpf_tunnel_key,
        xdp_action::{XDP_DROP, XDP_PASS},
        TC_ACT_OK, TC_ACT_SHOT,
    },
    helpers::{bpf_redirect, bpf_redirect_peer, bpf_skb_change_type, bpf_skb_set_tunnel_key},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, PerCpuArray, ProgramArray},
    programs::{TcContext, XdpContext},
};
use shared::{BenchGen, BenchTarget, BenchTunnel, NEXT_EMPTY, NEXT_PEERD, NOT_RUN};

/// A pointer to a `T` at `offset`, if the packet holds all of it.
#[inline(always)]
fn ptr_at<T>(data: usize, data_end: usize, offset: usize) -> Option<*mut T> {
    let start = data + offset;
    if start + core::mem::size_of::<T>() > data_end {
        return None;
    }
    Some(start as *mut T)
}

#[map(name = "BENCH_SINK")]
static SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The sink: on the destination VPC's link, counts and drops (so the count is what the path
/// delivered, without the cost of a socket).
#[classifier]
pub fn bench_sink_tc(_ctx: TcContext) -> i32 {
    if let Some(c) = SINK.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
    TC_ACT_SHOT
}

#[map(name = "BENCH_GEN")]
static GEN: Array<BenchGen> = Array::with_max_entries(1, 0);

/// The generator, run with BPF_PROG_TEST_RUN in live-frames mode: frames are recycled between
/// repetitions, and every hop after it rewrites headers (TTL, MACs), so the headers are
/// restored from the template each time.
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
// wrappers restore the headers first and then tail-call the program under test; the baseline
// restores and tail-calls the empty program, so the difference is the program's own cost.

#[map(name = "BENCH_TC_NEXT")]
static TC_NEXT: ProgramArray = ProgramArray::with_max_entries(2, 0);

#[map(name = "BENCH_XDP_NEXT")]
static XDP_NEXT: ProgramArray = ProgramArray::with_max_entries(2, 0);

#[inline(always)]
fn restore_then_tc(ctx: &TcContext, slot: u32) -> i32 {
    if restore(ctx.data(), ctx.data_end()).is_some() {
        // SAFETY: does not return on success; on failure the wrapper reports NOT_RUN.
        unsafe { TC_NEXT.tail_call(ctx, slot) };
    }
    NOT_RUN as i32
}

#[inline(always)]
fn restore_then_xdp(ctx: &XdpContext, slot: u32) -> u32 {
    if restore(ctx.data(), ctx.data_end()).is_some() {
        // SAFETY: as in restore_then_tc.
        unsafe { XDP_NEXT.tail_call(ctx, slot) };
    }
    NOT_RUN
}

#[classifier]
pub fn bench_restore_tc(ctx: TcContext) -> i32 {
    restore_then_tc(&ctx, NEXT_EMPTY)
}

#[classifier]
pub fn bench_peerd_tc(ctx: TcContext) -> i32 {
    restore_then_tc(&ctx, NEXT_PEERD)
}

#[xdp]
pub fn bench_restore_xdp(ctx: XdpContext) -> u32 {
    restore_then_xdp(&ctx, NEXT_EMPTY)
}

#[xdp]
pub fn bench_peerd_xdp(ctx: XdpContext) -> u32 {
    restore_then_xdp(&ctx, NEXT_PEERD)
}

#[classifier]
pub fn bench_empty_tc(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[xdp]
pub fn bench_empty_xdp(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Ingress ifindex -> where the ceiling programs send everything.
#[map(name = "BENCH_TARGETS")]
static TARGETS: HashMap<u32, BenchTarget> = HashMap::with_max_entries(64, 0);

/// Sets the MACs for the target; None when there is no target or no Ethernet header.
#[inline(always)]
fn target(data: usize, data_end: usize, ifindex: u32) -> Option<u32> {
    // SAFETY: map lookup result is valid for the program's run.
    let t = unsafe { TARGETS.get(&ifindex) }?;
    // Destination then source MAC.
    let eth = ptr_at::<[u8; 12]>(data, data_end, 0)?;
    // SAFETY: bounds-checked by ptr_at.
    unsafe {
        for i in 0..6 {
            (*eth)[i] = t.dst_mac[i];
            (*eth)[6 + i] = t.src_mac[i];
        }
    }
    Some(t.ifindex)
}

#[classifier]
pub fn bench_redirect_tc(ctx: TcContext) -> i32 {
    redirect_peer_tc(&ctx, false)
}

/// The TC ceiling: MACs set for the ingress link's target, `bpf_redirect_peer` there; with
/// `host`, the frame is also marked for this host first.
#[inline(always)]
fn redirect_peer_tc(ctx: &TcContext, host: bool) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    match target(ctx.data(), ctx.data_end(), ifindex) {
        // SAFETY: plain helper calls on this program's skb.
        Some(out) => unsafe {
            if host {
                bpf_skb_change_type(ctx.skb.skb, PACKET_HOST);
            }
            bpf_redirect_peer(out, 0) as i32
        },
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

/// Ingress ifindex -> the tunnel the cross-host ceiling sends everything into.
#[map(name = "BENCH_TUNNELS")]
static TUNNELS: HashMap<u32, BenchTunnel> = HashMap::with_max_entries(64, 0);

/// The cross-host ceiling on the sending host: the tunnel key (fixed VNI, remote host) and a
/// redirect to the `external` VXLAN device, nothing else (no decision, no header rewrite).
#[classifier]
pub fn bench_tunnel_tc(ctx: TcContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    // SAFETY: map lookup result is valid for the program's run.
    let Some(t) = (unsafe { TUNNELS.get(&ifindex) }) else {
        return TC_ACT_SHOT;
    };
    // SAFETY: all-zero is a valid bpf_tunnel_key (integers and unions of integers).
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = t.vni;
    key.__bindgen_anon_1.remote_ipv4 = t.remote_ipv4;
    key.tunnel_ttl = 64;
    // SAFETY: plain helper calls on this program's skb and a key on the stack.
    unsafe {
        if bpf_skb_set_tunnel_key(
            ctx.skb.skb,
            &mut key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            0,
        ) != 0
        {
            return TC_ACT_SHOT;
        }
        bpf_redirect(t.ifindex, 0) as i32
    }
}

/// `PACKET_HOST` (linux/if_packet.h).
const PACKET_HOST: u32 = 0;

/// The cross-host ceiling on the receiving host, on the VXLAN device's ingress: the TC
/// redirect ceiling (MACs set, `bpf_redirect_peer`), and the frame marked for this host as
/// peerd's receive program does (the kernel marked it for another host: its destination MAC
/// is the sending side's gateway, so the VPC's stack would drop it).
#[classifier]
pub fn bench_vxlan_rx_tc(ctx: TcContext) -> i32 {
    redirect_peer_tc(&ctx, true)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
