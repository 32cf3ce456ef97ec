//! The gateway answers ARP for 169.254.1.1 itself, so nothing reaches the host stack.
use crate::parse::{ptr_at, ArpHdr, EthHdr, ETH_LEN};

pub const GATEWAY_V4: [u8; 4] = [169, 254, 1, 1];

pub enum Arp {
    /// Rewritten in place into a reply; send it back out.
    Replied,
    /// Not a request for the gateway.
    NotForUs,
    Malformed,
}

/// Turns an ARP request for the gateway into the reply, with `gw_mac` as the answer.
#[inline(always)]
pub fn answer(data: usize, data_end: usize, gw_mac: &[u8; 6]) -> Arp {
    let Some(eth) = ptr_at::<EthHdr>(data, data_end, 0) else {
        return Arp::Malformed;
    };
    let Some(arp) = ptr_at::<ArpHdr>(data, data_end, ETH_LEN) else {
        return Arp::Malformed;
    };
    // SAFETY: both pointers were bounds-checked above.
    unsafe {
        let a = &mut *arp;
        if a.htype != [0, 1] || a.ptype != [0x08, 0x00] || a.hlen != 6 || a.plen != 4 {
            return Arp::Malformed;
        }
        if a.op != [0, 1] || a.tpa != GATEWAY_V4 {
            return Arp::NotForUs;
        }
        let e = &mut *eth;
        let requester_mac = a.sha;
        let requester_ip = a.spa;
        a.op = [0, 2];
        for i in 0..6 {
            a.tha[i] = requester_mac[i];
            a.sha[i] = gw_mac[i];
            e.dst[i] = requester_mac[i];
            e.src[i] = gw_mac[i];
        }
        a.tpa = requester_ip;
        a.spa = GATEWAY_V4;
    }
    Arp::Replied
}
