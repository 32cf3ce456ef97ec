//! No input makes the configuration code panic: arbitrary text, and mutations of a valid
//! configuration (lines dropped, repeated, swapped, values replaced by awkward ones), fed to
//! the strict loader and to the resilient one (with includes and last good versions).
//! Cases: `PROPTEST_CASES` (default 128 per property, a few seconds).
use std::{fs, path::Path};

use proptest::{prelude::*, test_runner::Config as ProptestConfig};

use super::*;

fn cases() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(128);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const MAIN: &str = r#"include = ["vpcs.d/*.toml"]
[daemon]
netns_prefix = "vpc-"
datapath = "tc"
state_dir = "/var/lib/peerd"
pin_dir = "/sys/fs/bpf/peerd"
socket = "/run/peerd/peerd.sock"
socket_group = "peerd"
metrics = "127.0.0.1:9469"
pending_expiry = "1d12h"
flow_log_interval = "60s"
max_prefixes_per_vpc = 8
max_routes_per_vpc = 10
max_route_tables_per_vpc = 3
max_peerings_per_vpc = 4
[[vpc]]
name = "hub"
cidrs = ["10.0.0.0/16", "2001:db8:a::/48"]
mtu = 1500
[[vpc.peering]]
id = "pcx-hub-a"
peer = "a"
"#;

const TENANT: &str = r#"[[vpc]]
name = "a"
cidrs = ["10.1.0.0/16", "fd00:1::/48"]
[[vpc.peering]]
id = "pcx-hub-a"
peer = "hub"
[[vpc.route_table]]
name = "main"
routes = [ { destination = "10.0.0.0/16", peering = "pcx-hub-a" }, { destination = "2001:db8:a::/48", peering = "pcx-hub-a" } ]
[[vpc.route_table]]
name = "x"
routes = [ { destination = "10.0.0.0/24", peering = "pcx-hub-a" } ]
[[vpc.subnet]]
cidr = "10.1.0.0/24"
route_table = "x"
"#;

/// Values that have tripped parsers: edge numbers, special CIDRs, odd strings.
const AWKWARD: &[&str] = &[
    "\"\"",
    "\"0.0.0.0/0\"",
    "\"::/0\"",
    "\"255.255.255.255/32\"",
    "\"10.0.0.0/33\"",
    "\"::ffff:1.2.3.4/128\"",
    "\"fe80::1%eth0/64\"",
    "\"pcx-\"",
    "\"/\"",
    "\"/sys/fs/bpf\"",
    "\"..\"",
    "\"*\"",
    "\"**/*\"",
    "\"[\"",
    "\"\\u0000\"",
    "\"\\u001b[31m\"",
    "\"é\"",
    "\"99999999999999999999999y\"",
    "\"0s\"",
    "-1",
    "0",
    "9223372036854775807",
    "-9223372036854775808",
    "1e400",
    "nan",
    "inf",
    "true",
    "[]",
    "[[]]",
    "{}",
    "[\"10.0.0.0/8\", 1]",
    "{ destination = \"0.0.0.0/0\", peering = \"pcx-hub-a\" }",
    "1979-05-27T07:32:00Z",
];

