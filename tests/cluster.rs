//! Cluster mode end to end (SPEC §7): namespaces as hosts, a real etcd, `peerd apply`, one
//! `peerd run` per host. The datapath across hosts is in tests/cluster_traffic.rs.
mod common;

use std::time::Duration;

use common::{
    env::{sh, wait_for, Env},
    fleet::Fleet,
};
use serde_json::Value;

const BOUND: Duration = Duration::from_secs(30);

const AB_C: &str = r#"
[[vpc]]
name = "a"
cidrs = ["10.91.0.0/16", "fd00:91::/48"]
  [[vpc.peering]]
  id = "pcx-ab"
  peer = "b"

[[vpc]]
name = "b"
cidrs = ["10.92.0.0/16", "fd00:92::/48"]
  [[vpc.peering]]
  id = "pcx-ab"
  peer = "a"

[[vpc]]
name = "c"
cidrs = ["10.93.0.0/16"]
"#;

fn vpc<'a>(st: &'a Value, name: &str) -> Option<&'a Value> {
    st["vpcs"].as_array()?.iter().find(|v| v["name"] == name)
}

fn ready(env: &Env, name: &str) -> bool {
    let st = env.status();
    vpc(&st, name).is_some_and(|v| v["ready"] == true)
}

#[test]
#[ignore = "needs root and etcd"]
fn vpcs_are_placed_per_host_and_endpoints_are_published() {
    let mut f = Fleet::new(&[&["a"], &["a", "c"], &["b"]], false, "lease_ttl = \"3s\"");
    f.apply("fleet.toml", AB_C);
    f.start_all();
    for (h, vpcs) in [(1, &["a"][..]), (2, &["a", "c"]), (3, &["b"])] {
        let env = f.host(h);
        for v in vpcs {
            env.wait_status(&format!("{v} ready on h{h}"), BOUND, |st| {
                vpc(st, v).is_some_and(|x| x["ready"] == true)
            });
            assert!(common::env::netns_ok(&env.netns(v)));
        }
        // Only placed VPCs get a namespace.
        for v in ["a", "b", "c"].iter().filter(|v| !vpcs.contains(v)) {
            assert!(!common::env::netns_ok(&env.netns(v)), "{v} placed on h{h}");
        }
    }
    let st = f.host(1).wait_status("three hosts known", BOUND, |st| {
        st["cluster"]["hosts"]
            .as_array()
            .is_some_and(|h| h.len() == 3)
            && st["cluster"]["connected"] == true
            && st["cluster"]["registered"] == true
    });
    assert_eq!(st["cluster"]["host"], "h1");
    let hosts: Vec<&str> = vpc(&st, "a").unwrap()["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["h1", "h2"]);
    // The peering's state is the fleet's.
    let p = &st["peerings"].as_array().unwrap()[0];
    assert_eq!(
        (p["id"].as_str(), p["state"].as_str()),
        (Some("pcx-ab"), Some("active"))
    );

    // A workload appears in a@h1: published under h1's lease.
    f.host(1).add_addr("a", "10.91.0.1");
    let key = "/peerd/v1/endpoints/a/10.91.0.1/h1";
    wait_for(Duration::from_secs(5), "the endpoint in etcd", || {
        f.etcd
            .keys("/peerd/v1/endpoints/")
            .iter()
            .any(|k| k == key)
            .then_some(())
    });
    // And h3 (b's host) knows it as a remote endpoint.
    f.host(3)
        .wait_status("h3 knows a remote endpoint", BOUND, |st| {
            st["cluster"]["remote_endpoints"].as_u64().unwrap_or(0) >= 1
        });
    // Removed: the key goes.
    sh(&[
        "ip",
        "-n",
        &f.host(1).netns("a"),
        "addr",
        "del",
        "10.91.0.1/32",
        "dev",
        "lo",
    ]);
    wait_for(
        Duration::from_secs(5),
        "the endpoint gone from etcd",
        || (!f.etcd.keys("/peerd/v1/endpoints/").iter().any(|k| k == key)).then_some(()),
    );

    // A placement change on a live host: h3 also places c.
    let h3 = f.host(3);
    let text = std::fs::read_to_string(&h3.config)
        .unwrap()
        .replace("vpcs = [\"b\"]", "vpcs = [\"b\", \"c\"]");
    std::fs::write(&h3.config, text).unwrap();
    h3.wait_status("c placed on h3", BOUND, |st| {
        vpc(st, "c").is_some_and(|x| x["ready"] == true)
    });
    assert!(ready(f.host(2), "c"));
    // Deleting a VPC removes it from every host.
    let out = f.delete("c");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for h in [2, 3] {
        f.host(h)
            .wait_status("c gone", BOUND, |st| vpc(st, "c").is_none());
        assert!(!common::env::netns_ok(&f.host(h).netns("c")));
    }
}
