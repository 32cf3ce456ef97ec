//! peerd's datapath: one entry point per attach point; the decision lives in `decide`.
#![no_std]
#![no_main]
// Inline assembly for the BPF atomic add (`flow::atomic_add`), as aya-ebpf itself does: the BPF
// target offers no atomic read-modify-write in `core`.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

mod arp;
mod decide;
mod flow;
mod maps;
mod parse;

use aya_ebpf::{
    bindings::{
        xdp_action::{XDP_DROP, XDP_TX},
        TC_ACT_SHOT,
    },
    helpers::{bpf_redirect, bpf_redirect_peer},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use decide::Action;

/// TC ingress on a VPC's host-side veth: every packet a VPC sends comes through here.
#[classifier]
pub fn peerd_tc(ctx: TcContext) -> i32 {
    tc_run(&ctx)
}

#[inline(always)]
fn tc_run(ctx: &TcContext) -> i32 {
    // SAFETY: the context pointer is valid for the duration of the program.
    let (ifindex, vlan_present) = unsafe {
        let skb = &*ctx.skb.skb;
        (skb.ingress_ifindex, skb.vlan_present != 0)
    };
    let len = ctx.len();
    let v = decide::process(ctx.data(), ctx.data_end(), ifindex, len, vlan_present);
    match v.action {
        Action::Deliver => {
            // Counted as forwarded here, where the packet is handed to the kernel (see
            // `peerd_common::maps::FWD`). With flags 0, bpf_redirect_peer cannot fail: it
            // returns TC_ACT_REDIRECT, and the kernel redirects after the program returns.
            maps::count_fwd(v.fwd_slot, len);
            // SAFETY: plain helper call.
            unsafe { bpf_redirect_peer(v.ifindex, 0) as i32 }
        }
        // Answer to the gateway's neighbour resolution: back out of the same veth.
        // SAFETY: plain helper call.
        Action::Reply => unsafe { bpf_redirect(ifindex, 0) as i32 },
        Action::Drop => TC_ACT_SHOT as i32,
    }
}

/// XDP on a VPC's host-side veth (`datapath = "xdp"`): the same decision; delivery is an XDP
/// redirect into the destination VPC's veth, whose VPC-side end must run NAPI (peerd turns GRO
/// on there) to receive it. XDP sees VLAN tags only in the data (dropped as an unsupported
/// ethertype), so peerd also turns VLAN tag insertion offload off on the VPC-side end: a tag
/// left in skb metadata would be invisible here and lost by the redirect.
#[xdp]
pub fn peerd_xdp(ctx: XdpContext) -> u32 {
    xdp_run(&ctx)
}

#[inline(always)]
fn xdp_run(ctx: &XdpContext) -> u32 {
    // SAFETY: the context pointer is valid for the duration of the program.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let len = (data_end - data) as u32;
    let v = decide::process(data, data_end, ifindex, len, false);
    match v.action {
        Action::Deliver => {
            // As for TC: with flags 0, bpf_redirect cannot fail (it returns XDP_REDIRECT).
            maps::count_fwd(v.fwd_slot, len);
            // SAFETY: plain helper call.
            unsafe { bpf_redirect(v.ifindex, 0) as u32 }
        }
        Action::Reply => XDP_TX,
        Action::Drop => XDP_DROP,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
