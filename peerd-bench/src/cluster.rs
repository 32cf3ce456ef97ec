//! Cluster mode (issue 10, "Benchmarks"): cross-host forwarding, convergence, and what peerd
//! keeps in etcd.
//!
//! Hosts are network namespaces on one underlay bridge (in a namespace of its own, which also
//! runs etcd). Each peerd host runs the release `peerd run` as a process, entered with
//! `nsenter --net` (never `ip netns exec`, which remounts /sys and loses bpffs), with a host
//! file of its own; the fleet file is written with `peerd apply`.
//!
//! Cross-host scenarios, interleaved round by round (source VPC a on host 1, destination VPC b
//! on host 2):
//! - `xhost-ceiling`: the bench's programs: on the source VPC's host-side veth only the tunnel
//!   key and a redirect to an `external` VXLAN device; on the other host's VXLAN device only
//!   the MACs, the packet type and `bpf_redirect_peer`;
//! - `xhost-kernel`: per-host IP forwarding, a VXLAN device (static remote) as the route to the
//!   remote VPC, nftables forward rules accepting exactly the peered pairs, on both hosts;
//! - `xhost-peerd`: the real peerd on both hosts.
use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    in_ns, measure,
    object::{attach_tcx, BenchObj},
    peerd_api, pin_cpu,
    report::{stat, Results},
    sh,
    shared::{BenchTarget, BenchTunnel},
    topo::{self, Path2},
    Res,
};

/// The underlay's own address (etcd listens there); host `n` is 10.250.0.n.
const ETCD_ADDR: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 254);
/// The VNI of the ceiling's tunnel and of the kernel's VXLAN devices.
const VNI: u32 = 100;
/// VPC-side MTU of the kernel and ceiling scenarios: what peerd sets over an IPv4 underlay of
/// 1500 (VXLAN over IPv4 takes 50 bytes).
const VPC_MTU: &str = "1450";
/// How long a daemon, etcd or a fleet change may take before the section gives up.
const BOUND: Duration = Duration::from_secs(60);
const SRC: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const DST: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 1);

/// Polls `f` every `every` until it returns Some, for at most `limit`.
fn wait_for<T>(
    limit: Duration,
    every: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> Res<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > limit {
            return Err(format!("timed out after {limit:?} waiting for {what}"));
        }
        std::thread::sleep(every);
    }
}

/// `peerd`, next to this binary (`cargo build --release -p peerd -p peerd-bench`).
fn peerd_bin() -> Res<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let p = exe.with_file_name("peerd");
    if p.exists() {
        Ok(p)
    } else {
        Err(format!("{} not found: build peerd too", p.display()))
    }
}

/// A command run inside network namespace `ns` (only the network namespace changes).
fn ns_cmd(ns: &str, program: &Path) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}")).arg(program);
    c
}

