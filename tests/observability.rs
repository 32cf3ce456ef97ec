//! Observability (issue 6): exact counters for known traffic in status JSON and /metrics, the
//! metrics text parses and documents every family, counters survive a restart.
mod common;

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use common::env::Env;

const BODY: &str = r#"
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
[[vpc]]
name = "c"
cidrs = ["10.2.0.0/16"]
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    resp.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// Samples of `metric` as (labels -> value).
fn samples(text: &str, metric: &str) -> BTreeMap<Vec<(String, String)>, f64> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("metrics parse");
    scrape
        .samples
        .into_iter()
        .filter(|s| s.metric == metric)
        .map(|s| {
            let mut l: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            l.sort();
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            };
            (l, v)
        })
        .collect()
}

fn fwd_metric(text: &str, what: &str, src: &str, dst: &str) -> f64 {
    let key: Vec<(String, String)> = vec![
        ("dst_vpc".into(), dst.into()),
        ("peering".into(), "pcx-ab".into()),
        ("src_vpc".into(), src.into()),
    ];
    samples(text, &format!("peerd_forwarded_{what}_total"))
        .get(&key)
        .copied()
        .unwrap_or(-1.0)
}

fn drop_metric(text: &str, vpc: &str, reason: &str) -> f64 {
    let key: Vec<(String, String)> =
        vec![("reason".into(), reason.into()), ("vpc".into(), vpc.into())];
    samples(text, "peerd_dropped_packets_total")
        .get(&key)
        .copied()
        .unwrap_or(-1.0)
}

fn fwd_status(env: &Env, dir: usize) -> (u64, u64) {
    let st = env.status();
    let f = &Env::peering(&st, "pcx-ab")["forwarded"][dir];
    (f["packets"].as_u64().unwrap(), f["bytes"].as_u64().unwrap())
}

#[test]
#[ignore = "needs root"]
fn known_traffic_moves_counters_exactly_in_status_and_metrics_and_survives_restart() {
    if !common::can_run() {
        return;
    }
    let port = free_port();
    let mut env = Env::new();
    env.write_config_with(&format!("metrics = \"127.0.0.1:{port}\""), BODY);
    env.start();
    env.add_addr("a", "10.0.0.1");
    env.add_addr("b", "10.1.0.1");
    env.add_addr("c", "10.2.0.1");

    let (p0, b0) = fwd_status(&env, 0);
    let (q0, c0) = fwd_status(&env, 1);
    let m0 = scrape(port);
    // N pings (56-byte payload: 98-byte frames each way) and M UDP datagrams of 100 bytes
    // (142-byte frames) from a to b.
    let (n, m) = (5u64, 7u64);
    assert!(env.ping("a", "10.0.0.1", "10.1.0.1", n as u32));
    assert_eq!(
        env.udp(
            "a",
            "10.0.0.1",
            "b",
            "10.1.0.1",
            m as u32,
            Duration::from_secs(3)
        ),
        m as u32
    );
    let (p1, b1) = fwd_status(&env, 0);
    let (q1, c1) = fwd_status(&env, 1);
    let udp_frame = 14 + 20 + 8 + "peerd-test 0".len() as u64;
    // The UDP helper's payloads are "peerd-test {i}": lengths 12 for i < 10.
    assert_eq!(p1 - p0, n + m, "packets a->b");
    assert_eq!(b1 - b0, n * 98 + m * udp_frame, "bytes a->b");
    assert_eq!(q1 - q0, n, "packets b->a (echo replies)");
    assert_eq!(c1 - c0, n * 98, "bytes b->a");
    let m1 = scrape(port);
    assert_eq!(
        fwd_metric(&m1, "packets", "a", "b") - fwd_metric(&m0, "packets", "a", "b"),
        (n + m) as f64
    );
    assert_eq!(
        fwd_metric(&m1, "bytes", "a", "b") - fwd_metric(&m0, "bytes", "a", "b"),
        (n * 98 + m * udp_frame) as f64
    );
    assert_eq!(
        fwd_metric(&m1, "packets", "b", "a") - fwd_metric(&m0, "packets", "b", "a"),
        n as f64
    );

    // Known drops: spoofed (a uses c's address), non-peered (c -> a), no-route.
    env.add_addr("a", "10.2.0.99");
    env.add_gw_route("c", "10.0.0.0/16");
    let (s0, r0) = (env.drops("a", "spoofed-source"), env.drops("c", "no-route"));
    assert_eq!(
        env.udp(
            "a",
            "10.2.0.99",
            "b",
            "10.1.0.1",
            4,
            Duration::from_millis(400)
        ),
        0
    );
    assert_eq!(
        env.udp(
            "c",
            "10.2.0.1",
            "a",
            "10.0.0.1",
            6,
            Duration::from_millis(400)
        ),
        0
    );
    assert_eq!(env.drops("a", "spoofed-source"), s0 + 4);
    assert_eq!(env.drops("c", "no-route"), r0 + 6);
    let m2 = scrape(port);
    assert_eq!(drop_metric(&m2, "a", "spoofed-source"), (s0 + 4) as f64);
    assert_eq!(drop_metric(&m2, "c", "no-route"), (r0 + 6) as f64);

    // Every family has HELP and TYPE.
    let mut families = std::collections::BTreeSet::new();
    let (mut help, mut typ) = (
        std::collections::BTreeSet::new(),
        std::collections::BTreeSet::new(),
    );
    for l in m2.lines() {
        if let Some(r) = l.strip_prefix("# HELP ") {
            help.insert(r.split(' ').next().unwrap().to_owned());
        } else if let Some(r) = l.strip_prefix("# TYPE ") {
            typ.insert(r.split(' ').next().unwrap().to_owned());
        } else if !l.starts_with('#') && !l.is_empty() {
            families.insert(l.split(['{', ' ']).next().unwrap().to_owned());
        }
    }
    for f in &families {
        let base = ["_total", "_bucket", "_sum", "_count", "_info"]
            .iter()
            .find_map(|s| f.strip_suffix(s).filter(|b| typ.contains(*b)))
            .unwrap_or(f);
        assert!(
            typ.contains(base) && help.contains(base),
            "family {f} lacks HELP/TYPE"
        );
    }
    for f in [
        "peerd_forwarded_packets",
        "peerd_dropped_packets",
        "peerd_peering_state",
        "peerd_reconcile_duration_seconds",
        "peerd_build",
        "peerd_last_reload_success",
    ] {
        assert!(typ.contains(f), "missing family {f}:\n{m2}");
    }
    let state = samples(&m2, "peerd_peering_state");
    assert!(
        state
            .iter()
            .any(|(l, v)| *v == 1.0 && l.contains(&("state".into(), "active".into()))),
        "{state:?}"
    );

    // Counters keep their values across a restart.
    let before = (fwd_status(&env, 0), env.drops("a", "spoofed-source"));
    env.stop();
    env.start();
    assert_eq!(
        (fwd_status(&env, 0), env.drops("a", "spoofed-source")),
        before
    );
}

