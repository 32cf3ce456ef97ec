//! A peerd test environment: a unique namespace prefix, config, state and pin dirs, a running
//! daemon, and helpers to act inside VPC namespaces. Everything is removed on drop, pass or fail.
#![allow(dead_code, reason = "each test binary uses a different subset")]
use std::{
    fs,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsFd as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::unique;

pub const PEERD: &str = env!("CARGO_BIN_EXE_peerd");

/// Runs `f` on a thread that entered network namespace `ns` (only that thread moves).
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = PathBuf::from("/run/netns").join(ns);
    std::thread::spawn(move || {
        let file = fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread panicked")
}

/// Runs a command, panicking with its output when it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `f` until it returns Some, for at most `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct Env {
    pub prefix: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub pin_dir: PathBuf,
    pub socket: PathBuf,
    /// The network namespace peerd runs in (a "host" of a fleet test), or the test's own.
    pub host_netns: Option<String>,
    /// The peerd binary this environment runs: the one cargo built, unless the test chose
    /// another (`with_peerd`, the packaged binary).
    pub bin: String,
    daemon: Option<Child>,
}

impl Env {
    pub fn new() -> Self {
        let prefix = format!("{}-", unique(""));
        let dir = std::env::temp_dir().join(&prefix);
        fs::create_dir_all(&dir).unwrap();
        crate::common::PinDir::new(); // mounts bpffs when missing (the guard itself is dropped)
        Self {
            config: dir.join("peerd.toml"),
            pin_dir: PathBuf::from("/sys/fs/bpf").join(format!("{prefix}pins")),
            socket: dir.join("peerd.sock"),
            prefix,
            dir,
            host_netns: None,
            bin: PEERD.to_owned(),
            daemon: None,
        }
    }

    /// An environment that runs `bin` instead of the binary cargo built.
    pub fn with_peerd(bin: &str) -> Self {
        let mut env = Self::new();
        env.bin = bin.to_owned();
        env
    }

    pub fn netns(&self, vpc: &str) -> String {
        format!("{}{vpc}", self.prefix)
    }

    /// Writes the configuration: the test's `[daemon]` section, then `body`.
    pub fn write_config(&self, body: &str) {
        self.write_config_with("", body)
    }

    /// The same with extra `[daemon]` lines. `PEERD_TEST_DATAPATH=xdp` runs the suite on the
    /// XDP datapath (`cargo xtask test` runs the namespace tests in both modes).
    pub fn write_config_with(&self, daemon_extra: &str, body: &str) {
        let mode = std::env::var("PEERD_TEST_DATAPATH").unwrap_or_else(|_| "tc".into());
        let daemon_extra = if daemon_extra.contains("datapath =") {
            daemon_extra.to_owned()
        } else {
            format!("datapath = \"{mode}\"\n{daemon_extra}")
        };
        let text = format!(
            "[daemon]\nnetns_prefix = \"{}\"\nstate_dir = \"{}\"\npin_dir = \"{}\"\nsocket = \"{}\"\n{daemon_extra}\n\n{body}",
            self.prefix,
            self.dir.join("state").display(),
            self.pin_dir.display(),
            self.socket.display()
        );
        let tmp = self.dir.join(".peerd.toml.tmp");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, &self.config).unwrap();
    }

    /// Starts `peerd run` and waits (bounded) until it answers status.
    pub fn start(&mut self) {
        let w = self.wrapper();
        let w: Vec<&str> = w.iter().map(String::as_str).collect();
        self.start_with(&w, &[])
    }

    /// What runs peerd inside `host_netns` (only the network namespace changes: /sys, and the
    /// bpffs mounted on it, stay the test's).
    pub fn wrapper(&self) -> Vec<String> {
        match &self.host_netns {
            Some(ns) => vec!["nsenter".into(), format!("--net=/run/netns/{ns}")],
            None => Vec::new(),
        }
    }

    /// A command that runs `program` where peerd runs.
    pub fn command(&self, program: &str) -> Command {
        let w = self.wrapper();
        match w.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    /// `start`, with `wrapper` (a command and its arguments) in front of peerd and extra
    /// environment variables.
    pub fn start_with(&mut self, wrapper: &[&str], envs: &[(&str, &str)]) {
        assert!(self.daemon.is_none(), "daemon already running");
        let log = fs::File::create(self.dir.join("peerd.log")).unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        let child = cmd
            .args(["run", "--config"])
            .arg(&self.config)
            .env("PEERD_LOG", "debug")
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn peerd");
        self.daemon = Some(child);
        let socket = self.socket.clone();
        wait_for(Duration::from_secs(60), "peerd to answer status", || {
            if let Some(Ok(Some(st))) = self.daemon.as_mut().map(|c| c.try_wait()) {
                panic!("peerd exited early ({st}): {}", self.log());
            }
            peerd::control::request(&socket, &peerd::control::Request::Status).ok()
        });
    }

    /// The running daemon's pid.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|c| c.id())
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("peerd.log")).unwrap_or_default()
    }

    /// SIGTERM and wait (bounded) for the daemon to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let exited = wait_for(Duration::from_secs(20), "peerd to stop", || {
                c.try_wait().ok().flatten()
            });
            assert!(
                exited.success(),
                "peerd exit status {exited}: {}",
                self.log()
            );
        }
    }

    /// SIGKILL: no chance to clean up anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits (bounded) until status satisfies `f`; returns that status.
    pub fn wait_status(&self, what: &str, limit: Duration, f: impl Fn(&Value) -> bool) -> Value {
        wait_for(limit, what, || {
            let st =
                peerd::control::request(&self.socket, &peerd::control::Request::Status).ok()?;
            f(&st).then_some(st)
        })
    }

    pub fn state_of(&self, id: &str) -> String {
        Env::peering(&self.status(), id)["state"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub fn status(&self) -> Value {
        peerd::control::request(&self.socket, &peerd::control::Request::Status).expect("status")
    }

    pub fn peerd(&self, args: &[&str]) -> std::process::Output {
        self.command(&self.bin)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("run peerd")
    }

    pub fn reload(&self) {
        peerd::control::request(&self.socket, &peerd::control::Request::Reload).expect("reload");
    }

    pub fn peering<'a>(status: &'a Value, id: &str) -> &'a Value {
        status["peerings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .unwrap_or_else(|| panic!("peering {id} not in status: {status:#}"))
    }

    pub fn drops(&self, vpc: &str, reason: &str) -> u64 {
        let st = self.status();
        let v = st["vpcs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == vpc)
            .cloned();
        v.and_then(|v| v["drops"][reason]["packets"].as_u64())
            .unwrap_or(0)
    }

    /// Adds a workload address inside VPC `vpc` (on `lo`).
    pub fn add_addr(&self, vpc: &str, addr: &str) {
        let ns = self.netns(vpc);
        let plen = if addr.contains(':') { "128" } else { "32" };
        let cidr = format!("{addr}/{plen}");
        let mut args = vec!["ip", "-n", &ns, "addr", "add", &cidr, "dev", "lo"];
        if addr.contains(':') {
            args.push("nodad");
        }
        sh(&args);
    }

    /// An operator's own route inside a VPC namespace, towards peerd's gateway (used to push
    /// traffic peerd has no route for, to see the datapath drop it). Replaces a route peerd
    /// may already have there.
    pub fn add_gw_route(&self, vpc: &str, dst: &str) {
        let ns = self.netns(vpc);
        if dst.contains(':') {
            sh(&[
                "ip", "-n", &ns, "-6", "route", "replace", dst, "via", "fe80::1", "dev", "peerd0",
            ]);
        } else {
            sh(&[
                "ip",
                "-n",
                &ns,
                "route",
                "replace",
                dst,
                "via",
                "169.254.1.1",
                "dev",
                "peerd0",
                "onlink",
            ]);
        }
    }

    /// `ping -c n` from VPC `from` (source `src`) to `dst`; true if all replies came back.
    pub fn ping(&self, from: &str, src: &str, dst: &str, n: u32) -> bool {
        ping(&self.netns(from), src, dst, n)
    }

    /// Sends `n` UDP datagrams from `src` in VPC `from` to `dst` in VPC `to`; how many arrived.
    pub fn udp(&self, from: &str, src: &str, to: &str, dst: &str, n: u32, wait: Duration) -> u32 {
        udp(&self.netns(from), src, &self.netns(to), dst, n, wait)
    }

    /// 1 MiB echoed over TCP from `src` in VPC `from` to `dst` in VPC `to`.
    pub fn tcp_echo(&self, from: &str, src: &str, to: &str, dst: &str) -> bool {
        tcp_echo(&self.netns(from), src, &self.netns(to), dst)
    }
}

/// A TCP connect bound to a source address, with a bounded timeout.
fn socket2_connect(src: SocketAddr, dst: SocketAddr) -> Option<TcpStream> {
    use std::os::fd::FromRawFd as _;
    let domain = if dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket syscall; the fd is owned by the TcpStream below.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a fresh, valid socket.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let (sa, len) = sockaddr(src);
    // SAFETY: sa/len describe a valid sockaddr for this family.
    if unsafe { libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len) } != 0 {
        return None;
    }
    let (da, dlen) = sockaddr(dst);
    let tv = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: setting a send timeout bounds connect(); valid pointer and size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    // SAFETY: da/dlen describe a valid sockaddr.
    if unsafe { libc::connect(fd, &da as *const _ as *const libc::sockaddr, dlen) } != 0 {
        return None;
    }
    Some(stream)
}

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            (ss, std::mem::size_of::<libc::sockaddr_in>() as u32)
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            (ss, std::mem::size_of::<libc::sockaddr_in6>() as u32)
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // peerd's own teardown first; then make sure, whatever state the test left.
        let _ = self
            .command(&self.bin)
            .args(["teardown", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Ok(entries) = fs::read_dir("/run/netns") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&self.prefix) {
                    let _ = Command::new("ip").args(["netns", "del", &name]).status();
                }
            }
        }
        // The backstop table, when teardown could not run (a test left a config it refuses).
        let _ = Command::new("nft")
            .args(["delete", "table", "inet"])
            .arg(peerd::reconcile::backstop::table_name(&self.prefix))
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.pin_dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Does named namespace `ns` exist?
pub fn netns_ok(ns: &str) -> bool {
    std::path::Path::new("/run/netns").join(ns).exists()
}

