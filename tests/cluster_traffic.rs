//! Cluster mode's datapath end to end (issue 10): VPCs across hosts (network namespaces with
//! their own peerd), a real etcd, real packets through kernel VXLAN.
mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::{
    env::{ping, sh, tcp_echo, udp, wait_for},
    fleet::Fleet,
    stream::Stream,
};
use serde_json::Value;

const BOUND: Duration = Duration::from_secs(30);
const SHORT: Duration = Duration::from_millis(400);

/// a on hosts 1 and 2, b on host 3 (peered with a), c on host 2 (unpeered), hub h on host 3
/// peered with a and with s (on host 1): s must not reach a through h.
const FLEET: &str = r#"
[[vpc]]
name = "a"
cidrs = ["10.91.0.0/16", "fd00:91::/48"]
  [[vpc.peering]]
  id = "pcx-ab"
  peer = "b"
  [[vpc.peering]]
  id = "pcx-ah"
  peer = "h"

[[vpc]]
name = "b"
cidrs = ["10.92.0.0/16", "fd00:92::/48"]
  [[vpc.peering]]
  id = "pcx-ab"
  peer = "a"

[[vpc]]
name = "c"
cidrs = ["10.93.0.0/16"]

[[vpc]]
name = "h"
cidrs = ["10.94.0.0/16"]
  [[vpc.peering]]
  id = "pcx-ah"
  peer = "a"
  [[vpc.peering]]
  id = "pcx-hs"
  peer = "s"

[[vpc]]
name = "s"
cidrs = ["10.95.0.0/16"]
  [[vpc.peering]]
  id = "pcx-hs"
  peer = "h"
"#;

fn vpc<'a>(st: &'a Value, name: &str) -> Option<&'a Value> {
    st["vpcs"].as_array()?.iter().find(|v| v["name"] == name)
}

/// Starts the fleet and waits until every host has every VPC it places ready and knows
/// `endpoints` remote endpoints at least.
fn fleet(v6: bool) -> Fleet {
    fleet_with(v6, "")
}

/// `fleet`, with `daemon` in every host's `[daemon]` (`{DIR}`: the host's directory).
fn fleet_with(v6: bool, daemon: &str) -> Fleet {
    let mut f = Fleet::with_daemon(
        &[&["a", "s"], &["a", "c"], &["b", "h"]],
        v6,
        "lease_ttl = \"3s\"",
        daemon,
    );
    f.apply("fleet.toml", FLEET);
    f.start_all();
    for (n, vpcs) in [(1, &["a", "s"][..]), (2, &["a", "c"]), (3, &["b", "h"])] {
        for v in vpcs {
            f.host(n)
                .wait_status(&format!("{v} ready on h{n}"), BOUND, |st| {
                    vpc(st, v).is_some_and(|x| x["ready"] == true)
                });
        }
    }
    // Workloads: a@1, a@2, b@3, c@2, h@3, s@1.
    let add = |n: usize, v: &str, a: &str| f.host(n).add_addr(v, a);
    add(1, "a", "10.91.1.1");
    add(1, "a", "fd00:91::1:1");
    add(2, "a", "10.91.2.1");
    add(2, "a", "fd00:91::2:1");
    add(3, "b", "10.92.3.1");
    add(3, "b", "fd00:92::3:1");
    add(2, "c", "10.93.2.1");
    add(3, "h", "10.94.3.1");
    add(1, "s", "10.95.1.1");
    for n in 1..=3 {
        f.host(n)
            .wait_status("remote endpoints known", BOUND, |st| {
                st["cluster"]["remote_endpoints"].as_u64().unwrap_or(0) >= 5
            });
    }
    f
}

fn ns(f: &Fleet, n: usize, v: &str) -> String {
    f.host(n).netns(v)
}

/// The packets dropped on host `n` for VPC `v` and `reason`.
fn drops(f: &Fleet, n: usize, v: &str, reason: &str) -> u64 {
    f.host(n).drops(v, reason)
}

