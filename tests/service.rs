//! peerd as a systemd service (contrib/peerd.service): the unit is valid, the daemon works with
//! only the capabilities the unit gives it, and it talks to systemd's notify socket
//! (`Type=notify-reload`): READY=1 once converged, a STATUS= line, RELOADING=1 with
//! MONOTONIC_USEC= then READY=1 around a reload, WATCHDOG=1 from its main loop, STOPPING=1 on
//! the way out.
mod common;

use std::{
    os::unix::net::UnixDatagram,
    path::Path,
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
    assert_eq!(unit_value("Type"), "notify-reload");
    // notify-reload reloads with ReloadSignal= (SIGHUP); an ExecReload= would replace it.
    assert!(!std::fs::read_to_string(UNIT)
        .unwrap()
        .lines()
        .any(|l| l.starts_with("ExecReload=")));
    assert_eq!(unit_value("RestrictNamespaces"), "net");
}

#[test]
#[ignore = "needs root"]
fn the_unit_file_is_valid_for_systemd() {
    common::can_run();
    common::verify_unit(
        &std::fs::read_to_string(UNIT)
            .unwrap()
            .replace("/usr/local/sbin/peerd", common::env::PEERD),
    );
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

/// The notify socket a test gives the daemon: what it sent, read as it arrives.
struct Notifications {
    sock: UnixDatagram,
    seen: Vec<String>,
}

impl Notifications {
    fn bind(path: &Path) -> Self {
        let sock = UnixDatagram::bind(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Self {
            sock,
            seen: Vec::new(),
        }
    }

    /// Reads until a message at index `from` or later satisfies `f` (bounded); its index.
    fn until(&mut self, from: usize, what: &str, f: impl Fn(&str) -> bool) -> usize {
        let limit = Duration::from_secs(30);
        let start = Instant::now();
        let mut buf = [0u8; 2048];
        loop {
            if let Some(i) = self.seen.iter().skip(from).position(|m| f(m)) {
                return from + i;
            }
            assert!(
                start.elapsed() < limit,
                "no notification {what} in {limit:?}: {:?}",
                self.seen
            );
            if let Ok(n) = self.sock.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]);
                self.seen.push(m.trim_end().to_owned());
            }
        }
    }
}

/// A message is (or holds the line) `line`.
fn has(m: &str, line: &str) -> bool {
    m.lines().any(|l| l == line)
}

#[test]
#[ignore = "needs root"]
fn the_daemon_notifies_ready_status_reloads_pings_the_watchdog_and_says_it_is_stopping() {
    common::can_run();
    let mut env = Env::new();
    let sock_path = env.dir.join("notify.sock");
    let mut n = Notifications::bind(&sock_path);
    env.write_config(AB);
    // A 600 ms watchdog: pings every 300 ms.
    env.start_with(
        &[],
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "600000"),
        ],
    );
    n.until(0, "READY=1", |m| has(m, "READY=1"));
    n.until(0, "STATUS= of the converged daemon", |m| {
        m.starts_with("STATUS=2 of 2 VPCs ready, 1 of 1 peerings active, last reload ")
            && m.ends_with(" UTC ok")
    });
    let mut next = 0;
    for _ in 0..3 {
        next = n.until(next, "WATCHDOG=1", |m| has(m, "WATCHDOG=1")) + 1;
    }

    // SIGHUP (systemctl reload): RELOADING=1 with the monotonic time, then READY=1.
    let from = n.seen.len();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(env.pid().unwrap() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let reloading = n.until(from, "RELOADING=1", |m| has(m, "RELOADING=1"));
    let usec: u64 = n.seen[reloading]
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC with RELOADING=1: {:?}", n.seen))
        .parse()
        .unwrap();
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    let now_usec = now.tv_sec() as u64 * 1_000_000 + now.tv_nsec() as u64 / 1000;
    assert!(usec > 0 && usec <= now_usec, "{usec} vs now {now_usec}");
    n.until(reloading + 1, "READY=1 after the reload", |m| {
        has(m, "READY=1")
    });

    // A rejected configuration (the file watcher reloads it): the STATUS= line says so.
    let from = n.seen.len();
    env.write_config(&AB.replace("10.82.0.0/16", "10.82.0.0/33"));
    n.until(from, "STATUS= of a failed reload", |m| {
        m.starts_with("STATUS=2 of 2 VPCs ready") && m.contains(" UTC failed: ")
    });

    let from = n.seen.len();
    env.stop();
    n.until(from, "STOPPING=1", |m| has(m, "STOPPING=1"));
    assert!(
        !Path::new(&env.socket).exists(),
        "the control socket is removed"
    );
}

#[test]
#[ignore = "needs root"]
fn status_reports_the_use_and_size_of_every_datapath_map() {
    common::can_run();
    let mut env = Env::new();
    env.write_config(AB);
    env.start();
    let st = env.wait_status("both VPCs ready", Duration::from_secs(30), |st| {
        st["vpcs"]
            .as_array()
            .is_some_and(|v| v.len() == 2 && v.iter().all(|v| v["ready"] == true))
    });
    let maps: Vec<(String, u64, u64)> = st["maps"]
        .as_array()
        .expect("maps in status")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_owned(),
                m["entries"].as_u64().unwrap(),
                m["capacity"].as_u64().unwrap(),
            )
        })
        .collect();
    let get = |name: &str| {
        maps.iter()
            .find(|m| m.0 == name)
            .unwrap_or_else(|| panic!("{name} not in {maps:?}"))
    };
    use peerd_common::{maps as m, MAX_PEERINGS, MAX_PREFIXES, MAX_VPCS};
    // Two VPCs (a link each), one peering, one IPv4 CIDR each.
    assert_eq!(get(m::VPCS).1..=get(m::VPCS).2, 2..=u64::from(MAX_VPCS));
    assert_eq!(get(m::IFACES).1, 2, "{maps:?}");
    assert_eq!(
        get(m::PEERINGS).1..=get(m::PEERINGS).2,
        1..=u64::from(MAX_PEERINGS)
    );
    assert_eq!(
        get(m::SRC_V4).1..=get(m::SRC_V4).2,
        2..=u64::from(MAX_PREFIXES)
    );
    assert_eq!(get(m::SRC_V6).1, 0, "{maps:?}");
    // Each entry in the pinned map is there: bpftool counts the same as status.
    let dump = sh(&[
        "bpftool",
        "-j",
        "map",
        "dump",
        "pinned",
        env.pin_dir.join("maps").join(m::IFACES).to_str().unwrap(),
    ]);
    let dumped: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dumped.as_array().unwrap().len() as u64, get(m::IFACES).1);
}
