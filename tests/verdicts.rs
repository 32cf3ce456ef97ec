//! Verdict-level tests of the datapath program with BPF_PROG_TEST_RUN: no namespaces, no
//! links; the maps hold a small topology and each frame's verdict, rewritten bytes and drop
//! counter are checked, and compared with the reference model in `peerd::tables`.
mod common;

use std::net::{IpAddr, Ipv4Addr};

use aya::programs::{TestRun, TestRunOptions};
use common::{packet::*, PinDir};
use peerd::{
    datapath::Datapath,
    tables::{decide, Decision, Tables},
};
use peerd_common::{
    DropReason, PeeringInfo, RouteTarget, VpcInfo, PEERING_ACTIVE, VPC_PRESENT, VPC_REMOTE,
};

const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const NS_MAC: [[u8; 6]; 4] = [
    [0; 6],
    [2, 1, 1, 1, 1, 1],
    [2, 2, 2, 2, 2, 2],
    [2, 3, 3, 3, 3, 3],
];
const GW: [[u8; 6]; 4] = [
    [0; 6],
    [2, 0xa, 1, 1, 1, 1],
    [2, 0xa, 2, 2, 2, 2],
    [2, 0xa, 3, 3, 3, 3],
];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// VPC 1 (10.1/16, 2001:db8:1::/48) and 2 (10.2/16, 2001:db8:2::/48) peered by peering 1;
/// VPC 3 (10.3/16) has a pending peering 2 with VPC 1. Table n is VPC n's main table.
/// Table 1 also routes 10.9/16 (in nobody's CIDRs) through peering 1.
fn topology() -> Tables {
    let mut t = Tables::default();
    for v in 1..=3u32 {
        t.ifaces.insert(100 + v, v);
        t.vpcs.insert(
            v,
            VpcInfo {
                host_ifindex: 100 + v,
                flags: VPC_PRESENT,
                ns_mac: NS_MAC[v as usize],
                gw_mac: GW[v as usize],
                vni: 0,
            },
        );
        t.src
            .insert((v, format!("10.{v}.0.0/16").parse().unwrap()), v);
        t.src
            .insert((v, format!("2001:db8:{v}::/48").parse().unwrap()), v);
    }
    t.peerings.insert(
        1,
        PeeringInfo {
            state: PEERING_ACTIVE,
            vpc_a: 1,
            vpc_b: 2,
            _pad: 0,
        },
    );
    t.peerings.insert(
        2,
        PeeringInfo {
            state: 0,
            vpc_a: 1,
            vpc_b: 3,
            _pad: 0,
        },
    );
    // No ROUTE_INSIDE_DST here: these tables exercise the full destination check.
    let r = |p, d| RouteTarget {
        peering: p,
        dst_vpc: d,
        ..Default::default()
    };
    t.routes
        .insert((1, "10.2.0.0/16".parse().unwrap()), r(1, 2));
    t.routes
        .insert((1, "2001:db8:2::/48".parse().unwrap()), r(1, 2));
    t.routes
        .insert((2, "10.1.0.0/16".parse().unwrap()), r(1, 1));
    t.routes
        .insert((2, "2001:db8:1::/48".parse().unwrap()), r(1, 1));
    t.routes
        .insert((1, "10.3.0.0/16".parse().unwrap()), r(2, 3));
    t.routes
        .insert((1, "10.9.0.0/16".parse().unwrap()), r(1, 2));
    t
}

struct Harness {
    dp: Datapath,
    _pins: PinDir,
}

struct Run {
    verdict: u32,
    out: Vec<u8>,
}

impl Harness {
    fn new(t: &Tables) -> Self {
        assert!(
            common::can_run(),
            "needs root and the eBPF object (run with --run-ignored all as root)"
        );
        let pins = PinDir::new();
        let mut dp = Datapath::load(&pins.0).expect("load datapath");
        dp.sync(t).expect("sync");
        Self { dp, _pins: pins }
    }

