//! Shared test harness: unique names, cleanup guards, root checks.
#![allow(dead_code, reason = "each test binary uses a different subset")]
pub mod packet;

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test run: `pdt` (the marker `cargo xtask test` checks for leftovers),
/// the pid and a counter, then `tag`. Short enough for namespace prefixes.
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("pdt{}{}{tag}", std::process::id() % 100_000, n)
}

/// Checks that this test can run here, and fails it (never a silent pass) when it cannot.
/// Tests that need root are `#[ignore = "needs root"]`: `cargo xtask test` runs them.
pub fn can_run() -> bool {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root (namespaces, eBPF); run it with `cargo xtask test`"
    );
    assert!(
        !peerd::datapath::OBJECT.is_empty(),
        "peerd was built with AYA_BUILD_SKIP: no eBPF object to test"
    );
    true
}

/// A bpffs directory removed (with all its pins) on drop.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new() -> Self {
        peerd::datapath::ensure_bpffs().expect("bpffs");
        Self(Path::new("/sys/fs/bpf").join(unique("pins")))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `systemd-analyze verify` on a unit's text (its binary paths already the binary under
/// test); panics with what systemd says. Type=notify-reload is systemd 253's: an older
/// systemd-analyze checks the rest of the unit with Type=notify.
pub fn verify_unit(text: &str) {
    let version = env::sh(&["systemctl", "--version"]);
    let major: u32 = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("systemd version in {version:?}"));
    let text = if major < 253 {
        eprintln!("systemd {major} < 253: verifying the unit with Type=notify");
        text.replace("Type=notify-reload", "Type=notify")
    } else {
        text.to_owned()
    };
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join(format!("{}.service", unique("unit")));
    std::fs::write(&unit, text).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

pub mod env;
pub mod etcd;
pub mod fleet;
pub mod stream;
pub mod tap;

/// Every record of the flow log files (`flows.jsonl` and its rotations) in `dir`.
pub fn flow_records(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with("flows.jsonl") {
            for l in std::fs::read_to_string(e.path()).unwrap().lines() {
                out.push(serde_json::from_str(l).expect("a flow log line is JSON"));
            }
        }
    }
    out
}