#[test]
#[ignore = "needs root"]
fn flow_log_records_accepts_and_rejects_with_counts_and_rotates() {
    if !common::can_run() {
        return;
    }
    let mut env = Env::new();
    let flows = env.dir.join("flows");
    env.write_config_with(
        &format!("flow_log = \"{}\"\nflow_log_interval = \"1s\"\nflow_log_max_bytes = 2048\nflow_log_keep = 3", flows.join("flows.jsonl").display()),
        BODY,
    );
    env.start();
    env.add_addr("a", "10.0.0.1");
    env.add_addr("b", "10.1.0.1");
    env.add_addr("a", "10.2.0.99"); // c's address inside a: spoofed
                                    // Accepted: 6 datagrams a -> b; rejected: 4 spoofed.
    assert_eq!(
        env.udp("a", "10.0.0.1", "b", "10.1.0.1", 6, Duration::from_secs(3)),
        6
    );
    assert_eq!(
        env.udp(
            "a",
            "10.2.0.99",
            "b",
            "10.1.0.1",
            4,
            Duration::from_millis(300)
        ),
        0
    );
    let port = 20000 + (std::process::id() % 20000) as u64;
    let sum = |recs: &[serde_json::Value], src: &str, action: &str| -> (u64, u64) {
        recs.iter()
            .filter(|r| {
                r["src"] == src
                    && r["dst"] == "10.1.0.1"
                    && r["dst_port"] == port
                    && r["action"] == action
            })
            .fold((0, 0), |(p, b), r| {
                (
                    p + r["packets"].as_u64().unwrap(),
                    b + r["bytes"].as_u64().unwrap(),
                )
            })
    };
    let frame = 14 + 20 + 8 + "peerd-test 0".len() as u64;
    let recs = common::env::wait_for(Duration::from_secs(15), "flow records", || {
        let r = common::flow_records(&flows);
        (sum(&r, "10.0.0.1", "ACCEPT").0 == 6 && sum(&r, "10.2.0.99", "REJECT").0 == 4).then_some(r)
    });
    assert_eq!(sum(&recs, "10.0.0.1", "ACCEPT"), (6, 6 * frame));
    assert_eq!(sum(&recs, "10.2.0.99", "REJECT"), (4, 4 * frame));
    let acc = recs
        .iter()
        .find(|r| r["action"] == "ACCEPT" && r["dst_port"] == port)
        .unwrap();
    assert_eq!(
        (
            acc["src_vpc"].as_str(),
            acc["dst_vpc"].as_str(),
            acc["peering"].as_str()
        ),
        (Some("a"), Some("b"), Some("pcx-ab")),
        "{acc}"
    );
    assert_eq!(acc["protocol"], 17);
    assert!(acc["start_ms"].as_u64().unwrap() <= acc["end_ms"].as_u64().unwrap());
    let rej = recs
        .iter()
        .find(|r| r["action"] == "REJECT" && r["src"] == "10.2.0.99")
        .unwrap();
    assert_eq!(
        (
            rej["reason"].as_str(),
            rej["src_vpc"].as_str(),
            rej["dst_vpc"].as_str()
        ),
        (Some("spoofed-source"), Some("a"), None),
        "{rej}"
    );

    // Rotation: enough distinct flows (a new source port each) to pass 2 KiB several times.
    for _ in 0..12 {
        assert_eq!(
            env.udp("a", "10.0.0.1", "b", "10.1.0.1", 1, Duration::from_secs(3)),
            1
        );
    }
    common::env::wait_for(Duration::from_secs(15), "a rotation", || {
        let st = env.status();
        (st["flow_log"]["rotations"].as_u64().unwrap_or(0) >= 1).then_some(())
    });
    assert!(flows.join("flows.jsonl.1").exists());
    assert!(std::fs::metadata(flows.join("flows.jsonl")).unwrap().len() <= 2048);
    assert_eq!(env.status()["flow_log"]["lost_packets"], 0);
    env.stop();
}
