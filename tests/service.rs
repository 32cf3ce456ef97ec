//! peerd as a systemd service (contrib/peerd.service): the unit is valid, the daemon works with
//! only the capabilities the unit gives it, and it talks to systemd's notify socket: READY=1
//! once converged, WATCHDOG=1 from its main loop, STOPPING=1 on the way out.
mod common;

use std::{
    os::unix::net::UnixDatagram,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::env::{sh, Env};

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../contrib/peerd.service");

const AB: &str = r#"
[[vpc]]
name = "a"
cidrs = ["10.81.0.0/16"]
  [[vpc.peering]]
  id = "pcx-ab"
  peer = "b"
[[vpc]]
name = "b"
cidrs = ["10.82.0.0/16"]
  [[vpc.peering]]
  id = "pcx-ab"
  peer = "a"
"#;

fn unit_value(key: &str) -> String {
    let text = std::fs::read_to_string(UNIT).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key}= not in the unit"))
        .to_owned()
}

#[test]
fn the_unit_declares_a_watchdog_limits_and_a_stop_timeout() {
    for key in [
        "WatchdogSec",
        "TimeoutStopSec",
        "LimitNOFILE",
        "CapabilityBoundingSet",
        "SystemCallFilter",
        "RestrictNamespaces",
    ] {
        assert!(!unit_value(key).is_empty(), "{key}");
    }
    assert_eq!(unit_value("Type"), "notify");
    assert_eq!(unit_value("RestrictNamespaces"), "net");
}

#[test]
#[ignore = "needs root"]
fn the_unit_file_is_valid_for_systemd() {
    common::can_run();
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("peerd-test.service");
    let text = std::fs::read_to_string(UNIT)
        .unwrap()
        .replace("/usr/local/sbin/peerd", common::env::PEERD);
    std::fs::write(&unit, text).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

#[test]
#[ignore = "needs root"]
fn the_daemon_runs_with_only_the_capabilities_of_its_unit() {
    common::can_run();
    let caps: Vec<String> = unit_value("CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let bounding = format!("-all,{}", caps.join(","));
    let mut env = Env::new();
    env.write_config(AB);
    env.start_with(
        &["setpriv", "--bounding-set", &bounding, "--inh-caps", "-all"],
        &[],
    );
    let pid = env.pid().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .unwrap()
        .trim()
        .to_owned();
    // NET_ADMIN (12), SYS_ADMIN (21), BPF (39) and nothing else.
    assert_eq!(
        u64::from_str_radix(&bnd, 16).unwrap(),
        (1 << 12) | (1 << 21) | (1 << 39),
        "{bnd}"
    );
    env.add_addr("a", "10.81.0.1");
    env.add_addr("b", "10.82.0.1");
    assert!(env.ping("a", "10.81.0.1", "10.82.0.1", 2));
    // A reload that adds a VPC (namespace, link, program) works with the same set.
    env.write_config(&format!(
        "{AB}[[vpc]]\nname = \"c\"\ncidrs = [\"10.83.0.0/16\"]\n"
    ));
    env.wait_status("VPC c ready", Duration::from_secs(30), |st| {
        st["vpcs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "c" && v["ready"] == true)
    });
    assert!(st_ok(&env));
}

fn st_ok(env: &Env) -> bool {
    let st = env.status();
    st["errors"].as_array().is_some_and(|e| e.is_empty())
}

#[test]
#[ignore = "needs root"]
fn the_daemon_notifies_ready_pings_the_watchdog_and_says_it_is_stopping() {
    common::can_run();
    let mut env = Env::new();
    let sock_path = env.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    env.write_config(AB);
    // A 600 ms watchdog: pings every 300 ms.
    env.start_with(
        &[],
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "600000"),
        ],
    );
    let mut seen: Vec<String> = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 512];
    while start.elapsed() < Duration::from_secs(10)
        && seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() < 3
    {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    assert!(seen.iter().any(|m| m.contains("READY=1")), "{seen:?}");
    assert!(
        seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3,
        "{seen:?}"
    );
    env.stop();
    let mut rest = Vec::new();
    while let Ok(n) = sock.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(rest.iter().any(|m| m.contains("STOPPING=1")), "{rest:?}");
    assert!(
        !Path::new(&env.socket).exists(),
        "the control socket is removed"
    );
    let _ = sh(&["true"]);
}
