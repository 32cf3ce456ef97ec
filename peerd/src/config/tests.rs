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
    for (s, secs) in [
        ("168h", 168 * 3600),
        ("30m", 1800),
        ("90s", 90),
        ("2h30m", 9000),
        ("1d12h", 36 * 3600),
        ("7d", 7 * 86400),
        ("2h 30m", 9000),
        (" 1w ", 7 * 86400),
    ] {
        assert_eq!(parse_duration(s), Some(Duration::from_secs(secs)), "{s}");
    }
    for bad in [
        "h",
        "10",
        "",
        "5x",
        "-1s",
        "1.5.5h",
        "99999999999999999999999y",
    ] {
        assert_eq!(parse_duration(bad), None, "{bad}");
    }
    let e = err("[daemon]\npending_expiry = \"soon\"\n");
    assert!(e.contains(":2:18") && e.contains("not a duration"), "{e}");
    let e = err("[daemon]\npending_expiry = \"3651d\"\n");
    assert!(e.contains("at most 3650d"), "{e}");
    let e = err("[daemon]\nflow_log_interval = \"500ms\"\n");
    assert!(e.contains("from 1s to 1d"), "{e}");
    let cfg = parse("[daemon]\npending_expiry = \"1d12h\"\nflow_log_interval = \"2m\"\n").unwrap();
    assert_eq!(cfg.daemon.pending_expiry, Duration::from_secs(36 * 3600));
    assert_eq!(cfg.daemon.flow_log_interval, Duration::from_secs(120));
}

fn vpc_with(cidrs: &str) -> String {
    format!("[[vpc]]\nname = \"a\"\ncidrs = [{cidrs}]\n")
}