fn peered_and_same_vpc_traffic_flows_and_nothing_else(f: &Fleet) {
    // a@1 <-> b@3 and a@2 <-> b@3, ICMP and TCP, IPv4 and IPv6.
    for (n, a4, a6) in [
        (1, "10.91.1.1", "fd00:91::1:1"),
        (2, "10.91.2.1", "fd00:91::2:1"),
    ] {
        assert!(
            ping(&ns(f, n, "a"), a4, "10.92.3.1", 2),
            "a@{n} -> b@3 ping"
        );
        assert!(
            ping(&ns(f, 3, "b"), "10.92.3.1", a4, 2),
            "b@3 -> a@{n} ping"
        );
        assert!(
            ping(&ns(f, n, "a"), a6, "fd00:92::3:1", 2),
            "a@{n} -> b@3 ping6"
        );
        assert!(
            tcp_echo(&ns(f, n, "a"), a4, &ns(f, 3, "b"), "10.92.3.1"),
            "a@{n} -> b@3 TCP"
        );
        assert!(
            tcp_echo(&ns(f, 3, "b"), "fd00:92::3:1", &ns(f, n, "a"), a6),
            "b@3 -> a@{n} TCP over IPv6"
        );
    }
    // Same VPC across hosts.
    assert!(
        ping(&ns(f, 1, "a"), "10.91.1.1", "10.91.2.1", 2),
        "a@1 -> a@2"
    );
    assert!(
        ping(&ns(f, 2, "a"), "fd00:91::2:1", "fd00:91::1:1", 2),
        "a@2 -> a@1 v6"
    );
    assert!(tcp_echo(
        &ns(f, 2, "a"),
        "10.91.2.1",
        &ns(f, 1, "a"),
        "10.91.1.1"
    ));
    // c (unpeered) gets nothing, and reaches nothing.
    f.host(2).add_gw_route("c", "10.92.0.0/16");
    f.host(2).add_gw_route("c", "10.91.0.0/16");
    assert_eq!(
        udp(
            &ns(f, 2, "c"),
            "10.93.2.1",
            &ns(f, 3, "b"),
            "10.92.3.1",
            3,
            SHORT
        ),
        0
    );
    assert_eq!(
        udp(
            &ns(f, 2, "c"),
            "10.93.2.1",
            &ns(f, 1, "a"),
            "10.91.1.1",
            3,
            SHORT
        ),
        0
    );
    // Transit through the hub h@3: s@1 -> a (through h) is dropped on s's host.
    f.host(1).add_gw_route("s", "10.91.0.0/16");
    let before = drops(f, 1, "s", "no-route");
    assert_eq!(
        udp(
            &ns(f, 1, "s"),
            "10.95.1.1",
            &ns(f, 2, "a"),
            "10.91.2.1",
            3,
            SHORT
        ),
        0
    );
    wait_for(
        Duration::from_secs(3),
        "transit counted as no-route on h1",
        || (drops(f, 1, "s", "no-route") >= before + 3).then_some(()),
    );
    // A spoofed inner source is dropped on the sending host.
    f.host(1).add_addr("a", "10.99.0.1");
    let before = drops(f, 1, "a", "spoofed-source");
    f.host(1).add_gw_route("a", "10.92.0.0/16");
    assert_eq!(
        udp(
            &ns(f, 1, "a"),
            "10.99.0.1",
            &ns(f, 3, "b"),
            "10.92.3.1",
            3,
            SHORT
        ),
        0
    );
    wait_for(Duration::from_secs(3), "spoofed counted on h1", || {
        (drops(f, 1, "a", "spoofed-source") >= before + 3).then_some(())
    });
}