    fn run(&mut self, ingress_ifindex: u32, frame: &[u8]) -> Run {
        // struct __sk_buff: ingress_ifindex at offset 36; 192 bytes in all.
        let mut ctx = [0u8; 192];
        ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 64];
        let res = self
            .dp
            .tc_program()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..Default::default()
            })
            .expect("test_run");
        out.truncate(res.data_size_out as usize);
        Run {
            verdict: res.return_value,
            out,
        }
    }

    fn drops(&self, vpc: u32, reason: DropReason) -> u64 {
        self.dp
            .counters()
            .drops(vpc)
            .get(&reason)
            .map(|c| c.packets)
            .unwrap_or(0)
    }

    /// Runs `frame` from VPC `vpc` and asserts it is dropped for `reason`, counted once.
    fn expect_drop(&mut self, vpc: u32, frame: &[u8], reason: DropReason) {
        let before = self.drops(vpc, reason);
        let r = self.run(100 + vpc, frame);
        assert_eq!(
            r.verdict,
            TC_ACT_SHOT,
            "expected drop ({}) for {frame:02x?}",
            reason.name()
        );
        assert_eq!(
            self.drops(vpc, reason),
            before + 1,
            "counter {} did not rise by one",
            reason.name()
        );
    }
}

#[test]
#[ignore = "needs root"]
fn forwards_ipv4_between_peers_with_ttl_checksum_and_macs() {
    let t = topology();
    let mut h = Harness::new(&t);
    let f = frame(ip("10.1.0.5"), ip("10.2.0.7"), 64);
    assert!(matches!(
        decide(&t, 1, ip("10.1.0.5"), ip("10.2.0.7"), 64),
        Decision::Deliver { dst_vpc: 2, .. }
    ));
    let before = h.dp.counters().forwarded(1, 0);
    let r = h.run(101, &f);
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(
        &r.out[0..6],
        &NS_MAC[2],
        "destination MAC is VPC 2's uplink"
    );
    assert_eq!(&r.out[6..12], &GW[2], "source MAC is VPC 2's gateway");
    assert_eq!(r.out[14 + 8], 63, "TTL decremented");
    assert_eq!(
        ipv4_checksum(&r.out[14..34]),
        0,
        "header checksum still valid"
    );
    assert_eq!(&r.out[34..], &f[34..], "payload untouched");
    let after = h.dp.counters().forwarded(1, 0);
    assert_eq!(after.packets, before.packets + 1);
    assert_eq!(after.bytes, before.bytes + f.len() as u64);

    // And back: VPC 2 -> VPC 1 counts in direction 1.
    let r = h.run(102, &frame(ip("10.2.0.7"), ip("10.1.0.5"), 2));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(&r.out[0..6], &NS_MAC[1]);
    assert_eq!(r.out[14 + 8], 1);
    assert_eq!(ipv4_checksum(&r.out[14..34]), 0);
    assert_eq!(h.dp.counters().forwarded(1, 1).packets, 1);
}

#[test]
#[ignore = "needs root"]
fn ttl_checksum_update_is_correct_for_every_ttl() {
    let mut h = Harness::new(&topology());
    for ttl in 2..=255u8 {
        let r = h.run(101, &frame(ip("10.1.255.255"), ip("10.2.0.0"), ttl));
        assert_eq!(r.verdict, TC_ACT_REDIRECT, "ttl {ttl}");
        assert_eq!(r.out[22], ttl - 1);
        assert_eq!(ipv4_checksum(&r.out[14..34]), 0, "checksum after ttl {ttl}");
    }
}

#[test]
#[ignore = "needs root"]
fn forwards_ipv6_and_decrements_hop_limit() {
    let mut h = Harness::new(&topology());
    let f = frame(ip("2001:db8:1::5"), ip("2001:db8:2::7"), 64);
    let r = h.run(101, &f);
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(&r.out[0..6], &NS_MAC[2]);
    assert_eq!(r.out[14 + 7], 63);
    assert_eq!(&r.out[22..], &f[22..]);
}

