//! Partial access (SPEC §3 routing modes, §5): the AWS peering guide's configurations, from the
//! example configs in `configs/examples/`, with real namespaces and packets; `peerd explain`
//! is checked against what the namespaces see.
mod common;

use std::time::Duration;

use common::env::{wait_for, Env};
use serde_json::Value;

const SHORT: Duration = Duration::from_millis(400);
const LONG: Duration = Duration::from_secs(3);

fn setup(body: &str) -> Option<Env> {
    if !common::can_run() {
        return None;
    }
    let mut env = Env::new();
    env.write_config(body);
    env.start();
    Some(env)
}

fn explain(env: &Env, from: &str, src: &str, dst: &str) -> Value {
    let out = env.peerd(&[
        "explain",
        "--from",
        from,
        "--src",
        src,
        "--dst",
        dst,
        "--json",
        "--socket",
        env.socket.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
#[ignore = "needs root"]
fn subnets_reach_peers_with_identical_cidrs() {
    let Some(env) = setup(include_str!("../configs/examples/identical-cidrs.toml")) else {
        return;
    };
    env.add_addr("central", "10.0.0.10");
    env.add_addr("central", "10.0.1.10");
    env.add_addr("left", "10.1.0.5");
    env.add_addr("right", "10.1.0.5");
    // Each subnet reaches its own peer and never the other, though both have 10.1.0.5.
    assert_eq!(
        env.udp("central", "10.0.0.10", "left", "10.1.0.5", 5, LONG),
        5
    );
    assert_eq!(
        env.udp("central", "10.0.0.10", "right", "10.1.0.5", 3, SHORT),
        0
    );
    assert_eq!(
        env.udp("central", "10.0.1.10", "right", "10.1.0.5", 5, LONG),
        5
    );
    assert_eq!(
        env.udp("central", "10.0.1.10", "left", "10.1.0.5", 3, SHORT),
        0
    );
    assert!(env.ping("central", "10.0.0.10", "10.1.0.5", 2));
    assert!(env.ping("central", "10.0.1.10", "10.1.0.5", 2));
    assert!(env.tcp_echo("right", "10.1.0.5", "central", "10.0.1.10"));
    // The peers only route back to their own subnet.
    env.add_addr("left", "10.1.0.6");
    env.add_gw_route("left", "10.0.1.0/24");
    let before = env.drops("left", "no-route");
    assert_eq!(
        env.udp("left", "10.1.0.6", "central", "10.0.1.10", 3, SHORT),
        0
    );
    assert_eq!(env.drops("left", "no-route"), before + 3);

    let e = explain(&env, "central", "10.0.1.10", "10.1.0.5");
    assert_eq!(
        (e["verdict"].as_str(), e["to"].as_str()),
        (Some("deliver"), Some("right")),
        "{e:#}"
    );
    assert_eq!(
        (
            e["table"].as_str(),
            e["route"].as_str(),
            e["peering"].as_str()
        ),
        (Some("to-right"), Some("10.1.0.0/16"), Some("pcx-right"))
    );
    assert_eq!(e["peering_state"], "active");
    let e = explain(&env, "left", "10.1.0.6", "10.0.1.10");
    assert_eq!(
        (e["verdict"].as_str(), e["reason"].as_str()),
        (Some("drop"), Some("no-route")),
        "{e:#}"
    );
    let e = explain(&env, "central", "10.0.9.9", "10.1.0.5");
    assert_eq!(
        e["reason"], "no-route",
        "a source in no subnet, and no main table: {e:#}"
    );
    let e = explain(&env, "central", "10.9.0.1", "10.1.0.5");
    assert_eq!(e["reason"], "spoofed-source");
}

#[test]
#[ignore = "needs root"]
fn a_host_route_wins_over_the_covering_block() {
    let Some(env) = setup(include_str!("../configs/examples/longest-prefix.toml")) else {
        return;
    };
    env.add_addr("central", "10.0.0.1");
    for v in ["pinned", "bulk"] {
        env.add_addr(v, "10.1.0.77");
        env.add_addr(v, "10.1.0.5");
    }
    assert_eq!(
        env.udp("central", "10.0.0.1", "pinned", "10.1.0.77", 5, LONG),
        5
    );
    assert_eq!(
        env.udp("central", "10.0.0.1", "bulk", "10.1.0.77", 3, SHORT),
        0
    );
    assert_eq!(
        env.udp("central", "10.0.0.1", "bulk", "10.1.0.5", 5, LONG),
        5
    );
    assert_eq!(
        env.udp("central", "10.0.0.1", "pinned", "10.1.0.5", 3, SHORT),
        0
    );
    assert!(
        env.ping("central", "10.0.0.1", "10.1.0.77", 2),
        "replies from pinned come back"
    );
    assert!(
        env.ping("central", "10.0.0.1", "10.1.0.5", 2),
        "replies from bulk come back"
    );
    let e = explain(&env, "central", "10.0.0.1", "10.1.0.77");
    assert_eq!(
        (e["to"].as_str(), e["route"].as_str()),
        (Some("pinned"), Some("10.1.0.77/32")),
        "{e:#}"
    );
    let e = explain(&env, "central", "10.0.0.1", "10.1.0.78");
    assert_eq!(
        (e["to"].as_str(), e["route"].as_str()),
        (Some("bulk"), Some("10.1.0.0/16")),
        "{e:#}"
    );
}

#[test]
#[ignore = "needs root"]
fn only_the_routed_cidr_of_a_two_cidr_vpc_works_both_ways() {
    let Some(env) = setup(include_str!("../configs/examples/partial-cidrs.toml")) else {
        return;
    };
    env.add_addr("multi", "10.0.0.5");
    env.add_addr("multi", "10.2.0.5");
    env.add_addr("single", "10.1.0.5");
    assert!(env.ping("multi", "10.0.0.5", "10.1.0.5", 2));
    assert!(env.ping("single", "10.1.0.5", "10.0.0.5", 2));
    // From the unrouted CIDR: delivered one way...
    assert_eq!(
        env.udp("multi", "10.2.0.5", "single", "10.1.0.5", 5, LONG),
        5
    );
    // ...but the replies have no route.
    assert!(!env.ping("multi", "10.2.0.5", "10.1.0.5", 1));
    env.add_gw_route("single", "10.2.0.0/16");
    let before = env.drops("single", "no-route");
    assert_eq!(
        env.udp("single", "10.1.0.5", "multi", "10.2.0.5", 4, SHORT),
        0
    );
    assert_eq!(env.drops("single", "no-route"), before + 4);
    assert_eq!(
        explain(&env, "single", "10.1.0.5", "10.2.0.5")["reason"],
        "no-route"
    );
}

#[test]
#[ignore = "needs root"]
fn routes_for_specific_hosts_only() {
    let Some(env) = setup(include_str!("../configs/examples/specific-hosts.toml")) else {
        return;
    };
    for a in ["10.0.0.5", "10.0.0.6"] {
        env.add_addr("a", a);
    }
    for a in ["10.1.0.5", "10.1.0.6"] {
        env.add_addr("b", a);
    }
    assert!(env.ping("a", "10.0.0.5", "10.1.0.5", 2));
    assert!(env.tcp_echo("b", "10.1.0.5", "a", "10.0.0.5"));
    // Any other pair: no route in a's table (10.1.0.6), or no route back in b's (10.0.0.6).
    assert!(!env.ping("a", "10.0.0.6", "10.1.0.5", 1));
    env.add_gw_route("a", "10.1.0.6/32");
    let before = env.drops("a", "no-route");
    assert_eq!(env.udp("a", "10.0.0.5", "b", "10.1.0.6", 3, SHORT), 0);
    assert_eq!(env.drops("a", "no-route"), before + 3);
}

#[test]
#[ignore = "needs root"]
fn full_mesh_of_three_every_pair_both_ways() {
    let Some(env) = setup(include_str!("../configs/examples/full-mesh.toml")) else {
        return;
    };
    let vpcs = [
        ("a", "10.0.0.1", "fd00:a::1"),
        ("b", "10.1.0.1", "fd00:b::1"),
        ("c", "10.2.0.1", "fd00:c::1"),
    ];
    for (v, a4, a6) in vpcs {
        env.add_addr(v, a4);
        env.add_addr(v, a6);
    }
    for (from, s4, s6) in vpcs {
        for (to, d4, d6) in vpcs {
            if from != to {
                assert!(env.ping(from, s4, d4, 1), "{from} -> {to} v4");
                assert!(env.ping(from, s6, d6, 1), "{from} -> {to} v6");
            }
        }
    }
    let st = env.status();
    for id in ["pcx-ab", "pcx-ac", "pcx-bc"] {
        let p = Env::peering(&st, id);
        assert_eq!(p["state"], "active");
        assert!(p["forwarded"][0]["packets"].as_u64().unwrap() >= 4, "{p}");
    }
}

#[test]
#[ignore = "needs root"]
fn hub_with_six_spokes_no_spoke_to_spoke() {
    let Some(env) = setup(include_str!("../configs/examples/hub-and-spokes.toml")) else {
        return;
    };
    env.add_addr("hub", "10.0.0.1");
    for i in 1..=6 {
        env.add_addr(&format!("spoke{i}"), &format!("10.{i}.0.1"));
    }
    for i in 1..=6 {
        let s = format!("spoke{i}");
        let a = format!("10.{i}.0.1");
        assert!(env.ping("hub", "10.0.0.1", &a, 1), "hub -> {s}");
        assert!(env.ping(&s, &a, "10.0.0.1", 1), "{s} -> hub");
    }
    // Every spoke sends to every other spoke through its route pointing at the hub.
    let before: Vec<u64> = (1..=6)
        .map(|i| env.drops(&format!("spoke{i}"), "not-peer-destination"))
        .collect();
    for i in 1..=6 {
        let ns = env.netns(&format!("spoke{i}"));
        common::env::in_ns(&ns, move || {
            let s = std::net::UdpSocket::bind((format!("10.{i}.0.1").as_str(), 0)).unwrap();
            for j in (1..=6).filter(|j| *j != i) {
                s.send_to(b"transit?", (format!("10.{j}.0.1").as_str(), 9))
                    .unwrap();
            }
        });
    }
    wait_for(LONG, "every spoke-to-spoke packet to be dropped", || {
        (1..=6)
            .all(|i| env.drops(&format!("spoke{i}"), "not-peer-destination") == before[i - 1] + 5)
            .then_some(())
    });
    let e = explain(&env, "spoke1", "10.1.0.1", "10.2.0.1");
    assert_eq!(
        (
            e["reason"].as_str(),
            e["route"].as_str(),
            e["peering"].as_str()
        ),
        (
            Some("not-peer-destination"),
            Some("10.0.0.0/8"),
            Some("pcx-1")
        ),
        "{e:#}"
    );
}

#[test]
#[ignore = "needs root"]
fn ipv6_added_to_peered_vpcs_uses_the_same_peering() {
    let v4_only = r#"
[[vpc]]
name = "a"
cidrs = ["10.0.0.0/16"]
  [[vpc.peering]]
  id = "pcx-ab"
  peer = "b"
[[vpc]]
name = "b"
cidrs = ["10.1.0.0/16"]
  [[vpc.peering]]
  id = "pcx-ab"
  peer = "a"
"#;
    let Some(env) = setup(v4_only) else { return };
    env.add_addr("a", "10.0.0.1");
    env.add_addr("b", "10.1.0.1");
    assert!(env.ping("a", "10.0.0.1", "10.1.0.1", 2));
    env.write_config(
        &v4_only
            .replace("[\"10.0.0.0/16\"]", "[\"10.0.0.0/16\", \"fd00:a::/48\"]")
            .replace("[\"10.1.0.0/16\"]", "[\"10.1.0.0/16\", \"fd00:b::/48\"]"),
    );
    env.reload();
    env.add_addr("a", "fd00:a::1");
    env.add_addr("b", "fd00:b::1");
    let before = Env::peering(&env.status(), "pcx-ab")["forwarded"][0]["packets"]
        .as_u64()
        .unwrap();
    assert!(
        env.ping("a", "fd00:a::1", "fd00:b::1", 3),
        "IPv6 over the same peering"
    );
    assert!(env.ping("a", "10.0.0.1", "10.1.0.1", 1), "IPv4 still works");
    let st = env.status();
    let p = Env::peering(&st, "pcx-ab");
    assert_eq!(p["state"], "active");
    assert!(
        p["forwarded"][0]["packets"].as_u64().unwrap() >= before + 4,
        "{p}"
    );
}