#[test]
#[ignore = "needs root and etcd"]
fn vpcs_across_hosts_over_an_ipv4_underlay() {
    let f = fleet(false);
    peered_and_same_vpc_traffic_flows_and_nothing_else(&f);
    // Tunnel counters and status name the remote hosts.
    let st = f.host(3).status();
    let h1 = st["cluster"]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "h1")
        .unwrap();
    assert!(h1["tunnel"]["rx"]["packets"].as_u64().unwrap() > 0, "{h1}");
    assert!(h1["tunnel"]["tx"]["packets"].as_u64().unwrap() > 0, "{h1}");
    let out = f.host(1).peerd(&[
        "explain",
        "--from",
        "a",
        "--src",
        "10.91.1.1",
        "--dst",
        "10.92.3.1",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("h3"), "explain names the remote host: {text}");
}

#[test]
#[ignore = "needs root and etcd"]
fn vpcs_across_hosts_over_an_ipv6_underlay() {
    let f = fleet(true);
    peered_and_same_vpc_traffic_flows_and_nothing_else(&f);
}

/// Sends a hand-made VXLAN packet from the underlay address of host `from` (or an address
/// that is no host's) to host `to`'s VXLAN port: VNI `vni`, inner IPv4 `src` -> `dst`.
fn forge(f: &Fleet, from_ns: &str, to: usize, vni: u32, src: &str, dst: &str) {
    let frame = common::packet::frame(src.parse().unwrap(), dst.parse().unwrap(), 64);
    let mut pkt = vec![0x08, 0, 0, 0];
    pkt.extend_from_slice(&(vni << 8).to_be_bytes());
    pkt.extend_from_slice(&frame);
    let target = SocketAddr::new(f.underlay(to), 4789);
    common::env::in_ns(from_ns, move || {
        let any = if target.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let s = std::net::UdpSocket::bind(any).unwrap();
        for _ in 0..3 {
            s.send_to(&pkt, target).unwrap();
        }
    });
}

