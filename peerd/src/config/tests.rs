use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_str(text, Path::new("/etc/peerd/peerd.toml"))
}

fn err(text: &str) -> String {
    parse(text)
        .expect_err("config should be rejected")
        .to_string()
}

const AB: &str = r#"
[[vpc]]
name = "a"
cidrs = ["10.0.0.0/16", "2001:db8:a::/48"]
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

fn states(text: &str) -> Vec<(String, PeeringState, Option<String>)> {
    let cfg = parse(text).unwrap();
    evaluate_peerings(&cfg, &|_| None)
        .into_iter()
        .map(|p| (p.id, p.state, p.reason))
        .collect()
}

#[test]
fn valid_config_with_defaults() {
    let cfg = parse(AB).unwrap();
    assert_eq!(cfg.daemon, DaemonConfig::default());
    assert_eq!(cfg.vpcs.len(), 2);
    assert_eq!(cfg.vpcs[0].cidrs[1].to_string(), "2001:db8:a::/48");
    assert_eq!(cfg.vpcs[1].peerings[0].location.line, 11);
    assert_eq!(
        states(AB),
        vec![("pcx-ab".into(), PeeringState::Active, None)]
    );
}

#[test]
fn daemon_section_parses() {
    let cfg = parse("[daemon]\nnetns_prefix = \"t-\"\ndatapath = \"xdp\"\npending_expiry = \"1d2h\"\nmetrics = \"127.0.0.1:9469\"\n").unwrap();
    assert_eq!(cfg.daemon.netns_prefix, "t-");
    assert_eq!(cfg.daemon.datapath, DatapathMode::Xdp);
    assert_eq!(cfg.daemon.pending_expiry, Duration::from_secs(26 * 3600));
    assert!(cfg.daemon.metrics.is_some());
}

#[test]
fn empty_file_is_valid() {
    assert!(parse("").unwrap().vpcs.is_empty());
}

#[test]
fn syntax_error_has_location() {
    let e = err("[[vpc]]\nname = = \"a\"\n");
    assert!(e.starts_with("/etc/peerd/peerd.toml:2:"), "{e}");
}

#[test]
fn garbage_is_rejected_without_panic() {
    for g in [
        "{\"vpc\": []}",
        "\u{0}\u{1}\u{2}",
        "[[vpc]",
        "vpc = 3",
        "[[vpc]]\nname = 1\ncidrs = []",
    ] {
        let e = err(g);
        assert!(e.contains("/etc/peerd/peerd.toml:"), "{g:?}: {e}");
    }
}

#[test]
fn unknown_key_is_named() {
    let e = err("[[vpc]]\nname = \"a\"\ncidrs = [\"10.0.0.0/16\"]\ncidr = \"x\"\n");
    assert!(e.contains(":4:") && e.contains("cidr"), "{e}");
    let e = err("[daemon]\nsockett = \"/x\"\n");
    assert!(e.contains(":2:1") && e.contains("sockett"), "{e}");
}

#[test]
fn bad_cidrs() {
    let e = err("[[vpc]]\nname = \"a\"\ncidrs = [\"10.0.0.0/33\"]\n");
    assert!(
        e.contains(":3:10") && e.contains("10.0.0.0/33") && e.contains("not a CIDR"),
        "{e}"
    );
    let e = err("[[vpc]]\nname = \"a\"\ncidrs = [\"10.0.0.1/16\"]\n");
    assert!(e.contains("did you mean 10.0.0.0/16?"), "{e}");
    let e = err("[[vpc]]\nname = \"a\"\ncidrs = [\"10.0.0.0/16\", \"10.0.1.0/24\"]\n");
    assert!(e.contains("overlaps 10.0.0.0/16"), "{e}");
    let e = err("[[vpc]]\nname = \"a\"\ncidrs = []\n");
    assert!(e.contains("at least one CIDR"), "{e}");
}