#[test]
#[ignore = "needs root"]
fn drops_by_reason_and_counts() {
    let t = topology();
    let mut h = Harness::new(&t);
    let cases: &[(&str, &str, u8, DropReason)] = &[
        ("10.2.0.5", "10.2.0.7", 64, DropReason::SpoofedSource), // another VPC's address
        ("10.3.0.5", "10.2.0.7", 64, DropReason::SpoofedSource), // transitive attempt
        ("10.1.0.5", "10.4.0.7", 64, DropReason::NoRoute),
        ("10.1.0.5", "10.3.0.7", 64, DropReason::Blackhole), // pending peering
        ("10.1.0.5", "10.9.0.7", 64, DropReason::NotPeerDestination),
        ("10.1.0.5", "10.2.0.7", 1, DropReason::TtlExceeded),
        ("10.1.0.5", "10.2.0.7", 0, DropReason::TtlExceeded),
        ("10.1.0.5", "224.0.0.5", 64, DropReason::NotUnicast),
        ("10.1.0.5", "255.255.255.255", 64, DropReason::NotUnicast),
        (
            "2001:db8:3::5",
            "2001:db8:2::7",
            64,
            DropReason::SpoofedSource,
        ),
        ("2001:db8:1::5", "2001:db8:3::7", 64, DropReason::NoRoute),
        ("2001:db8:1::5", "ff02::1", 64, DropReason::NotUnicast),
        ("2001:db8:1::5", "fe80::1", 64, DropReason::NotUnicast),
        ("2001:db8:1::5", "2001:db8:2::7", 1, DropReason::TtlExceeded),
    ];
    for &(src, dst, ttl, reason) in cases {
        assert_eq!(
            decide(&t, 1, ip(src), ip(dst), ttl),
            Decision::Drop(reason),
            "model: {src} -> {dst}"
        );
        h.expect_drop(1, &frame(ip(src), ip(dst), ttl), reason);
    }
}

#[test]
#[ignore = "needs root"]
fn malformed_frames_are_dropped_and_counted() {
    let mut h = Harness::new(&topology());
    let good = frame(ip("10.1.0.5"), ip("10.2.0.7"), 64);
    let m = DropReason::Malformed;

    // BPF_PROG_TEST_RUN refuses frames shorter than Ethernet + a base IP header, so the
    // shortest truncations are covered by the namespace tests (raw frames on a real veth).
    // Here: an IHL claiming options the frame does not have.
    let mut bad = good[..34].to_vec();
    bad[14] = 0x46;
    bad[16..18].copy_from_slice(&24u16.to_be_bytes());
    h.expect_drop(1, &bad, m);
    let mut bad = good.clone();
    bad[14] = 0x44; // IHL 4
    h.expect_drop(1, &bad, m);
    let mut bad = good.clone();
    bad[14] = 0x65; // version 6 in an IPv4 frame
    h.expect_drop(1, &bad, m);
    let mut bad = good.clone();
    bad[14] = 0x4f; // IHL 15: header longer than the frame's IP total length
    h.expect_drop(1, &bad, m);
    let mut bad = good.clone();
    bad[16] = 0x05; // total length far beyond the frame
    let c = ipv4_checksum(&{
        let mut hdr = bad[14..34].to_vec();
        hdr[10] = 0;
        hdr[11] = 0;
        hdr
    });
    bad[24..26].copy_from_slice(&c.to_be_bytes());
    h.expect_drop(1, &bad, m);
    let mut bad = good.clone();
    bad[24] ^= 0x55; // header checksum wrong
    h.expect_drop(1, &bad, m);

    let good6 = frame(ip("2001:db8:1::5"), ip("2001:db8:2::7"), 64);
    let mut bad = good6.clone();
    bad[18] = 0x10; // payload length beyond the frame
    h.expect_drop(1, &bad, m);
    let mut bad = good6.clone();
    bad[18] = 0;
    bad[19] = 0; // payload length 0 (jumbogram): unsupported
    h.expect_drop(1, &bad, m);

    // Ethertype neither IP nor ARP.
    h.expect_drop(
        1,
        &eth(GW_MAC, SRC_MAC, 0x88cc, &[0; 46]),
        DropReason::UnsupportedProtocol,
    );
    // IPv4 to a multicast MAC.
    let mut mc = good.clone();
    mc[0] = 0x01;
    h.expect_drop(1, &mc, DropReason::NotUnicast);
    // From an interface that belongs to no VPC: counted in slot 0.
    let before = h.drops(0, DropReason::UnknownInterface);
    assert_eq!(h.run(999, &good).verdict, TC_ACT_SHOT);
    assert_eq!(h.drops(0, DropReason::UnknownInterface), before + 1);
}

