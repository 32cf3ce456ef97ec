//! A fleet on one machine (SPEC §7): an underlay network namespace with a bridge and an etcd,
//! and hosts that are network namespaces joined to it, each running its own `peerd run`
//! (through `nsenter --net`, so that bpffs under /sys stays the test's) with its own prefix,
//! pins, state and socket. Everything is removed on drop, pass or fail: daemons and their
//! VPC namespaces first (each host's [`Env`]), then host namespaces, etcd, the underlay.
#![allow(dead_code, reason = "each test binary uses a different subset")]
use std::{
    net::IpAddr,
    path::PathBuf,
    process::{Command, Output},
};

use super::{
    env::{sh, Env},
    etcd::{Etcd, Netns},
};

pub struct Fleet {
    /// One per host, `h1`, `h2`, ...: the host's daemon, VPC namespaces and files.
    pub hosts: Vec<Env>,
    host_ns: Vec<Netns>,
    pub etcd: Etcd,
    underlay: Netns,
    /// The hosts use their IPv6 underlay addresses (else IPv4).
    pub v6: bool,
    dir: PathBuf,
}

/// Underlay addresses: host `i` (1-based) and the underlay's own (etcd).
pub fn underlay_v4(i: usize) -> String {
    format!("10.250.0.{i}")
}
pub fn underlay_v6(i: usize) -> String {
    format!("fd00:250::{i:x}")
}
const ETCD_V4: &str = "10.250.0.254";

impl Fleet {
    /// A fleet of `placements.len()` hosts; host `i` places the VPCs `placements[i]`.
    /// `extra` goes into every host's `[cluster]` (e.g. `lease_ttl = "3s"`).
    pub fn new(placements: &[&[&str]], v6: bool, extra: &str) -> Fleet {
        Fleet::with_daemon(placements, v6, extra, "")
    }

    /// Like `new`; `daemon` goes into every host's `[daemon]`, with `{DIR}` replaced by the
    /// host's own directory.
    pub fn with_daemon(placements: &[&[&str]], v6: bool, extra: &str, daemon: &str) -> Fleet {
        super::can_run();
        let underlay = Netns::new("ul");
        let ul = underlay.0.clone();
        sh(&["ip", "-n", &ul, "link", "add", "br0", "type", "bridge"]);
        sh(&[
            "ip",
            "-n",
            &ul,
            "addr",
            "add",
            &format!("{ETCD_V4}/24"),
            "dev",
            "br0",
        ]);
        sh(&[
            "ip",
            "-n",
            &ul,
            "addr",
            "add",
            "fd00:250::fe/64",
            "dev",
            "br0",
            "nodad",
        ]);
        sh(&["ip", "-n", &ul, "link", "set", "br0", "up"]);
        let etcd = Etcd::start_in(Some(&ul), ETCD_V4.parse().unwrap());
        let dir = std::env::temp_dir().join(super::unique("fleet"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut fleet = Fleet {
            hosts: Vec::new(),
            host_ns: Vec::new(),
            etcd,
            underlay,
            v6,
            dir,
        };
        for (i, vpcs) in placements.iter().enumerate() {
            let n = i + 1;
            let hns = Netns::new(&format!("h{n}"));
            let port = format!("p{n}");
            sh(&[
                "ip", "-n", &ul, "link", "add", &port, "type", "veth", "peer", "name", "ul0",
                "netns", &hns.0,
            ]);
            sh(&["ip", "-n", &ul, "link", "set", &port, "master", "br0", "up"]);
            sh(&[
                "ip",
                "-n",
                &hns.0,
                "addr",
                "add",
                &format!("{}/24", underlay_v4(n)),
                "dev",
                "ul0",
            ]);
            sh(&[
                "ip",
                "-n",
                &hns.0,
                "addr",
                "add",
                &format!("{}/64", underlay_v6(n)),
                "dev",
                "ul0",
                "nodad",
            ]);
            sh(&["ip", "-n", &hns.0, "link", "set", "ul0", "up"]);
            let mut env = Env::new();
            env.host_netns = Some(hns.0.clone());
            let underlay_addr = if v6 { underlay_v6(n) } else { underlay_v4(n) };
            let list: Vec<String> = vpcs.iter().map(|v| format!("\"{v}\"")).collect();
            let daemon = daemon.replace("{DIR}", &env.dir.display().to_string());
            env.write_config_with(
                &format!("datapath = \"tc\"\n{daemon}"),
                &format!(
                    "[cluster]\netcd = [\"{}\"]\nhost = \"h{n}\"\nunderlay = \"{underlay_addr}\"\nvpcs = [{}]\n{extra}\n",
                    fleet.etcd.url,
                    list.join(", ")
                ),
            );
            fleet.host_ns.push(hns);
            fleet.hosts.push(env);
        }
        fleet
    }

    /// Host `n` (1-based).
    pub fn host(&self, n: usize) -> &Env {
        &self.hosts[n - 1]
    }

    pub fn host_mut(&mut self, n: usize) -> &mut Env {
        &mut self.hosts[n - 1]
    }

    /// Starts every host's daemon.
    pub fn start_all(&mut self) {
        for h in &mut self.hosts {
            h.start();
        }
    }

    /// `peerd` with `args`, run from the underlay (where etcd is reachable).
    pub fn peerd(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.underlay.0))
            .arg(super::env::PEERD)
            .args(args)
            .output()
            .expect("run peerd")
    }

    /// `peerd apply` of `toml` (written to a file named `name`); panics with the output when
    /// it fails.
    pub fn apply(&self, name: &str, toml: &str) -> String {
        let out = self.try_apply(name, toml);
        assert!(
            out.status.success(),
            "peerd apply failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn try_apply(&self, name: &str, toml: &str) -> Output {
        let file = self.dir.join(name);
        std::fs::write(&file, toml).unwrap();
        self.peerd(&["apply", "--etcd", &self.etcd.url, file.to_str().unwrap()])
    }

    /// `peerd apply --delete VPC`.
    pub fn delete(&self, vpc: &str) -> Output {
        self.peerd(&["apply", "--etcd", &self.etcd.url, "--delete", vpc])
    }

    /// The underlay's network namespace (its bridge is `br0`).
    pub fn underlay_netns(&self) -> String {
        self.underlay.0.clone()
    }

    /// The underlay address of host `n`, in the fleet's family.
    pub fn underlay(&self, n: usize) -> IpAddr {
        if self.v6 {
            underlay_v6(n).parse().unwrap()
        } else {
            underlay_v4(n).parse().unwrap()
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Daemons and VPC namespaces go first, while their host namespaces still exist.
        self.hosts.clear();
        self.host_ns.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