#[test]
fn names_and_duplicates() {
    let e = err("[[vpc]]\nname = \"A_b\"\ncidrs = [\"10.0.0.0/16\"]\n");
    assert!(
        e.contains(":2:8") && e.contains("1 to 32 characters"),
        "{e}"
    );
    let e = err("[[vpc]]\nname = \"a\"\ncidrs = [\"10.0.0.0/16\"]\n[[vpc]]\nname = \"a\"\ncidrs = [\"10.1.0.0/16\"]\n");
    assert!(
        e.contains(":5:8") && e.contains("already defined at /etc/peerd/peerd.toml:2:8"),
        "{e}"
    );
}

#[test]
fn mtu_range() {
    let e = err("[[vpc]]\nname = \"a\"\ncidrs = [\"2001:db8::/48\"]\nmtu = 1000\n");
    assert!(
        e.contains(":4:7") && e.contains("IPv6 needs at least 1280"),
        "{e}"
    );
    assert!(parse("[[vpc]]\nname = \"a\"\ncidrs = [\"10.0.0.0/8\"]\nmtu = 9000\n").is_ok());
}

#[test]
fn subnets_and_routes() {
    let base = "[[vpc]]\nname = \"a\"\ncidrs = [\"10.0.0.0/16\"]\n[[vpc.peering]]\nid = \"pcx-1\"\npeer = \"b\"\n[[vpc.route_table]]\nname = \"x\"\nroutes = [{ destination = \"10.1.0.0/16\", peering = \"pcx-1\" }]\n";
    assert!(parse(base).is_ok());
    let e = err(&format!(
        "{base}[[vpc.subnet]]\ncidr = \"10.9.0.0/24\"\nroute_table = \"x\"\n"
    ));
    assert!(
        e.contains(":11:8") && e.contains("not inside any CIDR"),
        "{e}"
    );
    let e = err(&format!("{base}[[vpc.subnet]]\ncidr = \"10.0.0.0/24\"\nroute_table = \"x\"\n[[vpc.subnet]]\ncidr = \"10.0.0.0/25\"\nroute_table = \"x\"\n"));
    assert!(
        e.contains(":14:") && e.contains("overlaps subnet 10.0.0.0/24"),
        "{e}"
    );
    let e = err(&format!(
        "{base}[[vpc.subnet]]\ncidr = \"10.0.0.0/24\"\nroute_table = \"y\"\n"
    ));
    assert!(e.contains("route table \"y\""), "{e}");
    let e = err(&base.replace("peering = \"pcx-1\" }", "peering = \"pcx-2\" }"));
    assert!(
        e.contains(":9:") && e.contains("pcx-2, which VPC \"a\" does not declare"),
        "{e}"
    );
    let e = err(&base.replace(
        "routes = [",
        "routes = [{ destination = \"10.1.0.0/16\", peering = \"pcx-1\" }, ",
    ));
    assert!(e.contains("two routes for 10.1.0.0/16"), "{e}");
}

#[test]
fn ends_that_disagree() {
    let e = err(&format!("{AB}[[vpc]]\nname = \"c\"\ncidrs = [\"10.2.0.0/16\"]\n[[vpc.peering]]\nid = \"pcx-ab\"\npeer = \"a\"\n"));
    assert!(e.contains("more than two VPCs"), "{e}");
    let e = err(&AB.replacen("peer = \"a\"", "peer = \"c\"", 1));
    assert!(e.contains("disagree"), "{e}");
    let e = err("[[vpc]]\nname = \"a\"\ncidrs = [\"10.0.0.0/16\"]\n[[vpc.peering]]\nid = \"bad\"\npeer = \"b\"\n");
    assert!(e.contains("must start with \"pcx-\""), "{e}");
}

#[test]
fn all_errors_are_reported() {
    let e = parse("[[vpc]]\nname = \"a\"\ncidrs = [\"x\", \"10.0.0.1/8\"]\nmtu = 1\n").unwrap_err();
    assert_eq!(e.errors.len(), 3, "{e}");
}