#[test]
#[ignore = "needs root"]
fn answers_arp_for_the_gateway_only() {
    let mut h = Harness::new(&topology());
    let req = arp_request(Ipv4Addr::new(10, 1, 0, 5), Ipv4Addr::new(169, 254, 1, 1));
    let r = h.run(101, &req);
    assert_eq!(
        r.verdict, TC_ACT_REDIRECT,
        "the reply goes back out of the same veth"
    );
    assert_eq!(&r.out[0..6], &SRC_MAC, "reply to the requester");
    assert_eq!(&r.out[6..12], &GW[1], "from the gateway MAC");
    assert_eq!(&r.out[20..22], &[0, 2], "op = reply");
    assert_eq!(&r.out[22..28], &GW[1], "sender hardware address = gateway");
    assert_eq!(&r.out[28..32], &[169, 254, 1, 1]);
    assert_eq!(&r.out[32..38], &SRC_MAC);
    assert_eq!(&r.out[38..42], &[10, 1, 0, 5]);

    let other = arp_request(Ipv4Addr::new(10, 1, 0, 5), Ipv4Addr::new(10, 1, 0, 6));
    h.expect_drop(1, &other, DropReason::UnsupportedProtocol);
    h.expect_drop(1, &req[..30], DropReason::Malformed);
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
}

#[test]
#[ignore = "needs root"]
fn flows_aggregate_across_cpus_with_their_verdict() {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut h = Harness::new(&topology());
    h.dp.set_flow_log(true).unwrap();
    let spoofed = frame(ip("10.3.0.5"), ip("10.2.0.7"), 64);
    let good = frame(ip("10.1.0.5"), ip("10.2.0.7"), 64);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..4 {
                pin_to(i % cpus);
                assert_eq!(h.run(101, &spoofed).verdict, TC_ACT_SHOT);
                assert_eq!(h.run(101, &good).verdict, TC_ACT_REDIRECT);
            }
        });
    });
    let flows = h.dp.drain_flows();
    assert_eq!(flows.len(), 2, "{flows:?}");
    for (k, v) in &flows {
        assert_eq!(v.packets, 4, "all CPUs' packets summed: {k:?} {v:?}");
        assert!(v.first_ns > 0 && v.first_ns <= v.last_ns, "{v:?}");
        if k.src[..4] == [10, 3, 0, 5] {
            assert_eq!(
                v.verdict,
                peerd_common::FLOW_REJECT_BASE + DropReason::SpoofedSource as u32,
                "{v:?}"
            );
        } else {
            assert_eq!(
                (v.verdict, v.dst_vpc, v.peering),
                (peerd_common::FLOW_ACCEPT, 2, 1),
                "{v:?}"
            );
            assert_eq!((k.src_port, k.dst_port, k.proto), (40000, 7, 17));
        }
    }
    assert!(h.dp.drain_flows().is_empty(), "drained");
    assert_eq!(h.dp.flow_lost().packets, 0);
}

