//! peerd's datapath: one entry point per attach point; the decision lives in `decide`.
#![no_std]
#![no_main]

mod arp;
mod decide;
mod flow;
mod maps;
mod parse;

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::bpf_redirect_peer,
    macros::classifier,
    programs::TcContext,
};
use decide::Action;

/// TC ingress on a VPC's host-side veth: every packet a VPC sends comes through here.
#[classifier]
pub fn peerd_tc(ctx: TcContext) -> i32 {
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
        Action::Reply => unsafe { aya_ebpf::helpers::bpf_redirect(ifindex, 0) as i32 },
        Action::Drop => TC_ACT_SHOT as i32,
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
