//! A throwaway etcd for tests: its own data directory and free ports (on loopback, or on an
//! address inside a test network namespace), stopped and restarted on the same data (to test
//! "etcd down"), killed and removed on drop, pass or fail.
//!
//! Tests that use it need the `etcd` and `etcdctl` binaries (Debian's `etcd-server` and
//! `etcd-client`, installed by `cargo xtask setup`) and are `#[ignore = "needs etcd"]`.
#![allow(dead_code, reason = "each test binary uses a different subset")]
use std::{
    fs,
    net::{IpAddr, Ipv4Addr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::unique;

/// How long etcd may take to answer after a start.
const START_LIMIT: Duration = Duration::from_secs(30);

pub struct Etcd {
    /// `http://ADDR:PORT`, for clients.
    pub url: String,
    /// Runs in this network namespace (`ip netns exec`), or in the test's own.
    pub netns: Option<String>,
    pub listen: IpAddr,
    pub client_port: u16,
    pub peer_port: u16,
    /// Holds `data/` (etcd's data directory) and `etcd.log`.
    pub dir: PathBuf,
    child: Option<Child>,
}

/// A port nobody listens on right now at `addr` (in `netns` if given).
fn free_port(netns: Option<&str>, addr: IpAddr) -> u16 {
    let bind = move || {
        TcpListener::bind((addr, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("binding {addr}:0: {e}"))
    };
    match netns {
        Some(ns) => super::env::in_ns(ns, bind),
        None => bind(),
    }
}

fn host(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

impl Etcd {
    /// etcd on 127.0.0.1 in the test's own namespace.
    pub fn start() -> Etcd {
        Self::start_in(None, IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// etcd listening on `listen`, inside `netns` when given. Waits (bounded) until it
    /// answers; a port taken between choosing and binding is retried with new ports.
    pub fn start_in(netns: Option<&str>, listen: IpAddr) -> Etcd {
        let dir = std::env::temp_dir().join(unique("etcd"));
        fs::create_dir_all(&dir).unwrap();
        let mut e = Etcd {
            url: String::new(),
            netns: netns.map(str::to_owned),
            listen,
            client_port: 0,
            peer_port: 0,
            dir,
            child: None,
        };
        let mut last = String::new();
        for _ in 0..3 {
            e.client_port = free_port(netns, listen);
            e.peer_port = free_port(netns, listen);
            if e.client_port == e.peer_port {
                continue;
            }
            e.url = format!("http://{}:{}", host(listen), e.client_port);
            match e.launch() {
                Ok(()) => return e,
                Err(why) => {
                    last = why;
                    e.kill();
                    let _ = fs::remove_dir_all(e.dir.join("data"));
                }
            }
        }
        panic!("etcd did not start: {last}");
    }

    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    /// Starts etcd on this data directory and ports, and waits until it answers.
    fn launch(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "etcd is already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .unwrap();
        let peer = format!("http://{}:{}", host(self.listen), self.peer_port);
        let child = self
            .command("etcd")
            .arg("--name")
            .arg("t")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &self.url])
            .args(["--advertise-client-urls", &self.url])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawning etcd (is etcd-server installed?): {e}"))?;
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!("etcd exited ({st}):\n{}", self.log()));
            }
            if self.answers() {
                return Ok(());
            }
            if start.elapsed() > START_LIMIT {
                return Err(format!(
                    "etcd did not answer within {START_LIMIT:?}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether etcd answers a read now.
    pub fn answers(&self) -> bool {
        // A closed port fails fast; only then is etcdctl (slower) asked.
        if self.netns.is_none()
            && TcpStream::connect_timeout(
                &(self.listen, self.client_port).into(),
                Duration::from_millis(200),
            )
            .is_err()
        {
            return false;
        }
        self.command("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.url,
                "--dial-timeout=1s",
                "--command-timeout=2s",
            ])
            .args(["get", "--keys-only", "--limit=1", "/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Runs `etcdctl` against this etcd; panics with its output when it fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self
            .command("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.url,
                "--dial-timeout=2s",
                "--command-timeout=5s",
            ])
            .args(args)
            .output()
            .expect("running etcdctl");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The keys under `prefix`, sorted.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let mut k: Vec<String> = self
            .ctl(&["get", "--prefix", "--keys-only", prefix])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        k.sort();
        k
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.ctl(&["get", "--print-value-only", key]);
        (!out.is_empty()).then(|| out.strip_suffix('\n').unwrap_or(&out).to_owned())
    }

    /// Stops etcd (SIGTERM, then SIGKILL after a bounded wait); its data stays for
    /// [`Etcd::restart`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let start = Instant::now();
            while c.try_wait().ok().flatten().is_none() {
                if start.elapsed() > Duration::from_secs(10) {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Starts the same etcd again (same data, same ports) and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.launch() {
            panic!("etcd did not restart: {e}");
        }
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A network namespace for a test (`pdt...` name), with `lo` up; deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        super::env::sh(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        super::env::sh(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