#[test]
fn special_purpose_cidrs_are_refused() {
    for (cidr, range, why) in [
        ("0.0.0.0/0", "0.0.0.0/8", "default route"),
        ("0.0.0.0/8", "0.0.0.0/8", "this network"),
        ("0.0.0.0/1", "0.0.0.0/8", "this network"),
        ("127.0.0.0/24", "127.0.0.0/8", "loopback"),
        (
            "169.254.0.0/24",
            "169.254.0.0/16",
            "peerd's gateway 169.254.1.1",
        ),
        ("128.0.0.0/1", "169.254.0.0/16", "link-local"),
        ("224.0.0.0/24", "224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "240.0.0.0/4", "broadcast"),
        ("::/0", "::/128", "unspecified"),
        ("::/96", "::/128", "unspecified"),
        ("::1/128", "::1/128", "loopback"),
        ("::ffff:10.0.0.0/104", "::ffff:0.0.0.0/96", "IPv4-mapped"),
        ("fe80::/64", "fe80::/10", "peerd's gateway fe80::1"),
        ("ff02::/16", "ff00::/8", "multicast"),
    ] {
        let e = err(&vpc_with(&format!("\"10.0.0.0/16\", \"{cidr}\"")));
        assert!(
            e.contains(":3:25")
                && e.contains(&format!("CIDR {cidr} of VPC \"a\" overlaps {range} ("))
                && e.contains(why),
            "{cidr}: {e}"
        );
    }
    // Neighbours of the special ranges are fine.
    for ok in [
        "1.0.0.0/8",
        "126.0.0.0/8",
        "128.0.0.0/3",
        "169.253.0.0/16",
        "223.0.0.0/8",
        "2001:db8::/32",
        "fd00::/8",
        "fec0::/10",
        "::2/127",
    ] {
        assert!(parse(&vpc_with(&format!("\"{ok}\""))).is_ok(), "{ok}");
    }
    // Subnets too (one inside a special VPC CIDR gets its own message).
    let e = err("[[vpc]]\nname = \"a\"\ncidrs = [\"169.254.0.0/16\"]\n[[vpc.route_table]]\nname = \"x\"\n[[vpc.subnet]]\ncidr = \"169.254.1.0/24\"\nroute_table = \"x\"\n");
    assert!(
        e.contains(":7:8: subnet 169.254.1.0/24 of VPC \"a\" overlaps 169.254.0.0/16"),
        "{e}"
    );
    // Every listed range parses (a typo there would silently drop a check).
    assert_eq!(super::parse::special_ranges().count(), 10);
}

#[test]
fn default_and_special_route_destinations_are_refused() {
    let base = "[[vpc]]\nname = \"a\"\ncidrs = [\"10.0.0.0/16\"]\n[[vpc.peering]]\nid = \"pcx-1\"\npeer = \"b\"\n[[vpc.route_table]]\nname = \"main\"\nroutes = [{ destination = \"DST\", peering = \"pcx-1\" }]\n";
    for (dst, what) in [
        ("0.0.0.0/0", "default route"),
        ("::/0", "default route"),
        ("169.254.1.1/32", "lies in 169.254.0.0/16 (link-local"),
        ("fe80::/64", "lies in fe80::/10"),
        ("127.0.0.0/8", "lies in 127.0.0.0/8 (loopback)"),
        ("239.1.0.0/16", "multicast"),
    ] {
        let e = err(&base.replace("DST", dst));
        assert!(
            e.contains(":9:27")
                && e.contains(&format!("route destination {dst}"))
                && e.contains(what),
            "{dst}: {e}"
        );
    }
    // A broad route that merely contains special ranges is allowed.
    assert!(parse(&base.replace("DST", "128.0.0.0/1")).is_ok());
}

#[test]
fn daemon_paths_and_socket_group() {
    let cfg = parse("[daemon]\nstate_dir = \"/var/lib/x\"\npin_dir = \"/sys/fs/bpf/x\"\nsocket = \"/run/x.sock\"\nsocket_group = \"peerd-ops\"\n").unwrap();
    assert_eq!(cfg.daemon.socket_group.as_deref(), Some("peerd-ops"));
    assert_eq!(cfg.daemon.pin_dir, Path::new("/sys/fs/bpf/x"));
    assert_eq!(DaemonConfig::default().socket_group, None);
    let long = format!("/run/{}.sock", "s".repeat(100));
    for (line, what) in [
        ("pin_dir = \"/sys/fs/bpf\"", "bpffs root"),
        ("pin_dir = \"/sys/fs/bpf/\"", "bpffs root"),
        ("pin_dir = \"/\"", "must not be /"),
        ("pin_dir = \"peerd\"", "absolute path"),
        ("pin_dir = \"/sys/fs/bpf/peerd/..\"", "\"..\""),
        ("state_dir = \"var/lib/peerd\"", "absolute path"),
        ("state_dir = \"\"", "absolute path"),
        ("state_dir = \"/\"", "must not be /"),
        ("socket = \"peerd.sock\"", "absolute path"),
        (&format!("socket = \"{long}\""), "shorter than 108 bytes"),
        ("socket_group = \"-x\"", "not a group name"),
        ("socket_group = \"1000\"", "not a group name"),
        ("socket_group = \"a b\"", "not a group name"),
        ("socket_group = \"\"", "not a group name"),
        ("max_prefixes_per_vpc = 0", "at least 1"),
    ] {
        let e = err(&format!("[daemon]\n{line}\n"));
        assert!(
            e.contains("peerd.toml:2:") && e.contains(what),
            "{line}: {e}"
        );
    }
    // 107 bytes is the longest socket path that fits.
    let fits = format!("/run/{}", "s".repeat(102));
    assert_eq!(fits.len(), 107);
    assert!(parse(&format!("[daemon]\nsocket = \"{fits}\"\n")).is_ok());
}

#[test]
fn per_vpc_quotas() {
    let d = "[daemon]\nmax_prefixes_per_vpc = 2\nmax_routes_per_vpc = 1\nmax_route_tables_per_vpc = 1\nmax_peerings_per_vpc = 1\n";
    let cfg = parse(d).unwrap();
    assert_eq!(
        (
            cfg.daemon.max_prefixes_per_vpc,
            cfg.daemon.max_routes_per_vpc,
            cfg.daemon.max_route_tables_per_vpc,
            cfg.daemon.max_peerings_per_vpc
        ),
        (2, 1, 1, 1)
    );
    let def = DaemonConfig::default();
    assert_eq!(
        (
            def.max_prefixes_per_vpc,
            def.max_routes_per_vpc,
            def.max_route_tables_per_vpc,
            def.max_peerings_per_vpc
        ),
        (64, 1000, 32, 100)
    );
    let vpc = "[[vpc]]\nname = \"a\"\ncidrs = [\"10.0.0.0/16\"]\n";
    assert!(parse(&format!("{d}{vpc}")).is_ok());
    // Line 6 is the VPC's [[vpc]] header.
    let e = err(&format!(
        "{d}{}",
        vpc.replace(
            "\"10.0.0.0/16\"",
            "\"10.0.0.0/16\", \"10.1.0.0/16\", \"10.2.0.0/16\""
        )
    ));
    assert!(
        e.contains(":6:1: VPC \"a\" has 3 source prefixes (CIDRs and subnets), more than max_prefixes_per_vpc = 2"),
        "{e}"
    );
    let e = err(&format!("{d}{vpc}[[vpc.peering]]\nid = \"pcx-1\"\npeer = \"b\"\n[[vpc.peering]]\nid = \"pcx-2\"\npeer = \"c\"\n"));
    assert!(
        e.contains(":6:1: VPC \"a\" has 2 peerings, more than max_peerings_per_vpc = 1"),
        "{e}"
    );
    let e = err(&format!("{d}{vpc}[[vpc.peering]]\nid = \"pcx-1\"\npeer = \"b\"\n[[vpc.route_table]]\nname = \"main\"\nroutes = [{{ destination = \"10.1.0.0/16\", peering = \"pcx-1\" }}, {{ destination = \"10.2.0.0/16\", peering = \"pcx-1\" }}]\n[[vpc.route_table]]\nname = \"x\"\n"));
    assert!(
        e.contains(":6:1: VPC \"a\" has 2 routes, more than max_routes_per_vpc = 1")
            && e.contains(
                ":6:1: VPC \"a\" has 2 route tables, more than max_route_tables_per_vpc = 1"
            ),
        "{e}"
    );
    // Subnets count as source prefixes.
    let e = err(&format!("{d}{vpc}[[vpc.route_table]]\nname = \"x\"\n[[vpc.subnet]]\ncidr = \"10.0.0.0/24\"\nroute_table = \"x\"\n[[vpc.subnet]]\ncidr = \"10.0.1.0/24\"\nroute_table = \"x\"\n"));
    assert!(e.contains("has 3 source prefixes"), "{e}");
}

mod capacity {
    use super::super::cross::{cross_check, Capacity};
    use super::*;

    const SMALL: Capacity = Capacity {
        vpcs: 3,
        peerings: 2,
        tables: 4,
        prefixes: 4,
    };

    /// Checks `text`'s VPCs (one file) against `cap`; the messages.
    fn check(text: &str, cap: &Capacity) -> Vec<String> {
        let cfg = parse(text).unwrap();
        let entries: Vec<_> = cfg.vpcs.iter().map(|v| (v, 0)).collect();
        cross_check(&entries, cap)
            .into_iter()
            .map(|(d, _)| d.to_string())
            .collect()
    }

    fn vpc(name: &str, cidrs: &str, extra: &str) -> String {
        format!("[[vpc]]\nname = \"{name}\"\ncidrs = [{cidrs}]\n{extra}")
    }

    fn peer(id: &str, peer: &str) -> String {
        format!("[[vpc.peering]]\nid = \"{id}\"\npeer = \"{peer}\"\n")
    }

    #[test]
    fn vpcs_tables_and_ids() {
        let three: String = ["a", "b", "c"]
            .iter()
            .map(|n| vpc(n, "\"10.0.0.0/16\"", ""))
            .collect();
        assert!(check(&three, &SMALL).is_empty());
        let four = format!("{three}{}", vpc("d", "\"10.0.0.0/16\"", ""));
        let e = check(&four, &SMALL);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains(
                ":10:1: VPC \"d\" does not fit in the datapath: at most 3 VPCs (map PEERD_VPCS)"
            ),
            "{e:?}"
        );
        // Tables: automatic VPCs have one (main), explicit ones one per table.
        let t = format!(
            "{}{}",
            vpc("a", "\"10.0.0.0/16\"", ""),
            vpc(
                "b",
                "\"10.1.0.0/16\"",
                "[[vpc.route_table]]\nname = \"x\"\n[[vpc.route_table]]\nname = \"y\"\n[[vpc.route_table]]\nname = \"z\"\n[[vpc.route_table]]\nname = \"w\"\n"
            )
        );
        let e = check(&t, &SMALL);
        assert!(
            e.len() == 1
                && e[0].contains("VPC \"b\" does not fit")
                && e[0].contains("at most 4 route tables"),
            "{e:?}"
        );
        // Every declared id counts, whatever its state (these are all pending or failed).
        let ids = vpc(
            "a",
            "\"10.0.0.0/16\"",
            &[peer("pcx-1", "x"), peer("pcx-2", "y"), peer("pcx-3", "a")].concat(),
        );
        let e = check(&ids, &SMALL);
        assert!(
            e.len() == 1 && e[0].contains("at most 2 peering ids (map PEERD_PEERINGS)"),
            "{e:?}"
        );
        // Two ends of one id are one id.
        let pair = format!(
            "{}{}",
            vpc(
                "a",
                "\"10.0.0.0/16\"",
                &[peer("pcx-1", "b"), peer("pcx-2", "b")].concat()
            ),
            vpc(
                "b",
                "\"10.1.0.0/16\"",
                &[peer("pcx-1", "a"), peer("pcx-2", "a")].concat()
            )
        );
        assert_eq!(check(&pair, &SMALL), Vec::<String>::new());
    }

    #[test]
    fn source_prefixes_per_family() {
        let v4 = "\"10.0.0.0/16\", \"10.1.0.0/16\", \"10.2.0.0/16\"";
        let v6 = "\"fd00:1::/48\", \"fd00:2::/48\", \"fd00:3::/48\"";
        // 3 + 3 of each family in two VPCs: over 4 in both tries, blamed on the second VPC.
        let t = format!(
            "{}{}",
            vpc("a", &format!("{v4}, {v6}"), ""),
            vpc("b", &format!("{v4}, {v6}"), "")
        );
        let e = check(&t, &SMALL);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].contains("VPC \"b\"")
                && e[0].contains(
                    "4 IPv4 source prefixes (CIDRs and subnets) in all VPCs (map PEERD_SRC_V4)"
                ),
            "{e:?}"
        );
        assert!(
            e[1].contains("VPC \"b\"") && e[1].contains("(map PEERD_SRC_V6)"),
            "{e:?}"
        );
        // Families are separate: 3 IPv4 + 3 IPv6 in one VPC fits.
        assert!(check(&vpc("a", &format!("{v4}, {v6}"), ""), &SMALL).is_empty());
        // Subnets count.
        let t = vpc(
            "a",
            v4,
            "[[vpc.route_table]]\nname = \"x\"\n[[vpc.subnet]]\ncidr = \"10.0.0.0/24\"\nroute_table = \"x\"\n[[vpc.subnet]]\ncidr = \"10.0.1.0/24\"\nroute_table = \"x\"\n",
        );
        let e = check(&t, &SMALL);
        assert!(e.len() == 1 && e[0].contains("PEERD_SRC_V4"), "{e:?}");
    }

    #[test]
    fn routes_count_automatic_peers_whatever_their_state() {
        let cap = Capacity {
            prefixes: 3,
            ..SMALL
        };
        // Two automatic VPCs (IPv6 only) declare b, which never answers (pending): each
        // would route to b's two IPv4 CIDRs, 4 routes > 3. A pair is counted when the later
        // of its two VPCs comes.
        let hubs = [
            vpc("hub1", "\"fd00:1::/48\"", &peer("pcx-1", "b")),
            vpc("hub2", "\"fd00:2::/48\"", &peer("pcx-2", "b")),
        ]
        .concat();
        let b = vpc("b", "\"10.1.0.0/16\", \"10.11.0.0/16\"", "");
        let e = check(&format!("{hubs}{b}"), &cap);
        assert!(
            e.len() == 1
                && e[0].contains("VPC \"b\" does not fit")
                && e[0].contains("at most 3 IPv4 routes in all route tables (map PEERD_ROUTES_V4; automatic routing counts every CIDR of every declared peer)"),
            "{e:?}"
        );
        let e = check(&format!("{b}{hubs}"), &cap);
        assert!(
            e.len() == 1 && e[0].contains("VPC \"hub2\" does not fit"),
            "{e:?}"
        );
        // An explicit VPC does not count its peers' CIDRs, only its routes.
        let explicit = hubs.replace(
            "peer = \"b\"\n",
            "peer = \"b\"\n[[vpc.route_table]]\nname = \"x\"\n",
        );
        assert!(check(&format!("{explicit}{b}"), &cap).is_empty());
        // Explicit routes count per family.
        let r = |d: &str| format!("{{ destination = \"{d}\", peering = \"pcx-1\" }}");
        let t = vpc(
            "a",
            "\"10.0.0.0/16\"",
            &format!(
                "{}[[vpc.route_table]]\nname = \"main\"\nroutes = [{}, {}, {}, {}]\n",
                peer("pcx-1", "b"),
                r("10.1.0.0/24"),
                r("10.1.1.0/24"),
                r("10.1.2.0/24"),
                r("fd00::/64"),
            ),
        );
        assert!(check(&t, &cap).is_empty());
        let t = t.replace(&r("fd00::/64"), &r("10.1.3.0/24"));
        let e = check(&t, &cap);
        assert!(e.len() == 1 && e[0].contains("IPv4 routes"), "{e:?}");
    }

    #[test]
    fn the_real_vpc_limit() {
        // 4095 usable VPC slots (slot 0 is reserved); VPCs that are not peered may overlap.
        let n = peerd_common::MAX_VPCS as usize - 1;
        let mut t = String::new();
        for i in 0..n {
            t += &format!("[[vpc]]\nname = \"v{i}\"\ncidrs = [\"10.0.0.0/16\"]\n");
        }
        assert!(parse(&t).is_ok());
        t += "[[vpc]]\nname = \"one-more\"\ncidrs = [\"10.0.0.0/16\"]\n";
        let e = err(&t);
        assert!(
            e.contains("VPC \"one-more\" does not fit in the datapath: at most 4095 VPCs"),
            "{e}"
        );
    }
}

#[test]
fn deep_nesting_does_not_overflow_the_stack() {
    for open in ["[", "{a=", "[{a="] {
        for n in [1_000, 100_000] {
            let text = format!("x = {}", open.repeat(n));
            assert!(parse(&text).is_err());
            let text = format!("[[vpc]]\nname = {}", open.repeat(n));
            assert!(parse(&text).is_err());
        }
    }
    let closed = format!("x = {}1{}", "[".repeat(50_000), "]".repeat(50_000));
    assert!(parse(&closed).is_err());
}