type Flows = Vec<(peerd_common::FlowKey, peerd_common::FlowValue)>;

/// The drained flows of VPC `vpc`: (individual entries, aggregate entries).
fn split_by_vpc(flows: &Flows, vpc: u32) -> (Flows, Flows) {
    flows
        .iter()
        .filter(|(k, _)| k.src_vpc == vpc)
        .partition(|(k, _)| !k.is_aggregate())
}

#[test]
#[ignore = "needs root"]
fn a_vpc_spraying_new_flows_gets_its_budget_then_aggregates_and_others_keep_theirs() {
    use peerd_common::{FlowKey, FLOW_ACCEPT, FLOW_BUDGET, FLOW_REJECT_BASE, MAX_FLOWS};
    let spoofed = FLOW_REJECT_BASE + DropReason::SpoofedSource as u32;
    let budget = FLOW_BUDGET as usize;
    let mut t = topology();
    t.peerings.get_mut(&2).unwrap().state = PEERING_ACTIVE; // VPC 1 peers with 2 and 3
    let mut h = Harness::new(&t);
    h.dp.set_flow_log(true).unwrap();
    assert!(h.dp.drain_flows().is_empty());

    // VPC 1: one real flow first, then a spray of distinct spoofed sources, more than the
    // whole map holds, then the real flow again, new real flows (IPv4 over both peerings,
    // IPv6 over one) and an IPv6 spoofed packet.
    let real = frame(ip("10.1.0.5"), ip("10.2.0.7"), 64);
    assert_eq!(h.run(101, &real).verdict, TC_ACT_REDIRECT);
    let spray = MAX_FLOWS as usize + 100;
    for i in 0..spray {
        let src = Ipv4Addr::from(0x0a32_0000 + i as u32); // 10.50.x.y: nobody's
        let f = frame(IpAddr::V4(src), ip("10.2.0.7"), 64);
        assert_eq!(h.run(101, &f).verdict, TC_ACT_SHOT);
    }
    assert_eq!(h.run(101, &real).verdict, TC_ACT_REDIRECT);
    for (i, dst) in ["10.2.0.7", "10.3.0.7"].iter().cycle().take(8).enumerate() {
        let f = frame(ip(&format!("10.1.1.{i}")), ip(dst), 64);
        assert_eq!(h.run(101, &f).verdict, TC_ACT_REDIRECT);
    }
    for i in 0..4 {
        let f = frame(ip(&format!("2001:db8:1::1:{i}")), ip("2001:db8:2::7"), 64);
        assert_eq!(h.run(101, &f).verdict, TC_ACT_REDIRECT);
    }
    let f6 = frame(ip("2001:db8:3::5"), ip("2001:db8:2::7"), 64);
    assert_eq!(h.run(101, &f6).verdict, TC_ACT_SHOT);
    // VPC 2, in the same window: its own flows, one by one.
    for i in 0..20 {
        let f = frame(ip(&format!("10.2.0.{}", 10 + i)), ip("10.1.0.5"), 64);
        assert_eq!(h.run(102, &f).verdict, TC_ACT_REDIRECT);
    }

    let flows = h.dp.drain_flows();
    assert_eq!(h.dp.flow_lost().packets, 0, "nothing lost");
    let (one, agg) = split_by_vpc(&flows, 1);
    assert!(
        one.len() <= budget,
        "VPC 1 has {} individual entries, budget {budget}",
        one.len()
    );
    let sent = 1 + spray + 1 + 8 + 4 + 1;
    let counted: u64 = one.iter().chain(&agg).map(|(_, v)| v.packets).sum();
    assert_eq!(counted, sent as u64, "every packet of VPC 1 counted once");
    let real_flow = one
        .iter()
        .find(|(k, _)| k.src[..4] == [10, 1, 0, 5])
        .expect("the flow VPC 1 started within its budget stays individual");
    assert_eq!(real_flow.1.packets, 2);
    // Its aggregates: one per family and verdict, the 5-tuple zeroed.
    assert_eq!(agg.len(), 4, "{agg:?}");
    for (k, v) in &agg {
        assert_eq!(
            (k.proto, k.src_port, k.dst_port, k.src, k.dst),
            (0, 0, 0, [0; 16], [0; 16]),
            "{k:?}"
        );
        assert_eq!(*k, FlowKey::aggregate(1, k.family, v.verdict));
    }
    let agg_of = |family: u8, verdict: u32| {
        agg.iter()
            .find(|(k, _)| *k == FlowKey::aggregate(1, family, verdict))
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no aggregate v{family} verdict {verdict}: {agg:?}"))
    };
    let individual_spoofed = one.iter().filter(|(_, v)| v.verdict == spoofed).count();
    assert_eq!(
        agg_of(4, spoofed).packets,
        (spray - individual_spoofed) as u64
    );
    // Accepted packets over two peerings: the aggregate names neither; over one, that one.
    let accepted = agg_of(4, FLOW_ACCEPT);
    assert_eq!(
        (accepted.packets, accepted.dst_vpc, accepted.peering),
        (8, 0, 0)
    );
    let accepted = agg_of(6, FLOW_ACCEPT);
    assert_eq!(
        (accepted.packets, accepted.dst_vpc, accepted.peering),
        (4, 2, 1)
    );
    assert_eq!(agg_of(6, spoofed).packets, 1);

    // VPC 2's flows were all recorded one by one.
    let (two, two_agg) = split_by_vpc(&flows, 2);
    assert!(two_agg.is_empty(), "{two_agg:?}");
    assert_eq!(two.len(), 20);
    assert!(two
        .iter()
        .all(|(_, v)| v.packets == 1 && v.verdict == FLOW_ACCEPT));

    // The drain started a new window: VPC 1 has its budget again.
    let f = frame(ip("10.50.0.1"), ip("10.2.0.7"), 64);
    assert_eq!(h.run(101, &f).verdict, TC_ACT_SHOT);
    let flows = h.dp.drain_flows();
    assert_eq!(flows.len(), 1, "{flows:?}");
    assert!(!flows[0].0.is_aggregate(), "{flows:?}");
}