#[test]
fn includes() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("peerd.toml");
    std::fs::create_dir(dir.path().join("vpcs.d")).unwrap();
    std::fs::write(
        dir.path().join("vpcs.d/2-b.toml"),
        "[[vpc]]\nname = \"b\"\ncidrs = [\"10.1.0.0/16\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("vpcs.d/1-a.toml"),
        "[[vpc]]\nname = \"a\"\ncidrs = [\"10.0.0.0/16\"]\n",
    )
    .unwrap();
    std::fs::write(&main, "include = [\"vpcs.d/*.toml\"]\n").unwrap();
    let cfg = Config::load(&main).unwrap();
    assert_eq!(
        cfg.vpcs.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(cfg.files.len(), 3);
    // Errors in an included file name that file.
    std::fs::write(
        dir.path().join("vpcs.d/3-c.toml"),
        "[[vpc]]\nname = \"c\"\ncidrs = [\"10.1.0.0/99\"]\n",
    )
    .unwrap();
    let e = Config::load(&main).unwrap_err().to_string();
    assert!(e.contains("3-c.toml:3:10"), "{e}");
    std::fs::remove_file(dir.path().join("vpcs.d/3-c.toml")).unwrap();
    // A plain name that matches nothing is an error; a glob that matches nothing is not.
    std::fs::write(&main, "include = [\"missing.toml\", \"none/*.toml\"]\n").unwrap();
    let e = Config::load(&main).unwrap_err().to_string();
    assert!(
        e.contains(":1:12")
            && e.contains("include \"missing.toml\" matches no file")
            && !e.contains("none/"),
        "{e}"
    );
    // Cycle, and [daemon] in an included file.
    std::fs::write(&main, "include = [\"peerd.toml\"]\n").unwrap();
    assert!(Config::load(&main)
        .unwrap_err()
        .to_string()
        .contains("cycle"));
    std::fs::write(
        dir.path().join("d.toml"),
        "[daemon]\nnetns_prefix = \"x\"\n",
    )
    .unwrap();
    std::fs::write(&main, "include = [\"d.toml\"]\n").unwrap();
    assert!(Config::load(&main)
        .unwrap_err()
        .to_string()
        .contains("only allowed in the main"));
}

#[test]
fn state_pending_self_unknown_rejected() {
    let one = "[[vpc]]\nname = \"a\"\ncidrs = [\"10.0.0.0/16\"]\n[[vpc.peering]]\nid = \"pcx-1\"\npeer = \"b\"\n[[vpc]]\nname = \"b\"\ncidrs = [\"10.1.0.0/16\"]\n";
    assert_eq!(states(one)[0].1, PeeringState::PendingAcceptance);
    let s = states(&one.replace("peer = \"b\"", "peer = \"a\""));
    assert_eq!(
        (s[0].1, s[0].2.as_deref()),
        (PeeringState::Failed, Some("a VPC cannot peer with itself"))
    );
    let s = states(&one.replace("peer = \"b\"", "peer = \"zz\""));
    assert_eq!(
        (s[0].1, s[0].2.as_deref()),
        (PeeringState::Failed, Some("peer VPC \"zz\" does not exist"))
    );
    let s = states(&format!(
        "{one}[[vpc.peering]]\nid = \"pcx-1\"\npeer = \"a\"\nreject = true\n"
    ));
    assert_eq!(s[0].1, PeeringState::Rejected);
}

#[test]
fn state_overlap_names_both_cidrs() {
    let s = states(&AB.replace("10.1.0.0/16", "10.0.128.0/17"));
    assert_eq!(s[0].1, PeeringState::Failed);
    assert_eq!(
        s[0].2.as_deref(),
        Some("CIDR 10.0.0.0/16 of VPC \"a\" overlaps CIDR 10.0.128.0/17 of VPC \"b\"")
    );
    let s = states(&AB.replace("10.1.0.0/16", "10.0.0.0/8"));
    assert!(s[0].2.as_deref().unwrap().contains("10.0.0.0/8"));
    let s = states(&AB.replace(
        "cidrs = [\"10.1.0.0/16\"]",
        "cidrs = [\"10.1.0.0/16\", \"2001:db8:a:8000::/49\"]",
    ));
    assert!(
        s[0].2.as_deref().unwrap().contains("2001:db8:a::/48"),
        "{s:?}"
    );
}