/// `ping -c n` from namespace `from_ns` (source `src`) to `dst`; true if all replies came back.
pub fn ping(from_ns: &str, src: &str, dst: &str, n: u32) -> bool {
    let ns = from_ns.to_owned();
    let count = n.to_string();
    Command::new("ip")
        .args([
            "netns", "exec", &ns, "ping", "-q", "-n", "-c", &count, "-i", "0.05", "-W", "1", "-I",
            src, dst,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Sends `n` UDP datagrams from `src` in VPC `from` to `dst:port` in VPC `to` and returns
/// how many arrived. The receiver waits at most `wait` after the last send.
pub fn udp(from_ns: &str, src: &str, to_ns: &str, dst: &str, n: u32, wait: Duration) -> u32 {
    let port = 20000 + (std::process::id() % 20000) as u16;
    let dst_addr = SocketAddr::new(dst.parse::<IpAddr>().unwrap(), port);
    let src_addr = SocketAddr::new(src.parse::<IpAddr>().unwrap(), 0);
    let rx = in_ns(to_ns, move || {
        UdpSocket::bind(dst_addr).expect("bind receiver")
    });
    let tx = in_ns(from_ns, move || {
        UdpSocket::bind(src_addr).expect("bind sender")
    });
    for i in 0..n {
        // A VPC without a route gets an error here: that is "nothing delivered" too.
        let _ = tx.send_to(format!("peerd-test {i}").as_bytes(), dst_addr);
    }
    rx.set_read_timeout(Some(wait)).unwrap();
    let mut got = 0;
    let mut buf = [0u8; 128];
    while got < n {
        match rx.recv_from(&mut buf) {
            Ok((len, from_addr)) => {
                assert!(buf[..len].starts_with(b"peerd-test"));
                assert_eq!(from_addr.ip(), src_addr.ip(), "source address preserved");
                got += 1;
            }
            Err(_) => break,
        }
    }
    got
}

/// A TCP connection from `src` in VPC `from` to `dst` in VPC `to`: sends 1 MiB and reads
/// it back echoed. True when everything came back.
pub fn tcp_echo(from_ns: &str, src: &str, to_ns: &str, dst: &str) -> bool {
    let port = 30000 + (std::process::id() % 20000) as u16;
    let dst_addr = SocketAddr::new(dst.parse::<IpAddr>().unwrap(), port);
    let src_addr = SocketAddr::new(src.parse::<IpAddr>().unwrap(), 0);
    let listener = in_ns(to_ns, move || TcpListener::bind(dst_addr).expect("bind"));
    let server = std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        let (mut s, peer) = listener.accept().ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = s.read(&mut buf).ok()?;
            if n == 0 {
                return Some(peer);
            }
            s.write_all(&buf[..n]).ok()?;
        }
    });
    let data: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let ok = in_ns(from_ns, move || {
        let sock = socket2_connect(src_addr, dst_addr)?;
        let mut s = sock;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let mut w = s.try_clone().ok()?;
        let send = data.clone();
        let writer = std::thread::spawn(move || {
            w.write_all(&send).ok()?;
            w.shutdown(std::net::Shutdown::Write).ok()
        });
        let mut back = Vec::new();
        s.read_to_end(&mut back).ok()?;
        writer.join().ok()??;
        Some(back == data)
    });
    if ok != Some(true) {
        // Unblock the server's accept so its thread ends.
        let _ = in_ns(to_ns, move || {
            TcpStream::connect_timeout(&dst_addr, Duration::from_millis(200))
        });
    }
    let peer = server.join().ok().flatten();
    ok == Some(true) && peer.map(|p| p.ip()) == Some(src_addr.ip())
}