#[test]
#[ignore = "needs root"]
fn a_route_over_a_peering_that_does_not_join_the_two_vpcs_is_a_blackhole() {
    // Table 3 (VPC 3's) routes 10.2/16 over peering 1, which joins VPCs 1 and 2: tables the
    // daemon never compiles, but the datapath must not forward (nor count) by them.
    let mut t = topology();
    t.peerings.get_mut(&2).unwrap().state = PEERING_ACTIVE;
    let r = |p, d| RouteTarget {
        peering: p,
        dst_vpc: d,
        ..Default::default()
    };
    t.routes
        .insert((3, "10.2.0.0/16".parse().unwrap()), r(1, 2));
    // And table 1 names VPC 3 as the far end of peering 1.
    t.routes
        .insert((1, "10.3.9.0/24".parse().unwrap()), r(1, 3));
    let mut h = Harness::new(&t);
    for (vpc, src, dst) in [(3, "10.3.0.5", "10.2.0.7"), (1, "10.1.0.5", "10.3.9.7")] {
        assert_eq!(
            decide(&t, vpc, ip(src), ip(dst), 64),
            Decision::Drop(DropReason::Blackhole),
            "model: {src} -> {dst}"
        );
        let before = (
            h.dp.counters().forwarded(1, 0),
            h.dp.counters().forwarded(1, 1),
        );
        h.expect_drop(vpc, &frame(ip(src), ip(dst), 64), DropReason::Blackhole);
        assert_eq!(
            (
                h.dp.counters().forwarded(1, 0),
                h.dp.counters().forwarded(1, 1)
            ),
            before
        );
    }
    // The peering's own ends still talk.
    assert_eq!(
        h.run(101, &frame(ip("10.1.0.5"), ip("10.2.0.7"), 64))
            .verdict,
        TC_ACT_REDIRECT
    );
}