#[test]
fn state_duplicate_pair() {
    let dup = AB.to_string().replace("  [[vpc.peering]]\n  id = \"pcx-ab\"\n  peer = \"b\"\n", "  [[vpc.peering]]\n  id = \"pcx-ab\"\n  peer = \"b\"\n  [[vpc.peering]]\n  id = \"pcx-aa\"\n  peer = \"b\"\n")
        .replace("  id = \"pcx-ab\"\n  peer = \"a\"\n", "  id = \"pcx-ab\"\n  peer = \"a\"\n  [[vpc.peering]]\n  id = \"pcx-aa\"\n  peer = \"a\"\n");
    let s = states(&dup);
    assert_eq!(s[0], ("pcx-aa".into(), PeeringState::Active, None));
    assert_eq!(s[1].1, PeeringState::Failed);
    assert!(s[1]
        .2
        .as_deref()
        .unwrap()
        .contains("already have peering pcx-aa"));
    // With history, the one seen later loses even if its id is smaller.
    let cfg = parse(&dup).unwrap();
    let t0 = SystemTime::UNIX_EPOCH;
    let seen = |id: &str| {
        Some(if id == "pcx-ab" {
            t0
        } else {
            t0 + Duration::from_secs(5)
        })
    };
    let s = evaluate_peerings(&cfg, &seen);
    assert_eq!(
        (s[0].id.as_str(), s[0].state),
        ("pcx-aa", PeeringState::Failed)
    );
    assert_eq!(s[1].state, PeeringState::Active);
}

#[test]
fn state_quotas() {
    let mut t = String::from("[daemon]\nmax_active_peerings_per_vpc = 1\nmax_pending_peerings_per_vpc = 1\n[[vpc]]\nname = \"hub\"\ncidrs = [\"10.0.0.0/16\"]\n");
    for i in 1..=2 {
        t += &format!("[[vpc.peering]]\nid = \"pcx-{i}\"\npeer = \"s{i}\"\n");
    }
    for i in 3..=4 {
        t += &format!("[[vpc.peering]]\nid = \"pcx-{i}\"\npeer = \"s{i}\"\n");
    }
    for i in 1..=4 {
        t += &format!("[[vpc]]\nname = \"s{i}\"\ncidrs = [\"10.{i}.0.0/16\"]\n");
        if i <= 2 {
            t += &format!("[[vpc.peering]]\nid = \"pcx-{i}\"\npeer = \"hub\"\n");
        }
    }
    let s = states(&t);
    assert_eq!(s[0].1, PeeringState::Active);
    assert_eq!(
        (s[1].1, s[1].2.as_deref()),
        (
            PeeringState::Failed,
            Some("VPC \"hub\" exceeds max_active_peerings_per_vpc = 1")
        )
    );
    assert_eq!(s[2].1, PeeringState::PendingAcceptance);
    assert_eq!(
        (s[3].1, s[3].2.as_deref()),
        (
            PeeringState::Failed,
            Some("VPC \"hub\" exceeds max_pending_peerings_per_vpc = 1")
        )
    );
}

#[test]
fn durations() {
    use super::parse::parse_duration;
    assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
    assert_eq!(parse_duration("2h30m"), Some(Duration::from_secs(9000)));
    assert_eq!(parse_duration("h"), None);
    assert_eq!(parse_duration("10"), None);
    assert_eq!(parse_duration("5w"), None);
    let e = err("[daemon]\npending_expiry = \"soon\"\n");
    assert!(e.contains(":2:18") && e.contains("not a duration"), "{e}");
}