fn output(mut c: Command) -> Res<String> {
    let out = c.output().map_err(|e| format!("{c:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{c:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A peerd host's daemon: its files, its process.
struct PeerdHost {
    /// The daemon's netns prefix: its VPC `v` lives in namespace `{prefix}{v}`.
    prefix: String,
    dir: PathBuf,
    pins: PathBuf,
    socket: PathBuf,
    config: PathBuf,
    child: Option<Child>,
}

impl PeerdHost {
    fn status(&self) -> Res<Value> {
        peerd_api::status(&self.socket)
    }

    fn vpc_ns(&self, vpc: &str) -> String {
        format!("{}{vpc}", self.prefix)
    }
}

/// Hosts on an underlay bridge, with etcd there; everything removed on drop.
struct Fleet {
    prefix: String,
    underlay: String,
    dir: PathBuf,
    etcd: Option<Child>,
    url: String,
    /// Host namespaces, host `n` (1-based) at `n - 1`.
    hosts: Vec<String>,
    daemons: BTreeMap<usize, PeerdHost>,
    /// Other namespaces made here (VPCs of the kernel and ceiling scenarios).
    netns: Vec<String>,
    peerd: PathBuf,
}

impl Fleet {
    /// The underlay namespace `{prefix}ul` with bridge `br0` and etcd on it.
    fn new(prefix: &str) -> Res<Fleet> {
        let dir = std::env::temp_dir().join(format!("{prefix}fleet"));
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut f = Fleet {
            prefix: prefix.to_owned(),
            underlay: format!("{prefix}ul"),
            dir,
            etcd: None,
            url: format!("http://{ETCD_ADDR}:2379"),
            hosts: Vec::new(),
            daemons: BTreeMap::new(),
            netns: Vec::new(),
            peerd: peerd_bin()?,
        };
        let ul = f.underlay.clone();
        new_ns(&ul)?;
        sh(&["ip", "-n", &ul, "link", "add", "br0", "type", "bridge"])?;
        addr_add(&ul, &format!("{ETCD_ADDR}/24"), "br0")?;
        sh(&["ip", "-n", &ul, "link", "set", "br0", "up"])?;
        let log = fs::File::create(f.dir.join("etcd.log")).map_err(|e| e.to_string())?;
        let peer = format!("http://{ETCD_ADDR}:2380");
        let mut c = ns_cmd(&ul, Path::new("etcd"));
        c.arg("--name")
            .arg("b")
            .arg("--data-dir")
            .arg(f.dir.join("etcd"))
            .args(["--listen-client-urls", &f.url])
            .args(["--advertise-client-urls", &f.url])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("b={peer}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        f.etcd = Some(c.spawn().map_err(|e| format!("etcd: {e}"))?);
        let addr = SocketAddr::from((ETCD_ADDR, 2379));
        wait_for(BOUND, Duration::from_millis(50), "etcd to listen", || {
            in_ns(&ul, || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
            })
        })?;
        wait_for(BOUND, Duration::from_millis(100), "etcd to answer", || {
            f.etcdctl(&["get", "--keys-only", "--limit=1", "/"]).ok()
        })?;
        Ok(f)
    }

    fn etcdctl(&self, args: &[&str]) -> Res<String> {
        let mut c = ns_cmd(&self.underlay, Path::new("etcdctl"));
        c.env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.url, "--command-timeout=5s"])
            .args(args);
        output(c)
    }

    /// A new host namespace on the underlay; returns its number (1-based).
    fn add_host(&mut self) -> Res<usize> {
        let n = self.hosts.len() + 1;
        let ns = format!("{}h{n}", self.prefix);
        new_ns(&ns)?;
        self.hosts.push(ns.clone());
        let port = format!("p{n}");
        sh(&[
            "ip",
            "-n",
            &self.underlay,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "ul0",
            "netns",
            &ns,
        ])?;
        sh(&[
            "ip",
            "-n",
            &self.underlay,
            "link",
            "set",
            &port,
            "master",
            "br0",
            "up",
        ])?;
        addr_add(&ns, &format!("{}/24", underlay(n)), "ul0")?;
        sh(&["ip", "-n", &ns, "link", "set", "ul0", "up"])?;
        Ok(n)
    }

    /// Starts peerd on host `n`, placing `vpcs`; returns once it answers status.
    fn start_peerd(&mut self, n: usize, vpcs: &[&str]) -> Res<()> {
        let prefix = format!("{}{n}-", self.prefix);
        let dir = self.dir.join(format!("h{n}"));
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let pins = PathBuf::from("/sys/fs/bpf").join(format!("{prefix}pins"));
        let socket = dir.join("peerd.sock");
        let config = dir.join("peerd.toml");
        let list: Vec<String> = vpcs.iter().map(|v| format!("\"{v}\"")).collect();
        let text = format!(
            "[daemon]\nnetns_prefix = \"{prefix}\"\nstate_dir = \"{}\"\npin_dir = \"{}\"\nsocket = \"{}\"\ndatapath = \"tc\"\n\n[cluster]\netcd = [\"{}\"]\nhost = \"h{n}\"\nunderlay = \"{}\"\nvpcs = [{}]\n",
            dir.join("state").display(),
            pins.display(),
            socket.display(),
            self.url,
            underlay(n),
            list.join(", ")
        );
        fs::write(&config, text).map_err(|e| e.to_string())?;
        let log = fs::File::create(dir.join("peerd.log")).map_err(|e| e.to_string())?;
        let child = ns_cmd(&self.hosts[n - 1], &self.peerd)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("peerd: {e}"))?;
        let mut h = PeerdHost {
            prefix,
            dir,
            pins,
            socket,
            config,
            child: Some(child),
        };
        let up = wait_for(BOUND, Duration::from_millis(20), "peerd to answer", || {
            if let Some(Ok(Some(st))) = h.child.as_mut().map(|c| c.try_wait()) {
                return Some(Err(format!(
                    "peerd on h{n} exited ({st}): {}",
                    fs::read_to_string(h.dir.join("peerd.log")).unwrap_or_default()
                )));
            }
            h.status().ok().map(|_| Ok(()))
        });
        self.daemons.insert(n, h);
        up?
    }

    /// `peerd apply` of `toml`, from the underlay.
    fn apply(&self, toml: &str) -> Res<()> {
        let file = self.dir.join("fleet.toml");
        fs::write(&file, toml).map_err(|e| e.to_string())?;
        let mut c = ns_cmd(&self.underlay, &self.peerd);
        c.args(["apply", "--etcd", &self.url]).arg(&file);
        output(c).map(drop)
    }

    fn daemon(&self, n: usize) -> &PeerdHost {
        &self.daemons[&n]
    }

    /// Waits until every daemon's status satisfies `f` (given the host number).
    fn wait_all(&self, what: &str, f: impl Fn(usize, &Value) -> bool) -> Res<()> {
        for (&n, h) in &self.daemons {
            wait_for(BOUND, Duration::from_millis(10), what, || {
                h.status().ok().filter(|st| f(n, st))
            })
            .map_err(|e| format!("h{n}: {e}"))?;
        }
        Ok(())
    }

    /// `etcdctl watch` of the keys under `prefix`, from the next revision on.
    fn watch(&self, prefix: &str) -> Res<Watch> {
        let out = self.etcdctl(&["get", "/", "--limit=1", "-w", "json"])?;
        let v: Value = serde_json::from_str(&out).map_err(|e| format!("etcdctl json: {e}"))?;
        let rev = v["header"]["revision"]
            .as_i64()
            .ok_or_else(|| format!("no revision in {out}"))?;
        let mut c = ns_cmd(&self.underlay, Path::new("etcdctl"));
        c.env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.url, "watch", "--prefix"])
            .arg(format!("--rev={}", rev + 1))
            .arg(prefix)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = c.spawn().map_err(|e| format!("etcdctl watch: {e}"))?;
        let stdout = child.stdout.take().ok_or("etcdctl watch: no stdout")?;
        let (tx, events) = std::sync::mpsc::channel();
        // Ends when the watch process is killed (end of its output).
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if (line == "PUT" || line == "DELETE") && tx.send(Instant::now()).is_err() {
                    break;
                }
            }
        });
        Ok(Watch { child, events })
    }

    /// Keys and bytes (keys and values) under peerd's key prefix.
    fn etcd_usage(&self) -> Res<(u64, u64)> {
        let out = self.etcdctl(&["get", "--prefix", "/peerd/", "-w", "json"])?;
        let v: Value = serde_json::from_str(&out).map_err(|e| format!("etcdctl json: {e}"))?;
        let kvs = v["kvs"].as_array().cloned().unwrap_or_default();
        let bytes = kvs
            .iter()
            .map(|kv| b64_len(&kv["key"]) + b64_len(&kv["value"]))
            .sum();
        Ok((kvs.len() as u64, bytes))
    }
}

