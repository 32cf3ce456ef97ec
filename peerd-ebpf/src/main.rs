//! peerd's datapath: one entry point per attach point; the decision lives in `decide`.
#![no_std]
#![no_main]

mod arp;
mod decide;
mod flow;
mod maps;
mod parse;

use aya_ebpf::{
    bindings::{
        xdp_action::{XDP_DROP, XDP_REDIRECT, XDP_TX},
        TC_ACT_REDIRECT, TC_ACT_SHOT,
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
    let ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    let len = ctx.len();
    let v = decide::process(ctx.data(), ctx.data_end(), ifindex, len);
    match v.action {
        Action::Deliver => {
            // SAFETY: plain helper call; flags must be 0.
            let rc = unsafe { bpf_redirect_peer(v.ifindex, 0) };
            if rc == TC_ACT_REDIRECT as i64 {
                maps::count_fwd(v.fwd_slot, len);
                TC_ACT_REDIRECT as i32
            } else {
                decide::drop_redirect_failed(ifindex, len);
                TC_ACT_SHOT as i32
            }
        }
        // Answer to the gateway's neighbour resolution: back out of the same veth.
        // SAFETY: plain helper call.
        Action::Reply => unsafe { bpf_redirect(ifindex, 0) as i32 },
        Action::Drop => TC_ACT_SHOT as i32,
    }
}

/// XDP on a VPC's host-side veth (`datapath = "xdp"`): the same decision; delivery is an XDP
/// redirect into the destination VPC's veth, whose VPC-side end must run NAPI (peerd turns GRO
/// on there) to receive it.
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
    let v = decide::process(data, data_end, ifindex, len);
    match v.action {
        Action::Deliver => {
            // SAFETY: plain helper call.
            let rc = unsafe { bpf_redirect(v.ifindex, 0) };
            if rc == XDP_REDIRECT as i64 {
                maps::count_fwd(v.fwd_slot, len);
                XDP_REDIRECT
            } else {
                decide::drop_redirect_failed(ifindex, len);
                XDP_DROP
            }
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