#[test]
#[ignore = "needs root and etcd"]
fn forged_vxlan_packets_are_dropped_and_counted_on_the_receiving_host() {
    let f = fleet(false);
    let host_ns = |n: usize| f.host(n).host_netns.clone().unwrap();
    let vni_of = |v: &str| -> u32 {
        f.etcd
            .get(&format!("/peerd/v1/vnis/{v}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let before = |reason: &str| drops(&f, 3, "b", reason);
    let (nl, uv) = (before("not-local-endpoint"), before("not-allowed-source"));
    let vni_before = host_unknown(&f.host(3).status(), "unknown-vni");
    // Wrong VNI (c's: not present on h3).
    forge(&f, &host_ns(1), 3, vni_of("c"), "10.91.1.1", "10.92.3.1");
    // Inner source not allowed: c's address into b.
    forge(&f, &host_ns(1), 3, vni_of("b"), "10.93.2.1", "10.92.3.1");
    // Inner destination not an endpoint of b here.
    forge(&f, &host_ns(1), 3, vni_of("b"), "10.91.1.1", "10.92.9.9");
    wait_for(
        Duration::from_secs(5),
        "forged packets counted on h3",
        || {
            let st = f.host(3).status();
            (before("not-allowed-source") >= uv + 3
                && before("not-local-endpoint") >= nl + 3
                && host_unknown(&st, "unknown-vni") >= vni_before + 3)
                .then_some(())
        },
    );
    // From an address that is no registered host: a fourth namespace on the underlay.
    let stranger = common::etcd::Netns::new("x");
    let before_host = host_unknown(&f.host(3).status(), "unknown-host");
    attach_to_underlay(&f, &stranger.0, "10.250.0.77/24");
    forge(&f, &stranger.0, 3, vni_of("b"), "10.91.1.1", "10.92.3.1");
    wait_for(
        Duration::from_secs(5),
        "unregistered source counted on h3",
        || (host_unknown(&f.host(3).status(), "unknown-host") >= before_host + 3).then_some(()),
    );
}

/// Drops not tied to a VPC (no VPC to count them against): `unattributed_drops` in status.
fn host_unknown(st: &Value, reason: &str) -> u64 {
    st["unattributed_drops"][reason]["packets"]
        .as_u64()
        .unwrap_or(0)
}

fn attach_to_underlay(f: &Fleet, netns: &str, cidr: &str) {
    let ul = f.underlay_netns();
    sh(&[
        "ip", "-n", &ul, "link", "add", "px", "type", "veth", "peer", "name", "ul0", "netns", netns,
    ]);
    sh(&["ip", "-n", &ul, "link", "set", "px", "master", "br0", "up"]);
    sh(&["ip", "-n", netns, "addr", "add", cidr, "dev", "ul0"]);
    sh(&["ip", "-n", netns, "link", "set", "ul0", "up"]);
}

#[test]
#[ignore = "needs root and etcd"]
fn deleting_a_peering_end_disconnects_it_on_every_host() {
    let f = fleet(false);
    assert!(ping(&ns(&f, 1, "a"), "10.91.1.1", "10.92.3.1", 1));
    // b's tenant removes its end.
    let without = FLEET.replace(
        "name = \"b\"\ncidrs = [\"10.92.0.0/16\", \"fd00:92::/48\"]\n  [[vpc.peering]]\n  id = \"pcx-ab\"\n  peer = \"a\"\n",
        "name = \"b\"\ncidrs = [\"10.92.0.0/16\", \"fd00:92::/48\"]\n",
    );
    f.apply("fleet.toml", &without);
    for n in 1..=3 {
        f.host(n).wait_status("pcx-ab disconnected", BOUND, |st| {
            st["peerings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["id"] == "pcx-ab" && p["state"] == "disconnected")
        });
    }
    for n in [1, 2] {
        let a = format!("10.91.{n}.1");
        f.host(n).add_gw_route("a", "10.92.0.0/16");
        assert_eq!(
            udp(&ns(&f, n, "a"), &a, &ns(&f, 3, "b"), "10.92.3.1", 3, SHORT),
            0
        );
        f.host(3).add_gw_route("b", "10.91.0.0/16");
        assert_eq!(
            udp(&ns(&f, 3, "b"), "10.92.3.1", &ns(&f, n, "a"), &a, 3, SHORT),
            0
        );
    }
}

#[test]
#[ignore = "needs root and etcd"]
fn a_cross_host_stream_loses_nothing_through_restarts_kills_etcd_outages_and_churn() {
    let mut f = fleet(false);
    let stream = Stream::between(
        &ns(&f, 1, "a"),
        "10.91.1.1",
        &ns(&f, 3, "b"),
        "10.92.3.1:5555".parse().unwrap(),
    );
    let settle = || std::thread::sleep(Duration::from_millis(300));
    // SIGKILL and restart on the source host, then on the destination host.
    for n in [1, 3] {
        f.host_mut(n).kill9();
        settle();
        f.host_mut(n).start();
        settle();
    }
    // etcd stopped and restarted: hosts go disconnected, forwarding goes on.
    f.etcd.stop();
    f.host(1).wait_status("h1 disconnected", BOUND, |st| {
        st["cluster"]["connected"] == false
    });
    settle();
    f.etcd.restart();
    f.host(1).wait_status("h1 connected again", BOUND, |st| {
        st["cluster"]["connected"] == true
    });
    // 50 unrelated VPCs applied and deleted.
    let mut many = String::new();
    for i in 0..50 {
        many += &format!(
            "[[vpc]]\nname = \"x{i}\"\ncidrs = [\"10.{}.0.0/16\"]\n",
            100 + i
        );
    }
    f.apply("many.toml", &many);
    settle();
    for i in 0..50 {
        let out = f.delete(&format!("x{i}"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    settle();
    let (sent, lost) = stream.finish();
    assert!(sent > 100, "sent {sent}");
    assert!(
        lost.is_empty(),
        "lost {} of {sent}: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
}

#[test]
#[ignore = "needs root and etcd"]
fn a_host_killed_for_good_stops_receiving_within_the_ttl() {
    let mut f = fleet(false);
    assert!(ping(&ns(&f, 3, "b"), "10.92.3.1", "10.91.2.1", 1));
    // Host 2 dies (its peerd killed, nothing renews its lease).
    f.host_mut(2).kill9();
    let killed = Instant::now();
    // Host 3 stops sending to it: its endpoints are gone from h3's datapath.
    wait_for(
        Duration::from_secs(3 + 2),
        "h2's endpoints gone on h3",
        || {
            let st = f.host(3).status();
            (!st["cluster"]["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["name"] == "h2"))
            .then_some(())
        },
    );
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(3 + 1),
        "took {took:?} (TTL 3 s + 1 s)"
    );
    f.host(3).add_gw_route("b", "10.91.0.0/16");
    let before = drops(&f, 3, "b", "no-endpoint");
    assert_eq!(
        udp(
            &ns(&f, 3, "b"),
            "10.92.3.1",
            &ns(&f, 2, "a"),
            "10.91.2.1",
            3,
            SHORT
        ),
        0
    );
    wait_for(Duration::from_secs(3), "no-endpoint counted on h3", || {
        (drops(&f, 3, "b", "no-endpoint") >= before + 3).then_some(())
    });
    // a@1 is still reachable.
    assert!(ping(&ns(&f, 3, "b"), "10.92.3.1", "10.91.1.1", 1));
}

#[test]
#[ignore = "needs root and etcd"]
fn an_endpoint_moved_to_another_host_is_reachable_there_within_a_second() {
    let f = fleet(false);
    let addr = "10.91.7.7";
    f.host(1).add_addr("a", addr);
    // h3 knows 6 remote workloads already (a@1 and a@2 twice, c@2, s@1): this is the 7th.
    f.host(3).wait_status("the endpoint on h1", BOUND, |st| {
        st["cluster"]["remote_endpoints"].as_u64().unwrap_or(0) >= 7
    });
    assert!(ping(&ns(&f, 3, "b"), "10.92.3.1", addr, 1));
    // Move it: removed on host 1, added on host 2.
    sh(&[
        "ip",
        "-n",
        &ns(&f, 1, "a"),
        "addr",
        "del",
        &format!("{addr}/32"),
        "dev",
        "lo",
    ]);
    f.host(2).add_addr("a", addr);
    let moved = Instant::now();
    // Short UDP probes (a ping that fails waits a whole second).
    wait_for(Duration::from_secs(1), "reachable at its new place", || {
        (udp(
            &ns(&f, 3, "b"),
            "10.92.3.1",
            &ns(&f, 2, "a"),
            addr,
            1,
            Duration::from_millis(50),
        ) == 1)
            .then_some(())
    });
    assert!(
        moved.elapsed() <= Duration::from_secs(1),
        "took {:?}",
        moved.elapsed()
    );
}

#[test]
#[ignore = "needs root and etcd"]
fn cross_host_flows_are_logged_by_the_sending_and_the_receiving_host() {
    let f = fleet_with(
        false,
        "flow_log = \"{DIR}/flows/flows.jsonl\"\nflow_log_interval = \"1s\"",
    );
    assert_eq!(
        udp(
            &ns(&f, 1, "a"),
            "10.91.1.1",
            &ns(&f, 3, "b"),
            "10.92.3.1",
            5,
            Duration::from_secs(3)
        ),
        5
    );
    let accepted = |n: usize| -> u64 {
        common::flow_records(&f.host(n).dir.join("flows"))
            .iter()
            .filter(|r| {
                r["src"] == "10.91.1.1"
                    && r["dst"] == "10.92.3.1"
                    && r["protocol"] == 17
                    && r["action"] == "ACCEPT"
                    && r["src_vpc"] == "a"
                    && r["dst_vpc"] == "b"
                    && r["peering"] == "pcx-ab"
            })
            .map(|r| r["packets"].as_u64().unwrap())
            .sum()
    };
    for n in [1, 3] {
        wait_for(BOUND, &format!("the flow logged on h{n}"), || {
            (accepted(n) >= 5).then_some(())
        });
    }
    assert_eq!(accepted(2), 0, "h2 saw none of it");
}