/// A running `etcdctl watch`: when each event (a put or a delete) reached this process.
struct Watch {
    child: Child,
    events: std::sync::mpsc::Receiver<Instant>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The decoded length of a base64 string (etcdctl's JSON output encodes keys and values).
fn b64_len(v: &Value) -> u64 {
    let s = v.as_str().unwrap_or("");
    let pad = s.bytes().rev().take_while(|&b| b == b'=').count();
    (s.len() / 4 * 3 - pad) as u64
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for h in self.daemons.values_mut() {
            if let Some(mut c) = h.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for (n, h) in &self.daemons {
            let _ = ns_cmd(&self.hosts[n - 1], &self.peerd)
                .arg("teardown")
                .arg("--config")
                .arg(&h.config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if let Ok(entries) = fs::read_dir("/run/netns") {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with(&h.prefix) {
                        del_ns(&name);
                    }
                }
            }
            let _ = fs::remove_dir_all(&h.pins);
        }
        for ns in self.netns.iter().chain(&self.hosts) {
            del_ns(ns);
        }
        if let Some(mut c) = self.etcd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        del_ns(&self.underlay);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `ip addr add CIDR dev DEV` in namespace `ns`.
fn addr_add(ns: &str, cidr: &str, dev: &str) -> Res<()> {
    sh(&["ip", "-n", ns, "addr", "add", cidr, "dev", dev]).map(drop)
}

fn new_ns(ns: &str) -> Res<()> {
    sh(&["ip", "netns", "add", ns])?;
    sh(&["ip", "-n", ns, "link", "set", "lo", "up"]).map(drop)
}

fn del_ns(ns: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Host `n`'s underlay address.
fn underlay(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 250, 0, n as u8)
}

// ---------------------------------------------------------------------------------------------
// Cross-host forwarding

/// A VPC-like namespace `ns` (address `addr` on lo) joined to host
/// namespace `host` by a veth (`eth0` inside, `host_if` on the host), gateway `gw` on the
/// host's end, a route to `remote` through it and the gateway's MAC set statically (the
/// ceiling forwards everything, ARP too). Returns the host end's ifindex and MAC, and the VPC
/// end's MAC.
fn vpc_ns(
    ns: &str,
    host: &str,
    host_if: &str,
    gw: &str,
    addr: Ipv4Addr,
    remote: &str,
) -> Res<Side> {
    new_ns(ns)?;
    sh(&[
        "ip", "-n", ns, "link", "add", "eth0", "mtu", VPC_MTU, "type", "veth", "peer", "name",
        host_if, "netns", host,
    ])?;
    let third = gw.split('.').nth(1).unwrap_or("0");
    addr_add(ns, &format!("10.{third}.255.2/24"), "eth0")?;
    addr_add(host, &format!("{gw}/24"), host_if)?;
    sh(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
    sh(&["ip", "-n", host, "link", "set", host_if, "up"])?;
    topo::add_lo_addr(ns, addr)?;
    let (host_ifindex, host_mac) = topo::link_info(host, host_if)?;
    let (_, ns_mac) = topo::link_info(ns, "eth0")?;
    sh(&["ip", "-n", ns, "route", "add", remote, "via", gw])?;
    sh(&[
        "ip",
        "-n",
        ns,
        "neigh",
        "replace",
        gw,
        "lladdr",
        &mac_str(host_mac),
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])?;
    Ok((host_ifindex, host_mac, ns_mac))
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The path of a cross-host scenario: generator on the source VPC's host-side link in host
/// 1, sink on the destination VPC's link.
fn xpath(
    name: &'static str,
    f: &Fleet,
    h1: usize,
    (src_ns, dst_ns): (String, String),
    host_if: &str,
    dst_dev: &'static str,
) -> Res<Path2> {
    let (gen_ifindex, gen_mac) = topo::link_info(&f.hosts[h1 - 1], host_if)?;
    Ok(Path2 {
        name,
        src_ns,
        src: SRC,
        dst_ns,
        dst: DST,
        gen_ns: Some(f.hosts[h1 - 1].clone()),
        gen_ifindex,
        gen_mac,
        gen_redirect: None,
        dst_dev,
    })
}

/// One VPC's veth: host-side ifindex, host-side MAC, VPC-side MAC.
type Side = (u32, [u8; 6], [u8; 6]);

/// The kernel and ceiling scenarios' VPCs: a (10.1.0.1) on host `h1` behind `ra` (gateway
/// 10.1.255.1), b (10.2.0.1) on host `h2` behind `rb` (gateway 10.2.255.1): their namespaces
/// and veths.
fn vpc_pair(f: &mut Fleet, tag: &str, h1: usize, h2: usize) -> Res<(String, String, Side, Side)> {
    let (a, b) = (format!("{}{tag}a", f.prefix), format!("{}{tag}b", f.prefix));
    f.netns.push(a.clone());
    f.netns.push(b.clone());
    let sa = vpc_ns(
        &a,
        &f.hosts[h1 - 1].clone(),
        "ra",
        "10.1.255.1",
        SRC,
        "10.2.0.0/16",
    )?;
    let sb = vpc_ns(
        &b,
        &f.hosts[h2 - 1].clone(),
        "rb",
        "10.2.255.1",
        DST,
        "10.1.0.0/16",
    )?;
    Ok((a, b, sa, sb))
}

/// A VXLAN device `vx0` in host namespace `ns` on port 4789, MTU 1450 (what a VPC's side
/// gets), without learning, with `args` (VNI and remote, or `external`), up.
fn vxlan(ns: &str, args: &[&str]) -> Res<()> {
    let mut cmd = vec![
        "ip", "-n", ns, "link", "add", "vx0", "mtu", VPC_MTU, "type", "vxlan",
    ];
    cmd.extend_from_slice(args);
    cmd.extend_from_slice(&["dstport", "4789", "nolearning"]);
    sh(&cmd)?;
    sh(&["ip", "-n", ns, "link", "set", "vx0", "up"]).map(drop)
}

/// `xhost-kernel`: IP forwarding, a VXLAN device with a static remote as the route to the
/// other host's VPC, nftables accepting exactly the peered pairs (conntrack), on both hosts.
fn kernel_path(f: &mut Fleet) -> Res<Path2> {
    let (h1, h2) = (f.add_host()?, f.add_host()?);
    let (a, b, _, _) = vpc_pair(f, "k", h1, h2)?;
    for (me, other, i, local, remote) in [
        (h1, h2, 1, "10.1.0.0/16", "10.2.0.0/16"),
        (h2, h1, 2, "10.2.0.0/16", "10.1.0.0/16"),
    ] {
        let ns = f.hosts[me - 1].clone();
        let (id, local_ul, remote_ul) = (
            VNI.to_string(),
            underlay(me).to_string(),
            underlay(other).to_string(),
        );
        vxlan(
            &ns,
            &[
                "id", &id, "local", &local_ul, "remote", &remote_ul, "dev", "ul0",
            ],
        )?;
        addr_add(&ns, &format!("10.255.0.{i}/24"), "vx0")?;
        let via = format!("10.255.0.{}", 3 - i);
        sh(&["ip", "-n", &ns, "route", "add", remote, "via", &via])?;
        let gw = format!("10.{i}.255.2");
        sh(&["ip", "-n", &ns, "route", "add", local, "via", &gw])?;
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])?;
        topo::load_nft(&ns, &topo::peering_rules(true))?;
    }
    xpath("xhost-kernel", f, h1, (a, b), "ra", "eth0")
}

/// `xhost-ceiling`: the bench's tunnel-key program on the VPCs' host-side links and its
/// receive ceiling on each host's `external` VXLAN device (both directions, for TCP). The
/// returned objects (one per host: ifindexes are per namespace) own the links.
fn ceiling_path(f: &mut Fleet) -> Res<(Path2, Vec<BenchObj>)> {
    let (h1, h2) = (f.add_host()?, f.add_host()?);
    let (a, b, sa, sb) = vpc_pair(f, "c", h1, h2)?;
    let mut objs = Vec::new();
    for (me, other, mine, host_if) in [(h1, h2, sa, "ra"), (h2, h1, sb, "rb")] {
        let ns = f.hosts[me - 1].clone();
        vxlan(&ns, &["external"])?;
        let (vx, _) = topo::link_info(&ns, "vx0")?;
        let mut obj = BenchObj::load()?;
        obj.set_tunnel(
            mine.0,
            BenchTunnel {
                ifindex: vx,
                vni: VNI,
                remote_ipv4: u32::from(underlay(other)),
            },
        )?;
        obj.set_target(
            vx,
            BenchTarget {
                ifindex: mine.0,
                dst_mac: mine.2,
                src_mac: mine.1,
            },
        )?;
        in_ns(&ns, || -> Res<()> {
            attach_tcx(obj.tc("bench_tunnel_tc")?, host_if)?;
            attach_tcx(obj.tc("bench_vxlan_rx_tc")?, "vx0")?;
            Ok(())
        })?;
        objs.push(obj);
    }
    Ok((xpath("xhost-ceiling", f, h1, (a, b), "ra", "eth0")?, objs))
}

const XHOST_FLEET: &str = "[[vpc]]\nname = \"a\"\ncidrs = [\"10.1.0.0/16\"]\n  [[vpc.peering]]\n  id = \"pcx-ab\"\n  peer = \"b\"\n[[vpc]]\nname = \"b\"\ncidrs = [\"10.2.0.0/16\"]\n  [[vpc.peering]]\n  id = \"pcx-ab\"\n  peer = \"a\"\n";

fn vpc_ready(st: &Value, vpc: &str) -> bool {
    st["vpcs"]
        .as_array()
        .is_some_and(|v| v.iter().any(|v| v["name"] == vpc && v["ready"] == true))
}

fn remote_endpoints(st: &Value) -> u64 {
    st["cluster"]["remote_endpoints"].as_u64().unwrap_or(0)
}

/// `xhost-peerd`: peerd on two hosts, a on the first, b on the second, peered.
fn peerd_path(f: &mut Fleet) -> Res<Path2> {
    let (h1, h2) = (f.add_host()?, f.add_host()?);
    f.apply(XHOST_FLEET)?;
    f.start_peerd(h1, &["a"])?;
    f.start_peerd(h2, &["b"])?;
    f.wait_all("VPCs ready", |n, st| {
        vpc_ready(st, if n == h1 { "a" } else { "b" })
    })?;
    let (a, b) = (f.daemon(h1).vpc_ns("a"), f.daemon(h2).vpc_ns("b"));
    topo::add_lo_addr(&a, SRC)?;
    topo::add_lo_addr(&b, DST)?;
    f.wait_all("the other host's endpoint", |_, st| {
        remote_endpoints(st) >= 1
    })?;
    let host_if = peerd_api::host_ifname(&a);
    xpath("xhost-peerd", f, h1, (a, b), &host_if, "peerd0")
}

/// Cross-host forwarding: 64 B pps (generator -> path -> counting sink) and one TCP stream,
/// the three scenarios interleaved round by round.
pub fn forwarding(prefix: &str, rounds: usize, quick: bool, res: &mut Results) -> Res<()> {
    let mut f = Fleet::new(&format!("{prefix}x"))?;
    let kernel = kernel_path(&mut f)?;
    let (ceiling, _objs) = ceiling_path(&mut f)?;
    let peerd = peerd_path(&mut f)?;
    let paths = [ceiling, kernel, peerd];
    // The sink object: the generator and the counting sink.
    let mut bench = BenchObj::load()?;
    let pid = nix::unistd::Pid::from_raw(0);
    let saved = nix::sched::sched_getaffinity(pid).map_err(|e| e.to_string())?;
    pin_cpu(0);
    let frames: u32 = if quick { 300_000 } else { 2_000_000 };
    let tcp_secs = if quick { 1 } else { 3 };
    // Neighbour entries on the way (gateways, VXLAN next hops, underlay) resolved before the
    // first measurement: the generator's burst would otherwise overrun the ARP queues.
    for p in &paths {
        if let Err(e) = sh(&[
            "ip",
            "netns",
            "exec",
            &p.src_ns,
            "ping",
            "-q",
            "-n",
            "-c",
            "3",
            "-i",
            "0.1",
            "-W",
            "1",
            "-I",
            &SRC.to_string(),
            &DST.to_string(),
        ]) {
            res.notes
                .push(format!("{}: no ping through before measuring: {e}", p.name));
        }
    }
    let mut samples: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        eprintln!("cluster forwarding round {}/{rounds} ...", round + 1);
        for p in &paths {
            match measure::pps_sink(&mut bench, p, frames) {
                Ok(v) => samples.entry((p.name, "pps_64B")).or_default().push(v),
                Err(e) => res.notes.push(format!("{}: {e}", p.name)),
            }
            match measure::tcp(p, 1, tcp_secs) {
                Ok(g) => samples
                    .entry((p.name, "tcp_1_stream_gbps"))
                    .or_default()
                    .push(g),
                Err(e) => res.notes.push(format!("{}: {e}", p.name)),
            }
        }
    }
    nix::sched::sched_setaffinity(pid, &saved).map_err(|e| e.to_string())?;
    for ((s, m), v) in samples {
        res.cluster
            .forwarding
            .entry(s.to_owned())
            .or_default()
            .insert(m.to_owned(), stat(v));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Convergence and etcd usage

/// Every host of the convergence fleet places both; peered only while measuring apply ->
/// forwarding.
fn fleet_ab(peered: bool) -> String {
    if peered {
        XHOST_FLEET.to_owned()
    } else {
        "[[vpc]]\nname = \"a\"\ncidrs = [\"10.1.0.0/16\"]\n[[vpc]]\nname = \"b\"\ncidrs = [\"10.2.0.0/16\"]\n".to_owned()
    }
}

/// The workloads: a at 10.1.1.1 on host 1, b at 10.2.n.1 on every other host n.
fn b_addr(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 2, n as u8, 1)
}
const A_ADDR: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 1);
/// The endpoint added and removed on host 1 to time its propagation.
const MOVING: Ipv4Addr = Ipv4Addr::new(10, 1, 200, 1);

/// Convergence on `hosts` hosts: an endpoint change seen by every other host, an apply of one
/// peering until traffic flows on every pair; then etcd keys and bytes per VPC and endpoint.
pub fn convergence(prefix: &str, hosts: usize, quick: bool, res: &mut Results) -> Res<()> {
    let mut f = Fleet::new(&format!("{prefix}v"))?;
    f.apply(&fleet_ab(false))?;
    for _ in 0..hosts {
        let n = f.add_host()?;
        f.start_peerd(n, &["a", "b"])?;
    }
    f.wait_all("VPCs ready", |_, st| {
        vpc_ready(st, "a") && vpc_ready(st, "b")
    })?;
    topo::add_lo_addr(&f.daemon(1).vpc_ns("a"), A_ADDR)?;
    for n in 2..=hosts {
        topo::add_lo_addr(&f.daemon(n).vpc_ns("b"), b_addr(n))?;
    }
    // Every host sees the other hosts' one endpoint each.
    let others = (hosts - 1) as u64;
    f.wait_all("every endpoint known", |_, st| {
        remote_endpoints(st) == others
    })?;

    // 1. An endpoint added (removed) on host 1 until every other host counts it (or not), and
    // until its key is written (removed) in etcd. The first two changes are not counted: they
    // make sure the watch runs.
    let changes = if quick { 10 } else { 100 };
    let a1 = f.daemon(1).vpc_ns("a");
    let watch = f.watch(&format!("/peerd/v1/endpoints/a/{MOVING}/"))?;
    let (mut ms, mut published) = (Vec::new(), Vec::new());
    for i in 0..changes + 2 {
        let add = i % 2 == 0;
        let want = if add { others + 1 } else { others };
        let cidr = format!("{MOVING}/32");
        let verb = if add { "add" } else { "del" };
        while watch.events.try_recv().is_ok() {}
        let start = Instant::now();
        sh(&["ip", "-n", &a1, "addr", verb, &cidr, "dev", "lo"])?;
        let seen = all_see(&f, start, |st| remote_endpoints(st) == want)?;
        let put = watch
            .events
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "the endpoint's key did not change in etcd within 10 s")?;
        if i >= 2 {
            ms.push(seen.as_secs_f64() * 1e3);
            published.push(put.duration_since(start).as_secs_f64() * 1e3);
        }
    }
    drop(watch);
    res.cluster.endpoint_change_ms = Some(stat(ms));
    res.cluster.endpoint_published_ms = Some(stat(published));

    // 2. apply of a peering -> traffic both ways between a (host 1) and b on every other host;
    // then the peering removed again, until no host has it active.
    let reps = if quick { 3 } else { 10 };
    let mut ms = Vec::new();
    for _ in 0..reps {
        let start = Instant::now();
        f.apply(&fleet_ab(true))?;
        ms.push(probe_all(&f, hosts, start)?.as_secs_f64() * 1e3);
        f.apply(&fleet_ab(false))?;
        f.wait_all("the peering gone", |_, st| {
            !st["peerings"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["state"] == "active"))
        })?;
    }
    res.cluster.apply_to_forwarding_ms = Some(stat(ms));

    // 3. etcd: keys and bytes per declared VPC, per endpoint.
    let (k0, b0) = f.etcd_usage()?;
    let k = if quick { 10 } else { 100 };
    // At most 50 VPCs per apply: each is 2 operations of one etcd transaction, which etcd
    // caps at 128 by default (peerd says so and writes nothing).
    for group in (0..k).collect::<Vec<_>>().chunks(50) {
        let mut toml = fleet_ab(false);
        for i in group {
            toml += &format!("[[vpc]]\nname = \"v{i}\"\ncidrs = [\"172.16.{i}.0/24\"]\n");
        }
        f.apply(&toml)?;
    }
    let (k1, b1) = f.etcd_usage()?;
    let e = if quick { 10 } else { 50 };
    for i in 0..e {
        topo::add_lo_addr(&a1, Ipv4Addr::new(10, 1, 100, i as u8 + 1))?;
    }
    let want = others + e as u64;
    f.wait_all("the new endpoints", |n, st| {
        n == 1 || remote_endpoints(st) == want
    })?;
    let (k2, b2) = f.etcd_usage()?;
    let c = &mut res.cluster.etcd;
    c.insert("hosts".into(), hosts as f64);
    let base = "fleet of 2 VPCs and one endpoint per host";
    let rows = [
        (format!("keys, {base}"), k0 as f64),
        (format!("bytes, {base}"), b0 as f64),
        (
            format!("keys per VPC (declared, {k} added)"),
            (k1 - k0) as f64 / k as f64,
        ),
        (
            format!("bytes per VPC (declared, {k} added)"),
            (b1 - b0) as f64 / k as f64,
        ),
        (
            format!("keys per endpoint ({e} added)"),
            (k2 - k1) as f64 / e as f64,
        ),
        (
            format!("bytes per endpoint ({e} added)"),
            (b2 - b1) as f64 / e as f64,
        ),
    ];
    c.extend(rows);
    Ok(())
}

/// Polls every host but host 1 (one thread each, every 5 ms: the daemons share the CPUs
/// with the pollers) until its status satisfies `f`;
/// the time from `start` until the last one did.
fn all_see(f: &Fleet, start: Instant, ok: impl Fn(&Value) -> bool + Sync) -> Res<Duration> {
    let ok = &ok;
    std::thread::scope(|s| {
        let seen: Vec<_> = f
            .daemons
            .iter()
            .filter(|(&n, _)| n != 1)
            .map(|(&n, h)| {
                s.spawn(move || {
                    wait_for(
                        Duration::from_secs(10),
                        Duration::from_millis(5),
                        "",
                        || h.status().ok().filter(|st| ok(st)).map(|_| start.elapsed()),
                    )
                    .map_err(|_| format!("h{n} did not see the endpoint change within 10 s"))
                })
            })
            .collect();
        let mut last = Duration::ZERO;
        for t in seen {
            last = last.max(t.join().map_err(|_| "poller panicked".to_owned())??);
        }
        Ok(last)
    })
}

/// UDP probes every 2 ms between a on host 1 and b on every other host, both ways, until each
/// direction of every pair got one through; the time from `start`.
fn probe_all(f: &Fleet, hosts: usize, start: Instant) -> Res<Duration> {
    let port = 7000;
    let a_ns = f.daemon(1).vpc_ns("a");
    let bind = |ns: &str, addr: Ipv4Addr| -> Res<UdpSocket> {
        let s = in_ns(ns, || UdpSocket::bind((addr, port))).map_err(|e| e.to_string())?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok(s)
    };
    let a = bind(&a_ns, A_ADDR)?;
    let bs: Vec<(Ipv4Addr, UdpSocket)> = (2..=hosts)
        .map(|n| Ok((b_addr(n), bind(&f.daemon(n).vpc_ns("b"), b_addr(n))?)))
        .collect::<Res<_>>()?;
    let a_to = SocketAddr::from((A_ADDR, port));
    // Per b: (b heard a, a heard b).
    let mut got = vec![(false, false); bs.len()];
    let mut buf = [0u8; 64];
    wait_for(
        Duration::from_secs(10),
        Duration::from_millis(2),
        "traffic on every pair",
        || {
            for (i, (addr, s)) in bs.iter().enumerate() {
                if !got[i].0 {
                    let _ = a.send_to(b"probe", (*addr, port));
                }
                if !got[i].1 {
                    let _ = s.send_to(b"probe", a_to);
                }
                while s.recv_from(&mut buf).is_ok() {
                    got[i].0 = true;
                }
            }
            while let Ok((_, from)) = a.recv_from(&mut buf) {
                if let Some(i) = bs
                    .iter()
                    .position(|(addr, _)| SocketAddr::from((*addr, port)) == from)
                {
                    got[i].1 = true;
                }
            }
            got.iter().all(|&(x, y)| x && y).then(|| start.elapsed())
        },
    )
}