#[test]
#[ignore = "needs root"]
fn a_destination_vpc_without_its_link_is_a_counted_drop_not_a_forward() {
    let mut t = topology();
    t.vpcs.get_mut(&2).unwrap().flags = 0;
    let mut h = Harness::new(&t);
    let f = frame(ip("10.1.0.5"), ip("10.2.0.7"), 64);
    assert_eq!(
        decide(&t, 1, ip("10.1.0.5"), ip("10.2.0.7"), 64),
        Decision::Drop(DropReason::DestinationUnavailable)
    );
    h.expect_drop(1, &f, DropReason::DestinationUnavailable);
    assert_eq!(
        DropReason::DestinationUnavailable.name(),
        "destination-unavailable"
    );
    assert_eq!(
        h.dp.counters().forwarded(1, 0).packets,
        0,
        "not counted as forwarded"
    );
    // The link of a VPC slot not in use gets no ARP answer (there is no gateway MAC to give).
    let req = arp_request(Ipv4Addr::new(10, 2, 0, 5), Ipv4Addr::new(169, 254, 1, 1));
    h.expect_drop(2, &req, DropReason::UnknownInterface);
}

#[test]
#[ignore = "needs root"]
fn a_flow_whose_verdict_changes_within_a_window_is_logged_under_each_verdict() {
    use peerd_common::{FLOW_ACCEPT, FLOW_REJECT_BASE};
    let mut t = topology();
    let mut h = Harness::new(&t);
    h.dp.set_flow_log(true).unwrap();
    let f = frame(ip("10.1.0.5"), ip("10.2.0.7"), 64);
    for _ in 0..3 {
        assert_eq!(h.run(101, &f).verdict, TC_ACT_REDIRECT);
    }
    // The peering is deactivated mid-window: the same 5-tuple is now a blackhole.
    t.peerings.get_mut(&1).unwrap().state = 0;
    h.dp.sync(&t).expect("sync");
    for _ in 0..2 {
        h.expect_drop(1, &f, DropReason::Blackhole);
    }
    let mut flows = h.dp.drain_flows();
    flows.sort_by_key(|(_, v)| v.verdict);
    let got: Vec<_> = flows
        .iter()
        .map(|(k, v)| (k.src[..4].to_vec(), v.verdict, v.packets))
        .collect();
    assert_eq!(
        got,
        vec![
            (vec![10, 1, 0, 5], FLOW_ACCEPT, 3),
            (
                vec![10, 1, 0, 5],
                FLOW_REJECT_BASE + DropReason::Blackhole as u32,
                2
            ),
        ],
        "{flows:?}"
    );
}

/// Cluster mode, sending side: VPC 1 (here and on host slot 1) peered with VPC 2 (here and
/// on host slot 1) and with VPC 4 (only on host slot 2, over an IPv6 underlay). Each
/// packet's verdict agrees with the model: delivered here, tunnelled to the endpoint's host
/// (counted per host), or dropped as no-endpoint.
fn cluster_topology(vxlan_ifindex: u32) -> Tables {
    let mut t = topology();
    for (v, vni) in [(1, 10), (2, 20)] {
        let i = t.vpcs.get_mut(&v).unwrap();
        i.flags |= VPC_REMOTE;
        i.vni = vni;
    }
    t.vpcs.insert(
        4,
        VpcInfo {
            flags: VPC_REMOTE,
            vni: 40,
            ..VpcInfo::default()
        },
    );
    t.src.insert(
        (4, "10.4.0.0/16".parse().unwrap()),
        peerd_common::TABLE_NONE,
    );
    t.peerings.insert(
        3,
        PeeringInfo {
            state: PEERING_ACTIVE,
            vpc_a: 4,
            vpc_b: 1,
            _pad: 0,
        },
    );
    t.routes.insert(
        (1, "10.4.0.0/16".parse().unwrap()),
        RouteTarget {
            peering: 3,
            dst_vpc: 4,
            ..Default::default()
        },
    );
    t.hosts.insert(1, ip("192.0.2.1"));
    t.hosts.insert(2, ip("2001:db8:ff::2"));
    for (v, a, host) in [
        (2, "10.2.0.7", 0),
        (2, "10.2.0.8", 1),
        (4, "10.4.0.5", 2),
        (1, "10.1.0.9", 1),
        (1, "10.1.0.5", 0),
        // An endpoint on a host slot the datapath does not know (left the fleet).
        (2, "10.2.0.9", 3),
    ] {
        t.endpoints.insert((v, ip(a)), host);
    }
    t.vxlan_ifindex = vxlan_ifindex;
    t
}

