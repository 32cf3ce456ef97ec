//! Frame builders for verdict tests: Ethernet + IPv4/IPv6 + UDP/ICMP with valid checksums,
//! and the malformed variants.
#![allow(dead_code, reason = "each test binary uses a different subset")]
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sum_bytes(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum()
}

pub fn ipv4_checksum(hdr: &[u8]) -> u16 {
    csum_fold(sum_bytes(hdr))
}

pub fn eth(dst: [u8; 6], src: [u8; 6], proto: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&proto.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 header + `payload` with a correct header checksum.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, proto: u8, payload: &[u8]) -> Vec<u8> {
    let tot = 20 + payload.len();
    let mut h = vec![
        0x45,
        0,
        (tot >> 8) as u8,
        tot as u8,
        0,
        1,
        0x40,
        0,
        ttl,
        proto,
        0,
        0,
    ];
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = ipv4_checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, hop: u8, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.push(next);
    h.push(hop);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// A UDP datagram (checksum 0 for IPv4 is legal; the datapath does not look at L4).
pub fn udp(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let len = (8 + data.len()) as u16;
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&len.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    u
}

/// A well-formed Ethernet frame carrying a UDP datagram from `src` to `dst`.
pub fn frame(src: IpAddr, dst: IpAddr, ttl: u8) -> Vec<u8> {
    let payload = udp(40000, 7, b"peerd verdict test");
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            eth(GW_MAC, SRC_MAC, 0x0800, &ipv4(s, d, ttl, 17, &payload))
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            eth(GW_MAC, SRC_MAC, 0x86dd, &ipv6(s, d, ttl, 17, &payload))
        }
        _ => panic!("mixed families"),
    }
}

/// An ARP request from `sender` for `target`.
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0, 6, 4, 0, 1];
    a.extend_from_slice(&SRC_MAC);
    a.extend_from_slice(&sender.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&target.octets());
    eth([0xff; 6], SRC_MAC, 0x0806, &a)
}
