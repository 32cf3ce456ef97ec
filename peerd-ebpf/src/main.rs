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
mod tunnel;

use aya_ebpf::{
    bindings::{
        bpf_tunnel_key,
        xdp_action::{XDP_DROP, XDP_TX},
        BPF_F_TUNINFO_IPV6, TC_ACT_SHOT,
    },
    helpers::{
        bpf_redirect, bpf_redirect_peer, bpf_skb_change_type, bpf_skb_get_tunnel_key,
        bpf_skb_set_tunnel_key,
    },
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use decide::Action;
use peerd_common::{DropReason, Underlay, HOST_RX, HOST_TX};

/// `skb->pkt_type` of a packet for this host.
const PACKET_HOST: u32 = 0;
/// The outer header's TTL / hop limit of tunnelled packets.
const TUNNEL_TTL: u8 = 64;

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
        Action::Tunnel => tunnel_tx(ctx, &v, len),
        // Answer to the gateway's neighbour resolution: back out of the same veth.
        // SAFETY: plain helper call.
        Action::Reply => unsafe { bpf_redirect(ifindex, 0) as i32 },
        Action::Drop => TC_ACT_SHOT as i32,
    }
}

/// Cluster mode: sets the tunnel key (the destination host's underlay address, the
/// destination VPC's VNI) and redirects to the VXLAN device, which encapsulates.
#[inline(always)]
fn tunnel_tx(ctx: &TcContext, v: &decide::Verdict, len: u32) -> i32 {
    let Some(to) = maps::HOSTS.get(v.host) else {
        maps::count_drop(0, DropReason::NoEndpoint, len);
        return TC_ACT_SHOT as i32;
    };
    // SAFETY: bpf_tunnel_key is plain data; all zeroes is a valid value.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = v.vni;
    key.tunnel_ttl = TUNNEL_TTL;
    let a = &to.addr;
    let flags = if to.family == 6 {
        key.__bindgen_anon_1.remote_ipv6 = [
            u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
            u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
            u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
            u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
        ];
        BPF_F_TUNINFO_IPV6 as u64
    } else {
        // Host byte order, as the helper wants it.
        key.__bindgen_anon_1.remote_ipv4 = u32::from_be_bytes([a[0], a[1], a[2], a[3]]);
        0
    };
    // SAFETY: the key is valid for its size; the context is the program's.
    let rc = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb,
            &mut key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            flags,
        )
    };
    if rc != 0 {
        maps::count_drop(0, DropReason::DestinationUnavailable, len);
        return TC_ACT_SHOT as i32;
    }
    maps::count_fwd(v.fwd_slot, len);
    maps::count_host(v.host, HOST_TX, len);
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(v.ifindex, 0) as i32 }
}

/// TC ingress on the VXLAN device (cluster mode): frames from other hosts, decapsulated by
/// the kernel, checked again and delivered into the destination VPC's link.
#[classifier]
pub fn peerd_vxlan_rx(ctx: TcContext) -> i32 {
    let len = ctx.len();
    // SAFETY: the context pointer is valid for the duration of the program.
    let vlan_present = unsafe { (*ctx.skb.skb).vlan_present != 0 };
    // SAFETY: bpf_tunnel_key is plain data; all zeroes is a valid value.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    let size = core::mem::size_of::<bpf_tunnel_key>() as u32;
    let mut outer = Underlay::default();
    // SAFETY: the key is valid for its size; the context is the program's. The helper fails
    // (-EPROTO) when the flag does not match the tunnel's family: IPv4 first, then IPv6.
    unsafe {
        if bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, size, 0) == 0 {
            outer.family = 4;
            let a = key.__bindgen_anon_1.remote_ipv4.to_be_bytes();
            for i in 0..4 {
                outer.addr[i] = a[i];
            }
        } else if bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, size, BPF_F_TUNINFO_IPV6 as u64)
            == 0
        {
            outer.family = 6;
            let w = key.__bindgen_anon_1.remote_ipv6;
            for i in 0..4 {
                let b = w[i].to_ne_bytes();
                for j in 0..4 {
                    outer.addr[i * 4 + j] = b[j];
                }
            }
        }
    }
    let v = tunnel::receive(
        ctx.data(),
        ctx.data_end(),
        &outer,
        key.tunnel_id,
        len,
        vlan_present,
    );
    if v.action != Action::Deliver {
        return TC_ACT_SHOT as i32;
    }
    maps::count_host(v.host, HOST_RX, len);
    // SAFETY: plain helper calls. The kernel marked the frame for another host (its MAC is
    // not the VXLAN device's): it is for the VPC, whose stack would otherwise drop it.
    unsafe {
        bpf_skb_change_type(ctx.skb.skb, PACKET_HOST);
        bpf_redirect_peer(v.ifindex, 0) as i32
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
        // Cluster mode refuses XDP: never reached (no VPC is remote without it).
        Action::Tunnel => {
            maps::count_drop(0, peerd_common::DropReason::DestinationUnavailable, len);
            XDP_DROP
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