#[test]
#[ignore = "needs root"]
fn cluster_sending_side_tunnels_to_the_endpoints_host_and_agrees_with_the_model() {
    let t = cluster_topology(1);
    let mut h = Harness::new(&t);
    let cases = [
        (1, "10.1.0.5", "10.2.0.7"),
        (1, "10.1.0.5", "10.2.0.8"),
        (1, "10.1.0.5", "10.2.0.99"),
        (1, "10.1.0.5", "10.2.0.9"),
        (1, "10.1.0.5", "10.4.0.5"),
        (1, "10.1.0.5", "10.1.0.9"),
        (1, "10.1.0.5", "10.1.0.10"),
        (2, "10.2.0.7", "10.1.0.5"),
        (2, "10.2.0.7", "10.1.0.9"),
        (1, "10.1.0.5", "10.3.0.1"),
    ];
    let mut tunnelled = 0;
    for (vpc, src, dst) in cases {
        let expect = decide(&t, vpc, ip(src), ip(dst), 64);
        let f = frame(ip(src), ip(dst), 64);
        match expect {
            Decision::Drop(r) => h.expect_drop(vpc, &f, r),
            Decision::Deliver { dst_vpc, .. } => {
                let r = h.run(100 + vpc, &f);
                assert_eq!(r.verdict, TC_ACT_REDIRECT, "{src} -> {dst}");
                assert_eq!(r.out[0..6], NS_MAC[dst_vpc as usize], "{src} -> {dst}");
            }
            Decision::Tunnel { host, vni, .. } => {
                tunnelled += 1;
                let before = h.dp.counters().host(host).0.packets;
                let r = h.run(100 + vpc, &f);
                assert_eq!(r.verdict, TC_ACT_REDIRECT, "{src} -> {dst} (vni {vni})");
                assert_eq!(
                    h.dp.counters().host(host).0.packets,
                    before + 1,
                    "{src} -> {dst}: counted as sent to host slot {host}"
                );
            }
        }
    }
    assert_eq!(tunnelled, 4, "the cases cover tunnels to both hosts");
    assert_eq!(
        decide(&t, 1, ip("10.1.0.5"), ip("10.2.0.99"), 64),
        Decision::Drop(DropReason::NoEndpoint)
    );
    assert_eq!(
        decide(&t, 1, ip("10.1.0.5"), ip("10.4.0.5"), 64),
        Decision::Tunnel {
            dst_vpc: 4,
            peering: 3,
            host: 2,
            vni: 40
        }
    );
    // Without the VXLAN device, nothing goes to another host.
    let t = cluster_topology(0);
    let mut h = Harness::new(&t);
    let f = frame(ip("10.1.0.5"), ip("10.2.0.8"), 64);
    assert_eq!(
        decide(&t, 1, ip("10.1.0.5"), ip("10.2.0.8"), 64),
        Decision::Drop(DropReason::DestinationUnavailable)
    );
    h.expect_drop(1, &f, DropReason::DestinationUnavailable);
}
