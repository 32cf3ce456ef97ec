//! End-to-end: `peerd run` on a config, real namespaces, real packets (SPEC §2–§6).
mod common;

use std::time::Duration;

use common::env::{wait_for, Env};

const SHORT: Duration = Duration::from_millis(400);
const LONG: Duration = Duration::from_secs(3);

const TWO_PEERED_AND_C: &str = r#"
[[vpc]]
name = "a"
cidrs = ["10.61.0.0/16", "fd00:61::/48"]
  [[vpc.peering]]
  id = "pcx-ab"
  peer = "b"

[[vpc]]
name = "b"
cidrs = ["10.62.0.0/16", "fd00:62::/48"]
  [[vpc.peering]]
  id = "pcx-ab"
  peer = "a"

[[vpc]]
name = "c"
cidrs = ["10.63.0.0/16", "fd00:63::/48"]
"#;

fn setup(body: &str) -> Option<Env> {
    if !common::can_run() {
        return None;
    }
    let mut env = Env::new();
    env.write_config(body);
    env.start();
    Some(env)
}

#[test]
#[ignore = "needs root"]
fn two_peered_vpcs_talk_both_ways_and_a_third_gets_nothing() {
    let Some(mut env) = setup(TWO_PEERED_AND_C) else {
        return;
    };
    let st = env.status();
    assert_eq!(Env::peering(&st, "pcx-ab")["state"], "active", "{st:#}");
    assert!(
        st["vpcs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["ready"] == true),
        "{st:#}"
    );
    env.add_addr("a", "10.61.0.5");
    env.add_addr("a", "fd00:61::5");
    env.add_addr("b", "10.62.0.7");
    env.add_addr("b", "fd00:62::7");
    env.add_addr("c", "10.63.0.9");
    env.add_addr("c", "fd00:63::9");

    // ICMP, both families, both ways.
    assert!(
        env.ping("a", "10.61.0.5", "10.62.0.7", 3),
        "ping a->b v4\n{}",
        env.log()
    );
    assert!(env.ping("b", "10.62.0.7", "10.61.0.5", 3), "ping b->a v4");
    assert!(env.ping("a", "fd00:61::5", "fd00:62::7", 3), "ping a->b v6");
    assert!(env.ping("b", "fd00:62::7", "fd00:61::5", 3), "ping b->a v6");
    // TCP (1 MiB echoed), both families, and UDP.
    assert!(
        env.tcp_echo("a", "10.61.0.5", "b", "10.62.0.7"),
        "tcp a->b v4"
    );
    assert!(
        env.tcp_echo("b", "fd00:62::7", "a", "fd00:61::5"),
        "tcp b->a v6"
    );
    assert_eq!(
        env.udp("a", "10.61.0.5", "b", "10.62.0.7", 20, LONG),
        20,
        "udp a->b"
    );
    assert_eq!(
        env.udp("b", "fd00:62::7", "a", "fd00:61::5", 20, LONG),
        20,
        "udp b->a v6"
    );
    let st = env.status();
    let fwd = &Env::peering(&st, "pcx-ab")["forwarded"];
    assert!(
        fwd[0]["packets"].as_u64().unwrap() > 40 && fwd[1]["packets"].as_u64().unwrap() > 40,
        "{fwd}"
    );

    // c has no peering: peerd gives it no route; with the operator's own route towards the
    // gateway its packets reach the datapath and are dropped as no-route, and nothing arrives.
    env.add_gw_route("c", "10.61.0.0/16");
    env.add_gw_route("a", "10.63.0.0/16");
    let before_c = env.drops("c", "no-route");
    let before_a = env.drops("a", "no-route");
    assert_eq!(
        env.udp("c", "10.63.0.9", "a", "10.61.0.5", 5, SHORT),
        0,
        "c -> a delivered"
    );
    assert_eq!(
        env.udp("a", "10.61.0.5", "c", "10.63.0.9", 5, SHORT),
        0,
        "a -> c delivered"
    );
    assert!(!env.ping("c", "10.63.0.9", "10.61.0.5", 1));
    assert_eq!(env.drops("c", "no-route"), before_c + 6);
    assert_eq!(env.drops("a", "no-route"), before_a + 5);

    // A second `peerd run` over the unchanged config changes nothing; the datapath forwards
    // while the daemon is down.
    env.stop();
    assert!(
        env.ping("a", "10.61.0.5", "10.62.0.7", 2),
        "datapath must keep forwarding while peerd is stopped"
    );
    env.start();
    let st = env.status();
    assert_eq!(
        st["last_reconcile"]["actions"],
        serde_json::json!([]),
        "restart changed the host:\n{st:#}"
    );
    assert!(env.ping("a", "fd00:61::5", "fd00:62::7", 2));
}

#[test]
#[ignore = "needs root"]
fn hub_and_spokes_no_transit() {
    let body = r#"
[[vpc]]
name = "hub"
cidrs = ["10.70.0.0/16", "fd00:70::/48"]
  [[vpc.peering]]
  id = "pcx-s1"
  peer = "s1"
  [[vpc.peering]]
  id = "pcx-s2"
  peer = "s2"

[[vpc]]
name = "s1"
cidrs = ["10.71.0.0/16", "fd00:71::/48"]
  [[vpc.peering]]
  id = "pcx-s1"
  peer = "hub"
  # s1 also points s2's CIDR at the hub: traffic "through the hub" to the other spoke.
  [[vpc.route_table]]
  name = "main"
  routes = [
    { destination = "10.70.0.0/16", peering = "pcx-s1" },
    { destination = "fd00:70::/48", peering = "pcx-s1" },
    { destination = "10.72.0.0/16", peering = "pcx-s1" },
  ]

[[vpc]]
name = "s2"
cidrs = ["10.72.0.0/16", "fd00:72::/48"]
  [[vpc.peering]]
  id = "pcx-s2"
  peer = "hub"
"#;
    let Some(env) = setup(body) else { return };
    for (v, a4, a6) in [
        ("hub", "10.70.0.1", "fd00:70::1"),
        ("s1", "10.71.0.1", "fd00:71::1"),
        ("s2", "10.72.0.1", "fd00:72::1"),
    ] {
        env.add_addr(v, a4);
        env.add_addr(v, a6);
    }
    // The hub reaches both spokes and they reach it.
    assert!(env.ping("hub", "10.70.0.1", "10.71.0.1", 2));
    assert!(env.ping("hub", "10.70.0.1", "10.72.0.1", 2));
    assert!(env.ping("s1", "fd00:71::1", "fd00:70::1", 2));
    assert!(env.ping("s2", "fd00:72::1", "fd00:70::1", 2));
    assert!(env.tcp_echo("s2", "10.72.0.1", "hub", "10.70.0.1"));

    // s1 -> s2 through the hub's peering: the destination is not the hub's: dropped.
    let before = env.drops("s1", "not-peer-destination");
    assert_eq!(env.udp("s1", "10.71.0.1", "s2", "10.72.0.1", 5, SHORT), 0);
    assert_eq!(env.drops("s1", "not-peer-destination"), before + 5);
    // s2 -> s1 with the operator's own route: no route in s2's table.
    env.add_gw_route("s2", "10.71.0.0/16");
    let before = env.drops("s2", "no-route");
    assert_eq!(env.udp("s2", "10.72.0.1", "s1", "10.71.0.1", 5, SHORT), 0);
    assert_eq!(env.drops("s2", "no-route"), before + 5);
    // The hub as a router: it forwards s1's packet on to s2 with s1's source address: the
    // source is not the hub's, so the datapath drops it as spoofed (no transit).
    common::env::sh(&[
        "ip",
        "netns",
        "exec",
        &env.netns("hub"),
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    env.add_addr("hub", "10.71.0.99"); // the hub pretends to relay for s1
    let before = env.drops("hub", "spoofed-source");
    assert_eq!(env.udp("hub", "10.71.0.99", "s2", "10.72.0.1", 5, SHORT), 0);
    assert_eq!(env.drops("hub", "spoofed-source"), before + 5);
}

#[test]
#[ignore = "needs root"]
fn spoofed_source_is_dropped_and_counted() {
    let Some(env) = setup(TWO_PEERED_AND_C) else {
        return;
    };
    env.add_addr("a", "10.61.0.5");
    env.add_addr("b", "10.62.0.7");
    // An address of c (not a's) added inside a; and one of b itself.
    env.add_addr("a", "10.63.0.66");
    env.add_addr("a", "fd00:63::66");
    env.add_addr("b", "fd00:62::7");
    let before = env.drops("a", "spoofed-source");
    assert_eq!(env.udp("a", "10.63.0.66", "b", "10.62.0.7", 7, SHORT), 0);
    assert_eq!(env.udp("a", "fd00:63::66", "b", "fd00:62::7", 3, SHORT), 0);
    assert_eq!(env.drops("a", "spoofed-source"), before + 10);
    // The same VPC still works from its own address.
    assert_eq!(env.udp("a", "10.61.0.5", "b", "10.62.0.7", 3, LONG), 3);
}

#[test]
#[ignore = "needs root"]
fn overlapping_and_one_sided_peerings_carry_nothing() {
    let body = r#"
[[vpc]]
name = "x"
cidrs = ["10.80.0.0/16"]
  [[vpc.peering]]
  id = "pcx-xy"
  peer = "y"
  [[vpc.peering]]
  id = "pcx-xz"
  peer = "z"

[[vpc]]
name = "y"
cidrs = ["10.80.128.0/17", "fd00:81::/48"]
  [[vpc.peering]]
  id = "pcx-xy"
  peer = "x"

[[vpc]]
name = "z"
cidrs = ["10.82.0.0/16"]
"#;
    let Some(env) = setup(body) else { return };
    let st = env.status();
    let xy = Env::peering(&st, "pcx-xy");
    assert_eq!(xy["state"], "failed", "{st:#}");
    let reason = xy["reason"].as_str().unwrap();
    assert!(
        reason.contains("10.80.0.0/16") && reason.contains("10.80.128.0/17"),
        "{reason}"
    );
    assert_eq!(Env::peering(&st, "pcx-xz")["state"], "pending-acceptance");

    env.add_addr("x", "10.80.0.5");
    env.add_addr("z", "10.82.0.5");
    // No routes were installed for either peering.
    let routes = common::env::sh(&["ip", "-n", &env.netns("x"), "route", "show"]);
    assert!(
        !routes.contains("10.82.0.0/16"),
        "pending peering installed a route:\n{routes}"
    );
    // Pushed anyway, the datapath drops.
    env.add_gw_route("x", "10.82.0.0/16");
    let before = env.drops("x", "no-route");
    assert_eq!(env.udp("x", "10.80.0.5", "z", "10.82.0.5", 4, SHORT), 0);
    assert_eq!(env.drops("x", "no-route"), before + 4);
}

#[test]
#[ignore = "needs root"]
fn nothing_from_a_vpc_reaches_the_host() {
    let Some(env) = setup(TWO_PEERED_AND_C) else {
        return;
    };
    env.add_addr("a", "10.61.0.5");
    // A listener in the root namespace on every address; the VPC sends to the gateway's
    // addresses, to broadcast and to multicast. None of it may arrive.
    let port = 40000 + (std::process::id() % 20000) as u16;
    // A dual-stack socket: it receives IPv4 (mapped) and IPv6.
    let l6 = std::net::UdpSocket::bind(("::", port)).unwrap();
    l6.set_nonblocking(true).unwrap();
    let ns = env.netns("a");
    // Point the gateway address and multicast at the uplink (peerd installs no such routes).
    common::env::sh(&[
        "ip",
        "-n",
        &ns,
        "route",
        "add",
        "169.254.1.1/32",
        "dev",
        "peerd0",
        "scope",
        "link",
    ]);
    common::env::sh(&[
        "ip",
        "-n",
        &ns,
        "route",
        "add",
        "224.0.0.0/4",
        "dev",
        "peerd0",
        "scope",
        "link",
    ]);
    let sent = common::env::in_ns(&ns, move || {
        let s = std::net::UdpSocket::bind(("10.61.0.5", 0)).unwrap();
        s.set_broadcast(true).unwrap();
        let mut sent = 0;
        for dst in ["169.254.1.1", "224.0.0.1"] {
            for _ in 0..3 {
                if s.send_to(b"leak?", (dst, port)).is_ok() {
                    sent += 1;
                }
            }
        }
        let s6 = std::net::UdpSocket::bind(("::", 0)).unwrap();
        let ifindex = nix::net::if_::if_nametoindex("peerd0").unwrap();
        for dst in ["fe80::1", "ff02::1"] {
            let addr = std::net::SocketAddrV6::new(dst.parse().unwrap(), port, 0, ifindex);
            for _ in 0..3 {
                if s6.send_to(b"leak?", addr).is_ok() {
                    sent += 1;
                }
            }
        }
        sent
    });
    assert_eq!(sent, 12, "the VPC could not even send");
    // Bounded wait for the drops to be counted, then nothing may have arrived.
    // Bounded wait until the datapath has seen (and dropped) them: the unicast ones to the
    // gateway as no-route, the link-local and multicast ones as not-unicast. (The VPC's own
    // IPv6 housekeeping, e.g. MLD reports, also lands in not-unicast.)
    wait_for(LONG, "drops to be counted", || {
        (env.drops("a", "no-route") >= 3 && env.drops("a", "not-unicast") >= 6).then_some(())
    });
    let mut buf = [0u8; 64];
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        l6.recv_from(&mut buf).is_err(),
        "a VPC packet reached the host"
    );
}

#[test]
#[ignore = "needs root"]
fn host_side_is_as_specified() {
    let Some(env) = setup(TWO_PEERED_AND_C) else {
        return;
    };
    let st = env.status();
    for v in st["vpcs"].as_array().unwrap() {
        let host_if = v["host_if"].as_str().unwrap();
        // No addresses at all on the host side, not even an IPv6 link-local one.
        let addrs = common::env::sh(&["ip", "-o", "addr", "show", "dev", host_if]);
        assert!(addrs.trim().is_empty(), "{host_if} has addresses: {addrs}");
        // The gateway is resolvable from inside.
        let ns = v["netns"].as_str().unwrap();
        let neigh = common::env::sh(&["ip", "-n", ns, "neigh", "show", "dev", "peerd0"]);
        assert!(
            neigh.contains("169.254.1.1") && neigh.contains("fe80::1"),
            "{neigh}"
        );
    }
    // Automatic routing: a's namespace routes exactly b's CIDRs via the gateway.
    let r4 = common::env::sh(&["ip", "-n", &env.netns("a"), "route", "show"]);
    let r6 = common::env::sh(&["ip", "-n", &env.netns("a"), "-6", "route", "show"]);
    assert!(r4.contains("10.62.0.0/16 via 169.254.1.1"), "{r4}");
    assert!(r6.contains("fd00:62::/48 via fe80::1"), "{r6}");
    assert!(!r4.contains("default") && !r4.contains("10.63."), "{r4}");
}

#[test]
#[ignore = "needs root"]
fn check_reports_errors_with_location_and_teardown_removes_everything() {
    if !common::can_run() {
        return;
    }
    let mut env = Env::new();
    env.write_config("[[vpc]]\nname = \"a\"\ncidrs = [\"10.1.0.0/33\"]\n");
    let out = env.peerd(&["check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:", env.config.display())) && err.contains("10.1.0.0/33"),
        "{err}"
    );

    env.write_config(TWO_PEERED_AND_C);
    let out = env.peerd(&["check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.start();
    let netns_list = common::env::sh(&["ip", "netns", "list"]);
    assert!(netns_list.contains(&env.netns("a")));
    // Teardown refuses while the daemon runs, then removes everything.
    assert!(!env.peerd(&["teardown"]).status.success());
    env.stop();
    let out = env.peerd(&["teardown"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let netns_list = common::env::sh(&["ip", "netns", "list"]);
    assert!(!netns_list.contains(&env.prefix), "{netns_list}");
    assert!(!env.pin_dir.exists(), "pins left");
    let links = common::env::sh(&["ip", "-o", "link", "show", "type", "veth"]);
    let st_host_ifs: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|v| peerd::state::link_name(&env.netns(v)))
        .collect();
    for h in st_host_ifs {
        assert!(!links.contains(&h), "{h} left: {links}");
    }
}