#[derive(Clone, Debug)]
enum Mutation {
    Drop(usize),
    Repeat(usize),
    Swap(usize, usize),
    /// Replace the value of a `key = value` line by an awkward one.
    Value(usize, usize),
    /// Insert raw text at a byte offset (clamped to a char boundary).
    Insert(usize, String),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Drop),
        any::<usize>().prop_map(Mutation::Repeat),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Swap(a, b)),
        (any::<usize>(), 0..AWKWARD.len()).prop_map(|(l, v)| Mutation::Value(l, v)),
        (any::<usize>(), "\\PC{0,12}|[\\[\\]{}=\"\\\\\n#,.]{1,6}")
            .prop_map(|(o, s)| Mutation::Insert(o, s)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(text: &str, muts: &[Mutation]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for m in muts {
        let n = lines.len().max(1);
        match m {
            Mutation::Drop(i) if !lines.is_empty() => {
                lines.remove(i % n);
            }
            Mutation::Repeat(i) if !lines.is_empty() => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            Mutation::Swap(a, b) if !lines.is_empty() => lines.swap(a % n, b % n),
            Mutation::Value(i, v) if !lines.is_empty() => {
                let l = &mut lines[i % n];
                if let Some(eq) = l.find('=') {
                    l.truncate(eq + 1);
                    l.push(' ');
                    l.push_str(AWKWARD[*v]);
                }
            }
            Mutation::Insert(o, s) => {
                let mut t = lines.join("\n");
                let mut at = o % (t.len() + 1);
                while !t.is_char_boundary(at) {
                    at -= 1;
                }
                t.insert_str(at, s);
                lines = t.lines().map(str::to_owned).collect();
            }
            Mutation::Truncate(o) => {
                let mut t = lines.join("\n");
                let mut at = o % (t.len() + 1);
                while !t.is_char_boundary(at) {
                    at -= 1;
                }
                t.truncate(at);
                lines = t.lines().map(str::to_owned).collect();
            }
            _ => {}
        }
    }
    lines.join("\n") + "\n"
}

#[test]
fn the_seed_configuration_is_valid() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir(d.path().join("vpcs.d")).unwrap();
    fs::write(d.path().join("peerd.toml"), MAIN).unwrap();
    fs::write(d.path().join("vpcs.d/a.toml"), TENANT).unwrap();
    let cfg = Config::load(&d.path().join("peerd.toml")).unwrap();
    assert_eq!(cfg.vpcs.len(), 2);
    let p = evaluate_peerings(&cfg, &|_| None);
    assert_eq!(p[0].state, PeeringState::Active);
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let _ = Config::from_str(&text, Path::new("/etc/peerd/peerd.toml"));
    }

    #[test]
    fn toml_shaped_text_never_panics(text in "([\\[\\]{}=\",.#a-z0-9_:/ \n-]|\\PC){0,400}") {
        let _ = Config::from_str(&text, Path::new("/etc/peerd/peerd.toml"));
    }

    #[test]
    fn mutated_configurations_never_panic(
        main in proptest::collection::vec(mutation(), 0..6),
        tenant in proptest::collection::vec(mutation(), 0..6),
    ) {
        let (main_text, tenant_text) = (apply(MAIN, &main), apply(TENANT, &tenant));
        // In memory (the tenant as a VPC of the main file)...
        let joined = format!("{main_text}{tenant_text}");
        if let Ok(cfg) = Config::from_str(&joined, Path::new("/etc/peerd/peerd.toml")) {
            let _ = evaluate_peerings(&cfg, &|_| None);
        }
        // ...and as files, strict and resilient, from the valid seed's last good versions.
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("vpcs.d")).unwrap();
        let main_path = d.path().join("peerd.toml");
        fs::write(&main_path, MAIN).unwrap();
        fs::write(d.path().join("vpcs.d/a.toml"), TENANT).unwrap();
        let seed = load_resilient(&main_path, &LastGood::default()).unwrap();
        prop_assert!(seed.broken.is_empty());
        fs::write(&main_path, &main_text).unwrap();
        fs::write(d.path().join("vpcs.d/a.toml"), &tenant_text).unwrap();
        let strict = Config::load(&main_path);
        let l = load_resilient(&main_path, &seed.last_good);
        // The main file always has its seed to fall back to.
        let l = l.unwrap();
        let _ = evaluate_peerings(&l.config, &|_| None);
        // A set the strict loader accepts is taken as is.
        if let Ok(cfg) = strict {
            prop_assert!(l.broken.is_empty(), "{:?}", l.broken);
            prop_assert_eq!(cfg, l.config);
        } else {
            prop_assert!(!l.broken.is_empty());
        }
    }
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn durations_never_panic(
        s in "([0-9]{1,25}(\\.[0-9]{0,5})? ?(ns|us|ms|s|sec|m|min|h|d|w|M|y|x)? ?){1,4}|\\PC{0,20}"
    ) {
        if let Some(d) = super::parse::parse_duration(&s) {
            // Whatever it accepted, [daemon] either takes it or names it.
            let text = format!("[daemon]\npending_expiry = \"{}\"\n", s.trim().replace('"', ""));
            let _ = (d, Config::from_str(&text, Path::new("/etc/peerd/peerd.toml")));
        }
    }
}
