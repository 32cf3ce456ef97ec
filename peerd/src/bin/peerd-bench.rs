//! `peerd-bench`: run by `cargo xtask bench` (needs root). Builds its own topologies (names
//! with the marker `pdb` and the pid, torn down at the end), measures, and writes
//! `results.json`, `REPORT.md` and `chart.svg` into `--out`.
//!
//! Forwarding scenarios, interleaved round by round in one run:
//! - `kernel-fwd+nft` / `kernel-fwd+nft-notrack`: a router namespace with IP forwarding and an
//!   nftables forward chain that accepts exactly the peered (source set, destination set) pairs;
//! - `ceiling-tc` / `ceiling-xdp`: an unconditional redirect (MACs set, no decision) per hook;
//! - `peerd-tc` / `peerd-xdp`: the real datapath, set up by the real daemon code.
use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use aya::{
    maps::HashMap as BpfHashMap,
    programs::{
        links::LinkOrder, tc::TcAttachOptions, SchedClassifier, TcAttachType, TestRun,
        TestRunAttrs, TestRunOptions, Xdp, XdpMode,
    },
};
use peerd::{
    daemon::Daemon,
    datapath::Datapath,
    netns::{self, VpcHostSpec},
    tables::Tables,
};
use peerd_common::{BenchGen, PeeringInfo, RouteTarget, VpcInfo, PEERING_ACTIVE, VPC_PRESENT};
use serde::Serialize;

type Res<T> = Result<T, String>;

fn sh(args: &[&str]) -> Res<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `f` on a thread inside namespace `ns` (None: this one).
fn in_ns_opt<T: Send>(ns: Option<&str>, f: impl FnOnce() -> T + Send) -> T {
    let path = ns.map(|ns| PathBuf::from("/run/netns").join(ns));
    std::thread::scope(|sc| {
        sc.spawn(move || {
            if let Some(path) = path {
                let file = fs::File::open(&path).expect("open netns");
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("setns");
            }
            f()
        })
        .join()
        .expect("namespace thread")
    })
}

/// Runs `f` on a thread inside namespace `ns`.
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    in_ns_opt(Some(ns), f)
}

/// A TC program of the loaded object, loaded into the kernel if it is not yet.
fn tc_prog<'a>(dp: &'a mut Datapath, name: &str) -> Res<&'a mut SchedClassifier> {
    let prog: &mut SchedClassifier = dp
        .ebpf_mut()
        .program_mut(name)
        .ok_or_else(|| format!("no program {name}"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    if prog.fd().is_err() {
        prog.load().map_err(|e| e.to_string())?;
    }
    Ok(prog)
}

/// As `tc_prog`, for XDP.
fn xdp_prog<'a>(dp: &'a mut Datapath, name: &str) -> Res<&'a mut Xdp> {
    let prog: &mut Xdp = dp
        .ebpf_mut()
        .program_mut(name)
        .ok_or_else(|| format!("no program {name}"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    if prog.fd().is_err() {
        prog.load().map_err(|e| e.to_string())?;
    }
    Ok(prog)
}

/// Attaches `prog` at TCX ingress of `ifname` (in the calling thread's namespace).
fn attach_tcx(
    prog: &mut SchedClassifier,
    ifname: &str,
) -> Res<aya::programs::tc::SchedClassifierLinkId> {
    prog.attach_with_options(
        ifname,
        TcAttachType::Ingress,
        TcAttachOptions::TcxOrder(LinkOrder::default()),
    )
    .map_err(|e| format!("attaching to {ifname}: {e}"))
}

/// Sets the generator's template (the first 34 bytes of `frame`) and what it does after.
fn set_gen(dp: &mut Datapath, frame: &[u8], redirect: Option<u32>) -> Res<()> {
    let mut template = [0u8; 40];
    template[..34].copy_from_slice(&frame[..34]);
    let mut gen: aya::maps::Array<_, BenchGen> = aya::maps::Array::try_from(
        dp.ebpf_mut()
            .map_mut("PEERD_BENCH_GEN")
            .ok_or("no PEERD_BENCH_GEN")?,
    )
    .map_err(|e| e.to_string())?;
    let cfg = BenchGen {
        action: redirect.is_some() as u32,
        ifindex: redirect.unwrap_or(0),
        template,
    };
    gen.set(0, cfg, 0).map_err(|e| e.to_string())
}

/// Polls `read` until two readings 10 ms apart agree (what was in flight has landed), for at
/// most a second; returns the last reading.
fn settled(mut read: impl FnMut() -> u64) -> u64 {
    let start = Instant::now();
    let mut last = read();
    loop {
        std::thread::sleep(Duration::from_millis(10));
        let now = read();
        if now == last || start.elapsed() > Duration::from_secs(1) {
            return now;
        }
        last = now;
    }
}

fn pin_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let _ = set.set(cpu % cpus);
    let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
}

// ---------------------------------------------------------------------------------------------
// Topologies

/// One forwarding path: traffic from `src` (in namespace `src_ns`) to `dst` (in `dst_ns`).
struct Path2 {
    name: &'static str,
    src_ns: String,
    src: Ipv4Addr,
    dst_ns: String,
    dst: Ipv4Addr,
    /// Where the live-frames generator injects: namespace (None: root), ifindex there, and the
    /// destination MAC the frames must carry to be accepted there.
    gen_ns: Option<String>,
    gen_ifindex: u32,
    gen_mac: [u8; 6],
    /// The generator passes the frames to the ingress link's stack (its TC program and the
    /// kernel see them; None) or redirects them out of that link (Some: for XDP scenarios, out
    /// of the source VPC's uplink, so the host-side XDP program receives them).
    gen_redirect: Option<u32>,
    /// The destination's link (in `dst_ns`), where the counting sink attaches.
    dst_dev: &'static str,
}

/// Everything the bench created, removed on drop.
#[derive(Default)]
struct Cleanup {
    netns: Vec<String>,
    pins: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in &self.netns {
            let _ = netns::remove_vpc(ns, &netns::host_ifname(ns));
        }
        for p in self.pins.iter().chain(&self.dirs) {
            let _ = fs::remove_dir_all(p);
        }
    }
}

fn add_lo_addr(ns: &str, a: Ipv4Addr) -> Res<()> {
    let cidr = format!("{a}/32");
    let have = sh(&["ip", "-n", ns, "addr", "show", "dev", "lo"])?;
    if !have.contains(&format!(" {cidr} ")) {
        sh(&["ip", "-n", ns, "addr", "add", &cidr, "dev", "lo"])?;
    }
    Ok(())
}

/// The operator's alternative: A -- R -- B, R forwards, nftables allows exactly the peered
/// pairs (with conntrack, or with notrack).
fn kernel_fwd(prefix: &str, conntrack: bool, c: &mut Cleanup) -> Res<Path2> {
    let tag = if conntrack { "k" } else { "n" };
    let (a, r, b) = (
        format!("{prefix}{tag}a"),
        format!("{prefix}{tag}r"),
        format!("{prefix}{tag}b"),
    );
    for ns in [&a, &r, &b] {
        sh(&["ip", "netns", "add", ns])?;
        c.netns.push(ns.clone());
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
    }
    // veth pairs created inside the namespaces so no link ever appears in the root namespace.
    sh(&[
        "ip", "-n", &a, "link", "add", "eth0", "type", "veth", "peer", "name", "ra", "netns", &r,
    ])?;
    sh(&[
        "ip", "-n", &b, "link", "add", "eth0", "type", "veth", "peer", "name", "rb", "netns", &r,
    ])?;
    for (ns, dev, addr) in [
        (&a, "eth0", "10.1.255.2/24"),
        (&r, "ra", "10.1.255.1/24"),
        (&r, "rb", "10.2.255.1/24"),
        (&b, "eth0", "10.2.255.2/24"),
    ] {
        sh(&["ip", "-n", ns, "addr", "add", addr, "dev", dev])?;
        sh(&["ip", "-n", ns, "link", "set", dev, "up"])?;
    }
    sh(&[
        "ip",
        "-n",
        &a,
        "route",
        "add",
        "10.2.0.0/16",
        "via",
        "10.1.255.1",
    ])?;
    sh(&[
        "ip",
        "-n",
        &b,
        "route",
        "add",
        "10.1.0.0/16",
        "via",
        "10.2.255.1",
    ])?;
    sh(&[
        "ip",
        "-n",
        &r,
        "route",
        "add",
        "10.1.0.0/16",
        "via",
        "10.1.255.2",
    ])?;
    sh(&[
        "ip",
        "-n",
        &r,
        "route",
        "add",
        "10.2.0.0/16",
        "via",
        "10.2.255.2",
    ])?;
    sh(&[
        "ip",
        "netns",
        "exec",
        &r,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ])?;
    let track = if conntrack {
        "ct state established,related accept\n"
    } else {
        ""
    };
    let raw = if conntrack {
        String::new()
    } else {
        "chain raw {\n type filter hook prerouting priority raw;\n notrack\n }\n".to_owned()
    };
    let rules = format!(
        "table inet peering {{\n set a4 {{ type ipv4_addr; flags interval; elements = {{ 10.1.0.0/16 }} }}\n set b4 {{ type ipv4_addr; flags interval; elements = {{ 10.2.0.0/16 }} }}\n {raw} chain forward {{ type filter hook forward priority filter; policy drop;\n {track} ip saddr @a4 ip daddr @b4 accept\n ip saddr @b4 ip daddr @a4 accept\n }}\n}}\n"
    );
    let mut nft = Command::new("ip")
        .args(["netns", "exec", &r, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    nft.stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .map_err(|e| e.to_string())?;
    if !nft.wait().map_err(|e| e.to_string())?.success() {
        return Err(format!("nft rejected:\n{rules}"));
    }
    let (sa, da) = (Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(10, 2, 0, 1));
    add_lo_addr(&a, sa)?;
    add_lo_addr(&b, da)?;
    let (gen_ifindex, gen_mac) = link_info(&r, "ra")?;
    Ok(Path2 {
        name: if conntrack {
            "kernel-fwd+nft"
        } else {
            "kernel-fwd+nft-notrack"
        },
        src_ns: a,
        src: sa,
        dst_ns: b,
        dst: da,
        gen_ns: Some(r),
        gen_ifindex,
        gen_mac,
        gen_redirect: None,
        dst_dev: "eth0",
    })
}

/// ifindex and MAC of `dev` in the root namespace.
fn link_root(dev: &str) -> Res<(u32, [u8; 6])> {
    let out = sh(&["ip", "-o", "link", "show", "dev", dev])?;
    parse_link(&out)
}

fn parse_link(out: &str) -> Res<(u32, [u8; 6])> {
    let idx: u32 = out
        .split(':')
        .next()
        .unwrap_or("")
        .trim()
        .parse()
        .map_err(|_| format!("ifindex: {out}"))?;
    let mac = out
        .split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .ok_or("no MAC")?;
    let mut m = [0u8; 6];
    for (i, b) in mac.split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(b, 16).map_err(|e| e.to_string())?;
    }
    Ok((idx, m))
}

/// ifindex and MAC of `dev` in namespace `ns`.
fn link_info(ns: &str, dev: &str) -> Res<(u32, [u8; 6])> {
    let out = sh(&["ip", "-n", ns, "-o", "link", "show", "dev", dev])?;
    parse_link(&out)
}

fn peer_config(prefix: &str, dir: &Path, mode: &str, pins: &Path) -> String {
    format!(
        "[daemon]\nnetns_prefix = \"{prefix}\"\ndatapath = \"{mode}\"\nstate_dir = \"{}\"\npin_dir = \"{}\"\nsocket = \"{}\"\n\n[[vpc]]\nname = \"a\"\ncidrs = [\"10.1.0.0/16\"]\n  [[vpc.peering]]\n  id = \"pcx-ab\"\n  peer = \"b\"\n[[vpc]]\nname = \"b\"\ncidrs = [\"10.2.0.0/16\"]\n  [[vpc.peering]]\n  id = \"pcx-ab\"\n  peer = \"a\"\n",
        dir.join("state").display(),
        pins.display(),
        dir.join("sock").display()
    )
}

/// peerd itself, set up by the daemon's own code.
fn peerd_path(prefix: &str, mode: &'static str, c: &mut Cleanup) -> Res<(Path2, Daemon)> {
    let p = format!("{prefix}{}-", if mode == "tc" { "t" } else { "x" });
    let dir = std::env::temp_dir().join(format!("{p}dir"));
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let pins = PathBuf::from("/sys/fs/bpf").join(format!("{p}pins"));
    c.dirs.push(dir.clone());
    c.pins.push(pins.clone());
    c.netns.push(format!("{p}a"));
    c.netns.push(format!("{p}b"));
    let cfg = dir.join("peerd.toml");
    fs::write(&cfg, peer_config(&p, &dir, mode, &pins)).map_err(|e| e.to_string())?;
    let d = Daemon::start(&cfg).map_err(|e| e.to_string())?;
    let (sa, da) = (Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(10, 2, 0, 1));
    add_lo_addr(&format!("{p}a"), sa)?;
    add_lo_addr(&format!("{p}b"), da)?;
    let name = if mode == "tc" {
        "peerd-tc"
    } else {
        "peerd-xdp"
    };
    let host_if = netns::host_ifname(&format!("{p}a"));
    let (host_ifindex, host_mac) = link_root(&host_if)?;
    let (up_ifindex, _) = link_info(&format!("{p}a"), "peerd0")?;
    let xdp = mode == "xdp";
    Ok((
        Path2 {
            name,
            src_ns: format!("{p}a"),
            src: sa,
            dst_ns: format!("{p}b"),
            dst: da,
            gen_ns: xdp.then(|| format!("{p}a")),
            gen_ifindex: if xdp { up_ifindex } else { host_ifindex },
            gen_mac: host_mac,
            gen_redirect: xdp.then_some(up_ifindex),
            dst_dev: "peerd0",
        },
        d,
    ))
}

/// Two VPC-like namespaces `{p}a` (10.1.0.1) and `{p}b` (10.2.0.1), each routing the other's
/// /16 to its gateway; their host state, in that order.
fn vpc_pair(p: &str, xdp: bool, c: &mut Cleanup) -> Res<[netns::VpcHostState; 2]> {
    let mut hosts = Vec::new();
    for (v, route) in [("a", "10.2.0.0/16"), ("b", "10.1.0.0/16")] {
        let ns = format!("{p}{v}");
        c.netns.push(ns.clone());
        let spec = VpcHostSpec {
            netns: ns.clone(),
            host_if: netns::host_ifname(&ns),
            mtu: 1500,
            routes: vec![route.parse().unwrap()],
            xdp: Some(xdp),
        };
        let (h, _) = netns::ensure_vpc(&spec).map_err(|e| e.to_string())?;
        hosts.push(h);
    }
    add_lo_addr(&format!("{p}a"), PAIR_SRC)?;
    add_lo_addr(&format!("{p}b"), PAIR_DST)?;
    Ok([hosts[0], hosts[1]])
}

const PAIR_SRC: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const PAIR_DST: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 1);

/// The ceiling of a hook: two VPC-like namespaces, an unconditional redirect program on each
/// host-side veth. The returned datapath owns the (unpinned) links.
fn ceiling_path(prefix: &str, xdp: bool, c: &mut Cleanup) -> Res<(Path2, Datapath)> {
    let p = format!("{prefix}{}-", if xdp { "cx" } else { "ct" });
    let pins = PathBuf::from("/sys/fs/bpf").join(format!("{p}pins"));
    c.pins.push(pins.clone());
    let hosts = vpc_pair(&p, xdp, c)?;
    let mut dp = Datapath::load(&pins).map_err(|e| e.to_string())?;
    {
        let mut bench: BpfHashMap<_, u32, VpcInfo> = BpfHashMap::try_from(
            dp.ebpf_mut()
                .map_mut("PEERD_BENCH")
                .ok_or("no PEERD_BENCH")?,
        )
        .map_err(|e| e.to_string())?;
        for (from, to) in [(&hosts[0], &hosts[1]), (&hosts[1], &hosts[0])] {
            let v = VpcInfo {
                host_ifindex: to.host_ifindex,
                flags: VPC_PRESENT,
                ns_mac: to.ns_mac,
                gw_mac: to.host_mac,
            };
            bench
                .insert(from.host_ifindex, v, 0)
                .map_err(|e| e.to_string())?;
        }
    }
    for v in ["a", "b"] {
        let host_if = netns::host_ifname(&format!("{p}{v}"));
        if xdp {
            xdp_prog(&mut dp, "bench_redirect_xdp")?
                .attach(&host_if, XdpMode::Driver)
                .map_err(|e| e.to_string())?;
        } else {
            attach_tcx(tc_prog(&mut dp, "bench_redirect_tc")?, &host_if)?;
        }
    }
    let name = if xdp { "ceiling-xdp" } else { "ceiling-tc" };
    Ok((
        Path2 {
            name,
            src_ns: format!("{p}a"),
            src: PAIR_SRC,
            dst_ns: format!("{p}b"),
            dst: PAIR_DST,
            gen_ns: xdp.then(|| format!("{p}a")),
            gen_ifindex: if xdp {
                hosts[0].ns_ifindex
            } else {
                hosts[0].host_ifindex
            },
            gen_mac: hosts[0].host_mac,
            gen_redirect: xdp.then_some(hosts[0].ns_ifindex),
            dst_dev: "peerd0",
        },
        dp,
    ))
}

/// A real pair of VPC namespaces whose host-side links run the loaded datapath's `peerd_tc`
/// (attached here, detached when the datapath is dropped): the scale rows' hot pair.
struct HotPair {
    path: Path2,
    hosts: [netns::VpcHostState; 2],
}

impl HotPair {
    /// Points VPC slots 1 and 2 of `t` (the hot pair of `scale_tables`) at the real links.
    fn patch(&self, t: &mut Tables) {
        for (slot, h) in [(1u32, &self.hosts[0]), (2, &self.hosts[1])] {
            t.ifaces.insert(h.host_ifindex, slot);
            t.vpcs.insert(
                slot,
                VpcInfo {
                    host_ifindex: h.host_ifindex,
                    flags: VPC_PRESENT,
                    ns_mac: h.ns_mac,
                    gw_mac: h.host_mac,
                },
            );
        }
    }
}

fn scale_path(prefix: &str, dp: &mut Datapath, c: &mut Cleanup) -> Res<HotPair> {
    let p = format!("{prefix}s-");
    let hosts = vpc_pair(&p, false, c)?;
    for v in ["a", "b"] {
        attach_tcx(
            tc_prog(dp, "peerd_tc")?,
            &netns::host_ifname(&format!("{p}{v}")),
        )?;
    }
    Ok(HotPair {
        path: Path2 {
            name: "peerd-tc (scale)",
            src_ns: format!("{p}a"),
            src: PAIR_SRC,
            dst_ns: format!("{p}b"),
            dst: PAIR_DST,
            gen_ns: None,
            gen_ifindex: hosts[0].host_ifindex,
            gen_mac: hosts[0].host_mac,
            gen_redirect: None,
            dst_dev: "peerd0",
        },
        hosts,
    })
}

// ---------------------------------------------------------------------------------------------
// Measurements

/// 64-byte frames (18-byte UDP payload) sent with sendmmsg from a sender pinned to CPU 0 for
/// `secs`; the sink (CPU 1) counts what arrives. Returns received packets per second.
fn pps(p: &Path2, secs: f64) -> f64 {
    let port = 9000;
    let dst = SocketAddr::new(p.dst.into(), port);
    let src = SocketAddr::new(p.src.into(), 0);
    let rx = in_ns(&p.dst_ns, move || UdpSocket::bind(dst).expect("bind sink"));
    let tx = in_ns(&p.src_ns, move || {
        UdpSocket::bind(src).expect("bind sender")
    });
    tx.connect(dst).expect("connect");
    rx.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let (s2, c2) = (stop.clone(), count.clone());
    let sink = std::thread::spawn(move || {
        pin_cpu(1);
        let mut bufs = vec![[0u8; 64]; 64];
        while !s2.load(Ordering::Relaxed) {
            let n = recv_batch(&rx, &mut bufs);
            c2.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    let deadline = Duration::from_secs_f64(secs);
    let sender = std::thread::spawn(move || {
        pin_cpu(0);
        let payload = [0x42u8; 18];
        let start = Instant::now();
        while start.elapsed() < deadline {
            send_batch(&tx, &payload, 64);
        }
    });
    // Count only the steady window: skip the first 10%.
    std::thread::sleep(deadline.mul_f64(0.1));
    let c0 = count.load(Ordering::Relaxed);
    let t0 = Instant::now();
    sender.join().unwrap();
    let c1 = count.load(Ordering::Relaxed);
    let dt = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    sink.join().unwrap();
    (c1 - c0) as f64 / dt
}

/// Live-frames generator into a counting TC sink on the destination link: packets per second
/// the path delivers.
fn pps_sink(dp: &mut Datapath, p: &Path2, frames: u32) -> Res<f64> {
    // Attached from inside the destination namespace (ifindex lookups are per namespace).
    let sink = tc_prog(dp, "bench_sink_tc")?;
    let link_id = in_ns(&p.dst_ns, || attach_tcx(sink, p.dst_dev))?;
    let read = |dp: &mut Datapath| -> u64 {
        let m: aya::maps::PerCpuArray<_, u64> = match dp
            .ebpf_mut()
            .map("PEERD_BENCH_SINK")
            .map(aya::maps::PerCpuArray::try_from)
        {
            Some(Ok(m)) => m,
            _ => return 0,
        };
        m.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
    };
    let before = read(dp);
    let gen = generator(dp, p)?;
    let elapsed = run_generator(gen, p, frames)?;
    let after = settled(|| read(dp));
    tc_prog(dp, "bench_sink_tc")?
        .detach(link_id)
        .map_err(|e| e.to_string())?;
    Ok((after - before) as f64 / elapsed.as_secs_f64())
}

/// Runs the generator for `frames` frames from CPU 0 (inside the generator's namespace).
fn run_generator(gen: &mut Xdp, p: &Path2, frames: u32) -> Res<Duration> {
    let mut frame = frame_v4(p.src.octets(), p.dst.octets());
    frame[0..6].copy_from_slice(&p.gen_mac);
    frame[36..38].copy_from_slice(&9000u16.to_be_bytes());
    // struct xdp_md: data 0, data_end = size, ingress_ifindex at 12.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&p.gen_ifindex.to_ne_bytes());
    let (elapsed, result) = in_ns_opt(p.gen_ns.as_deref(), || {
        pin_cpu(0);
        let t = Instant::now();
        let r = gen.test_run(TestRunOptions {
            data_in: Some(&frame),
            ctx_in: Some(&ctx),
            repeat: frames,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..Default::default()
        });
        (
            t.elapsed(),
            r.map(|_| ()).map_err(|e| format!("live frames: {e}")),
        )
    });
    result?;
    Ok(elapsed)
}

/// The generator program, configured for path `p`.
fn generator<'a>(dp: &'a mut Datapath, p: &Path2) -> Res<&'a mut Xdp> {
    let mut frame = frame_v4(p.src.octets(), p.dst.octets());
    frame[0..6].copy_from_slice(&p.gen_mac);
    set_gen(dp, &frame, p.gen_redirect)?;
    xdp_prog(dp, "bench_gen_xdp")
}

fn pps_live(p: &Path2, gen: &mut Xdp, frames: u32) -> Res<f64> {
    let dst = SocketAddr::new(p.dst.into(), 9000);
    let rx = in_ns(&p.dst_ns, move || UdpSocket::bind(dst).expect("bind sink"));
    set_rcvbuf(&rx, 32 << 20);
    rx.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let (s2, c2) = (stop.clone(), count.clone());
    let sink = std::thread::spawn(move || {
        pin_cpu(1);
        let mut bufs = vec![[0u8; 64]; 64];
        while !s2.load(Ordering::Relaxed) {
            let n = recv_batch(&rx, &mut bufs);
            c2.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    let c0 = count.load(Ordering::Relaxed);
    let elapsed = run_generator(gen, p, frames);
    let c1 = settled(|| count.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    sink.join().unwrap();
    Ok((c1 - c0) as f64 / elapsed?.as_secs_f64())
}

fn set_rcvbuf(s: &UdpSocket, bytes: i32) {
    // SAFETY: valid fd and option pointer/size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &bytes as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as u32,
        );
    }
}

fn send_batch(s: &UdpSocket, payload: &[u8], n: usize) {
    let mut iov: Vec<libc::iovec> = (0..n)
        .map(|_| libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            // SAFETY: all-zero msghdr is valid; fields set below.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    // SAFETY: msgs point at valid iovecs for the call.
    unsafe { libc::sendmmsg(s.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
}

fn recv_batch(s: &UdpSocket, bufs: &mut [[u8; 64]]) -> usize {
    let mut iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            // SAFETY: as in send_batch.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    // SAFETY: msgs point at valid buffers for the call.
    let n = unsafe {
        libc::recvmmsg(
            s.as_raw_fd(),
            msgs.as_mut_ptr(),
            msgs.len() as u32,
            libc::MSG_WAITFORONE,
            std::ptr::null_mut(),
        )
    };
    n.max(0) as usize
}

/// TCP throughput with iperf3 (Gbit/s).
fn tcp(p: &Path2, streams: u32, secs: u32) -> Res<f64> {
    let port = "5301";
    let dst = p.dst.to_string();
    let mut server = Command::new("ip")
        .args([
            "netns", "exec", &p.dst_ns, "iperf3", "-s", "-1", "-B", &dst, "-p", port,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("iperf3: {e}"))?;
    // Ready once it listens (a probe connection would be taken as a test by iperf3).
    let ready = Instant::now();
    while !sh(&[
        "ip", "netns", "exec", &p.dst_ns, "ss", "-Hltn", "sport", "=", ":5301",
    ])
    .unwrap_or_default()
    .contains("5301")
    {
        if ready.elapsed() > Duration::from_secs(5) {
            let _ = server.kill();
            let _ = server.wait();
            return Err("iperf3 server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &p.src_ns,
            "iperf3",
            "-c",
            &dst,
            "-B",
            &p.src.to_string(),
            "-p",
            port,
            "-t",
            &secs.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ])
        .output()
        .map_err(|e| e.to_string())?;
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("iperf3 output: {e}"))?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| format!("iperf3: {}", v["error"]))
}

/// UDP request/response round trips: (p50, p99) in microseconds.
fn latency(p: &Path2, n: usize) -> (f64, f64) {
    let dst = SocketAddr::new(p.dst.into(), 9100);
    let src = SocketAddr::new(p.src.into(), 0);
    let server = in_ns(&p.dst_ns, move || UdpSocket::bind(dst).unwrap());
    server
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let client = in_ns(&p.src_ns, move || UdpSocket::bind(src).unwrap());
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let echo = std::thread::spawn(move || {
        pin_cpu(1);
        let mut buf = [0u8; 64];
        while let Ok((len, from)) = server.recv_from(&mut buf) {
            if len == 1 && buf[0] == 0xff {
                return;
            }
            let _ = server.send_to(&buf[..len], from);
        }
    });
    // The client runs on the caller's thread, which the forwarding section pins to CPU 0.
    let mut rtts = Vec::with_capacity(n);
    let mut buf = [0u8; 64];
    for i in 0..n + 100 {
        let t = Instant::now();
        client.send_to(&(i as u64).to_be_bytes(), dst).unwrap();
        if client.recv_from(&mut buf).is_ok() && i >= 100 {
            rtts.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    let _ = client.send_to(&[0xff], dst);
    let _ = echo.join();
    rtts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |f: f64| {
        rtts.get(((rtts.len() as f64 * f) as usize).min(rtts.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    (q(0.50), q(0.99))
}

// ---------------------------------------------------------------------------------------------
// Program cost (BPF_PROG_TEST_RUN)

fn frame_v4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 0xfe, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    let mut ip = vec![0x45, 0, 0, 46, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let sum: u32 = ip
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum();
    let sum = (sum & 0xffff) + (sum >> 16);
    let c = !((sum & 0xffff) + (sum >> 16)) as u16;
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0x9c, 0x40, 0, 7, 0, 26, 0, 0]);
    f.extend_from_slice(&[0x42; 18]);
    f
}

fn frame_v6(src: u128, dst: u128) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 0xfe, 2, 0, 0, 0, 0, 1, 0x86, 0xdd];
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 26, 17, 64]);
    f.extend_from_slice(&src.to_be_bytes());
    f.extend_from_slice(&dst.to_be_bytes());
    f.extend_from_slice(&[0x9c, 0x40, 0, 7, 0, 26, 0, 0]);
    f.extend_from_slice(&[0x42; 18]);
    f
}

/// `vpcs` VPCs, each with `routes` routes in its main table; VPC 1 and 2 are the hot pair
/// (10.1/16 and 10.2/16, fd00:1::/48 and fd00:2::/48). Other VPCs get 11.x.y.0/24 blocks.
fn scale_tables(vpcs: u32, routes: u32) -> Tables {
    let mut t = Tables::default();
    let cidr4 = |v: u32| -> ipnet::IpNet {
        if v <= 2 {
            format!("10.{v}.0.0/16").parse().unwrap()
        } else {
            format!("11.{}.{}.0/24", v / 256, v % 256).parse().unwrap()
        }
    };
    for v in 1..=vpcs.max(2) {
        t.ifaces.insert(1, 1);
        t.vpcs.insert(
            v,
            VpcInfo {
                host_ifindex: 1000 + v,
                flags: VPC_PRESENT,
                ns_mac: [2, 1, 0, 0, 0, v as u8],
                gw_mac: [2, 2, 0, 0, 0, v as u8],
            },
        );
        t.src.insert((v, cidr4(v)), v);
        t.src
            .insert((v, format!("fd00:{v:x}::/48").parse().unwrap()), v);
        let other = if v == 1 { 2 } else { 1 };
        t.peerings.insert(
            v,
            PeeringInfo {
                state: PEERING_ACTIVE,
                vpc_a: v.min(other),
                vpc_b: v.max(other),
                _pad: 0,
            },
        );
        // The route to the peer, then filler routes (other /32s inside 12.0.0.0/8).
        t.routes.insert(
            (v, cidr4(other)),
            RouteTarget {
                peering: 1,
                dst_vpc: other,
                flags: peerd_common::ROUTE_INSIDE_DST,
                _pad: 0,
            },
        );
        t.routes.insert(
            (v, format!("fd00:{other:x}::/48").parse().unwrap()),
            RouteTarget {
                peering: 1,
                dst_vpc: other,
                flags: peerd_common::ROUTE_INSIDE_DST,
                _pad: 0,
            },
        );
        for r in 2..routes {
            let a = Ipv4Addr::from(0x0c00_0000u32 + r);
            t.routes.insert(
                (v, ipnet::IpNet::new(a.into(), 32).unwrap()),
                RouteTarget {
                    peering: 1,
                    dst_vpc: other,
                    ..Default::default()
                },
            );
        }
    }
    t.peerings.insert(
        1,
        PeeringInfo {
            state: PEERING_ACTIVE,
            vpc_a: 1,
            vpc_b: 2,
            _pad: 0,
        },
    );
    t
}

fn cost_of(dp: &mut Datapath, which: &str, frame: &[u8], repeat: u32) -> Res<f64> {
    // The restore template: the frame's own headers.
    set_gen(dp, frame, None)?;
    // The TC programs see ingress_ifindex 1 (lo) through the context; XDP test runs get lo.
    let mut ctx = [0u8; 192];
    ctx[36..40].copy_from_slice(&1u32.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 64];
    let r = if which.ends_with("_tc") {
        tc_prog(dp, which)?.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..Default::default()
        })
    } else {
        xdp_prog(dp, which)?.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })
    }
    .map_err(|e| format!("test_run {which}: {e}"))?;
    Ok(r.duration.as_nanos() as f64)
}

// ---------------------------------------------------------------------------------------------
// Results

#[derive(Serialize, Default)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
    samples: Vec<f64>,
}

fn stat(mut v: Vec<f64>) -> Stat {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    };
    Stat {
        median,
        min: *v.first().unwrap_or(&f64::NAN),
        max: *v.last().unwrap_or(&f64::NAN),
        samples: v,
    }
}

#[derive(Serialize)]
struct ScaleRow {
    tables: String,
    cost_over_baseline_ns: Stat,
    pps_64b: Stat,
    sync_s: f64,
}

#[derive(Serialize, Default)]
struct Results {
    machine: BTreeMap<String, String>,
    rounds: usize,
    /// scenario -> metric -> stat
    forwarding: BTreeMap<String, BTreeMap<String, Stat>>,
    /// name -> ns per packet (average over the repeats), and minus the empty program's cost.
    program_cost_ns: BTreeMap<String, f64>,
    program_cost_over_empty_ns: BTreeMap<String, f64>,
    /// "routes/VPC=R VPCs=V" -> IPv4 forward of the hot pair: program cost over the baseline,
    /// 64-byte rate of a real pair, time to write the tables.
    scale: Vec<ScaleRow>,
    map_bytes_per_route: Option<f64>,
    control_plane: BTreeMap<String, f64>,
    notes: Vec<String>,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("peerd-bench: {e}");
        std::process::exit(1);
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn run() -> Res<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds: usize = arg("--rounds")
        .and_then(|r| r.parse().ok())
        .unwrap_or(if quick { 1 } else { 5 });
    let out = PathBuf::from(arg("--out").unwrap_or_else(|| "bench".into()));
    fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    peerd::datapath::ensure_bpffs().map_err(|e| e.to_string())?;
    let prefix = format!("pdb{}", std::process::id() % 100_000);
    let mut c = Cleanup::default();
    let mut res = Results {
        rounds,
        ..Default::default()
    };
    res.machine.insert(
        "cpus".into(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .to_string(),
    );
    res.machine.insert(
        "kernel".into(),
        sh(&["uname", "-r"]).unwrap_or_default().trim().to_owned(),
    );
    if let Ok(cpuinfo) = fs::read_to_string("/proc/cpuinfo") {
        if let Some(m) = cpuinfo.lines().find(|l| l.starts_with("model name")) {
            res.machine.insert(
                "cpu".into(),
                m.split(':').nth(1).unwrap_or("").trim().to_owned(),
            );
        }
    }

    let only = arg("--only").unwrap_or_else(|| "cost,forwarding,control".into());
    let section = |name: &str| only.split(',').any(|s| s == name);

    // 1. Program cost, and the forwarding rate of one hot pair as the tables grow.
    let repeat = if quick { 100_000 } else { 1_000_000 };
    let pins = PathBuf::from("/sys/fs/bpf").join(format!("{prefix}-cost"));
    c.pins.push(pins.clone());
    let mut dp = Datapath::load(&pins).map_err(|e| e.to_string())?;
    if section("cost") {
        eprintln!("program cost ...");
        dp.sync(&scale_tables(2, 2)).map_err(|e| e.to_string())?;
        let f4 = frame_v4([10, 1, 0, 1], [10, 2, 0, 1]);
        let f6 = frame_v6(
            0xfd00_0001_0000_0000_0000_0000_0000_0001,
            0xfd00_0002_0000_0000_0000_0000_0000_0001,
        );
        let spoofed = frame_v4([10, 9, 0, 1], [10, 2, 0, 1]);
        let no_route = frame_v4([10, 1, 0, 1], [10, 9, 0, 1]);
        let cases: [(&str, &str, &Vec<u8>); 10] = [
            ("empty-tc", "bench_empty_tc", &f4),
            ("restore-tc", "bench_restore_tc", &f4),
            ("ceiling-tc", "bench_redirect_tc", &f4),
            ("peerd-tc forward IPv4", "bench_peerd_tc", &f4),
            ("peerd-tc forward IPv6", "bench_peerd_tc", &f6),
            ("peerd-tc drop (spoofed source)", "bench_peerd_tc", &spoofed),
            ("peerd-tc drop (no route)", "bench_peerd_tc", &no_route),
            ("empty-xdp", "bench_empty_xdp", &f4),
            ("restore-xdp", "bench_restore_xdp", &f4),
            ("peerd-xdp forward IPv4", "bench_peerd_xdp", &f4),
        ];
        // Interleave the cases, keep the median of rounds.
        let mut samples: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for _ in 0..rounds.max(3) {
            for (name, prog, frame) in &cases {
                samples
                    .entry(name)
                    .or_default()
                    .push(cost_of(&mut dp, prog, frame, repeat)?);
            }
        }
        for (name, v) in samples {
            res.program_cost_ns.insert(name.to_owned(), stat(v).median);
        }
        // peerd's cost is over the program that only restores the headers (the same work
        // minus the decision); the ceiling's over the empty program.
        let pc = res.program_cost_ns.clone();
        for (k, v) in &pc {
            let xdp = k.contains("xdp");
            let base = match (k.starts_with("peerd"), xdp) {
                (true, false) => pc["restore-tc"],
                (true, true) => pc["restore-xdp"],
                (false, false) => pc["empty-tc"],
                (false, true) => pc["empty-xdp"],
            };
            if !k.starts_with("empty") {
                res.program_cost_over_empty_ns.insert(k.clone(), v - base);
            }
        }
    }
    if section("cost") || section("scale") {
        // Scale: routes per VPC, VPCs present. Cost with BPF_PROG_TEST_RUN, and the rate of a
        // real hot pair (two namespaces whose links run this datapath) with the same tables.
        eprintln!("scale ...");
        // Its own cleanup: gone before the next section starts.
        let mut sc = Cleanup::default();
        let hot = scale_path(&format!("{prefix}-"), &mut dp, &mut sc)?;
        let f4 = frame_v4([10, 1, 0, 1], [10, 2, 0, 1]);
        let grid: &[(u32, u32)] = if quick {
            &[(2, 1), (2, 100)]
        } else {
            &[(2, 1), (2, 100), (2, 10_000), (100, 100), (1000, 100)]
        };
        let frames: u32 = if quick { 300_000 } else { 2_000_000 };
        for &(vpcs, routes) in grid {
            let mut t = scale_tables(vpcs, routes);
            hot.patch(&mut t);
            let t0 = Instant::now();
            dp.sync(&t).map_err(|e| e.to_string())?;
            let sync_s = t0.elapsed().as_secs_f64();
            let (mut cost, mut rate) = (Vec::new(), Vec::new());
            for _ in 0..rounds.max(3) {
                let e = cost_of(&mut dp, "bench_restore_tc", &f4, repeat)?;
                let p = cost_of(&mut dp, "bench_peerd_tc", &f4, repeat)?;
                cost.push(p - e);
                rate.push(pps_sink(&mut dp, &hot.path, frames)?);
            }
            let key = format!(
                "routes/VPC={routes} VPCs={vpcs} (routes in all {})",
                t.routes.len()
            );
            res.scale.push(ScaleRow {
                tables: key,
                cost_over_baseline_ns: stat(cost),
                pps_64b: stat(rate),
                sync_s,
            });
            if vpcs == 1000 || (quick && routes == 100) {
                res.map_bytes_per_route = map_bytes_per_route(t.routes.len());
            }
        }
    }

    // 2. Forwarding, interleaved.
    if section("forwarding") {
        eprintln!("building forwarding topologies ...");
        // Declared before what uses them: removed last, and before the control plane runs
        // (live topologies with programs attached slow its setup down).
        let mut fc = Cleanup::default();
        // The whole section runs with this thread, and every thread and process it starts
        // (iperf3 among them), on CPU 0 unless a measurement pins one elsewhere (the sinks and
        // the echo server on CPU 1); the previous affinity comes back afterwards, so the
        // control plane below runs on every CPU.
        let pid = nix::unistd::Pid::from_raw(0);
        let saved = nix::sched::sched_getaffinity(pid).map_err(|e| e.to_string())?;
        pin_cpu(0);
        let mut paths = Vec::new();
        paths.push(kernel_fwd(&format!("{prefix}-"), true, &mut fc)?);
        paths.push(kernel_fwd(&format!("{prefix}-"), false, &mut fc)?);
        let (ct, _ct_dp) = ceiling_path(&format!("{prefix}-"), false, &mut fc)?;
        let (cx, _cx_dp) = ceiling_path(&format!("{prefix}-"), true, &mut fc)?;
        let (pt, _pt_d) = peerd_path(&format!("{prefix}-"), "tc", &mut fc)?;
        let (px, _px_d) = peerd_path(&format!("{prefix}-"), "xdp", &mut fc)?;
        paths.extend([ct, cx, pt, px]);
        let secs = if quick { 0.5 } else { 2.0 };
        let frames: u32 = if quick { 300_000 } else { 2_000_000 };
        let tcp_secs = if quick { 1 } else { 3 };
        let mut samples: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
        for round in 0..rounds {
            eprintln!("round {}/{rounds} ...", round + 1);
            for p in &paths {
                let mut push = |m: &str, v: f64| {
                    samples
                        .entry((p.name.to_owned(), m.to_owned()))
                        .or_default()
                        .push(v)
                };
                let gen = generator(&mut dp, p);
                let r = gen.and_then(|g| pps_live(p, g, frames));
                if std::env::var_os("PEERD_BENCH_DEBUG").is_some() {
                    eprintln!("{}: {r:?}", p.name);
                    for d in [&_pt_d, &_px_d] {
                        let st = d.status();
                        eprintln!(
                            "  drops {:?} fwd {:?}",
                            st.vpcs
                                .iter()
                                .map(|v| (&v.name, &v.drops))
                                .collect::<Vec<_>>(),
                            st.peerings.iter().map(|p| &p.forwarded).collect::<Vec<_>>()
                        );
                    }
                    let _ = Command::new("ip")
                        .args([
                            "netns",
                            "exec",
                            &p.dst_ns,
                            "nstat",
                            "-az",
                            "UdpInErrors",
                            "UdpRcvbufErrors",
                            "UdpInDatagrams",
                            "IpInReceives",
                            "IpInAddrErrors",
                            "IpInDiscards",
                        ])
                        .status();
                }
                match r {
                    Ok(v) => push("pps_64B_udp_sink", v),
                    Err(e) => res.notes.push(format!("{}: {e}", p.name)),
                }
                push("pps_64B_socket_sender", pps(p, secs));
                match pps_sink(&mut dp, p, frames) {
                    Ok(v) => push("pps_64B", v),
                    Err(e) => res.notes.push(format!("{}: {e}", p.name)),
                }
                match tcp(p, 1, tcp_secs) {
                    Ok(g) => push("tcp_1_stream_gbps", g),
                    Err(e) => res.notes.push(format!("{}: {e}", p.name)),
                }
                if let Ok(g) = tcp(p, 4, tcp_secs) {
                    push("tcp_4_streams_gbps", g);
                }
                let (p50, p99) = latency(p, if quick { 500 } else { 3000 });
                push("latency_p50_us", p50);
                push("latency_p99_us", p99);
            }
        }
        for ((s, m), v) in samples {
            res.forwarding.entry(s).or_default().insert(m, stat(v));
        }
        drop(paths);
        nix::sched::sched_setaffinity(pid, &saved).map_err(|e| e.to_string())?;
    }
    drop(dp);

    // 3. Control plane.
    let custom: Vec<usize> = arg("--vpcs")
        .map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    let sizes: &[usize] = if !section("control") {
        &[]
    } else if !custom.is_empty() {
        &custom
    } else if quick {
        &[1, 100]
    } else {
        &[1, 100, 1000]
    };
    // Deleted namespaces are freed by the kernel in the background (cleanup_net), taking the
    // same locks and grace periods a setup needs: each size starts once the previous size's
    // namespaces are gone, so it is measured on a quiet kernel.
    let baseline = netns_objects();
    for &n in sizes {
        if !netns_freed(baseline) {
            res.notes.push(format!(
                "control plane at {n} VPCs: started while the kernel was still freeing namespaces"
            ));
        }
        eprintln!("control plane, {n} VPCs ...");
        match control_plane(&format!("{prefix}-"), n, &mut res) {
            Ok(()) => {}
            Err(e) => res.notes.push(format!("control plane at {n} VPCs: {e}")),
        }
    }
    drop(c);

    write_results(&out, &res)
}

/// Memory the route trie uses per entry, from the kernel's own accounting (fdinfo memlock).
fn map_bytes_per_route(routes: usize) -> Option<f64> {
    let ids: Vec<u32> = aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .filter(|m| m.name_as_str() == Some("PEERD_ROUTES_V4"))
        .map(|m| m.id())
        .collect();
    for e in fs::read_dir("/proc/self/fdinfo").ok()?.flatten() {
        let text = fs::read_to_string(e.path()).unwrap_or_default();
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_owned())
        };
        if let (Some(id), Some(mem)) = (field("map_id:"), field("memlock:")) {
            if ids.iter().any(|i| i.to_string() == id) {
                let v4_routes = routes / 2 + 1;
                return mem.parse::<f64>().ok().map(|m| m / v4_routes as f64);
            }
        }
    }
    None
}

/// Waits (at most 3 minutes) until the kernel has freed the namespaces deleted so far: the
/// slab count is back near `baseline`, or has not fallen for two seconds (slab accounting
/// keeps some freed objects counted). False if it was still falling at the limit.
fn netns_freed(baseline: u64) -> bool {
    let start = Instant::now();
    let (mut low, mut since) = (netns_objects(), Instant::now());
    loop {
        if low <= baseline + 2 || since.elapsed() >= Duration::from_secs(2) {
            return true;
        }
        if start.elapsed() > Duration::from_secs(180) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
        let now = netns_objects();
        if now < low {
            (low, since) = (now, Instant::now());
        }
    }
}

/// Network namespaces the kernel holds (live or not yet freed), from /proc/slabinfo.
fn netns_objects() -> u64 {
    fs::read_to_string("/proc/slabinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("net_namespace "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn mem_available_kib() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Config with `n` VPCs in a ring, each peered with its two neighbours.
fn ring_config(
    prefix: &str,
    dir: &Path,
    pins: &Path,
    n: usize,
    extra: Option<(usize, usize)>,
) -> String {
    let mut s = format!(
        "[daemon]\nnetns_prefix = \"{prefix}\"\nstate_dir = \"{}\"\npin_dir = \"{}\"\nsocket = \"{}\"\n",
        dir.join("state").display(),
        pins.display(),
        dir.join("sock").display()
    );
    for i in 0..n {
        s += &format!(
            "[[vpc]]\nname = \"v{i}\"\ncidrs = [\"10.{}.{}.0/24\"]\n",
            100 + i / 256,
            i % 256
        );
        if n > 2 || (n == 2 && i == 0) {
            let (l, r) = ((i + n - 1) % n, (i + 1) % n);
            for (a, b) in [(i.min(r), i.max(r)), (l.min(i), l.max(i))] {
                if n == 2 && a == b {
                    continue;
                }
                s += &format!(
                    "  [[vpc.peering]]\n  id = \"pcx-{a}-{b}\"\n  peer = \"v{}\"\n",
                    if a == i { b } else { a }
                );
            }
        }
        if let Some((x, y)) = extra {
            if i == x || i == y {
                s += &format!(
                    "  [[vpc.peering]]\n  id = \"pcx-extra\"\n  peer = \"v{}\"\n",
                    if i == x { y } else { x }
                );
            }
        }
    }
    s
}

fn forwards(prefix: &str, from: usize, to: usize) -> bool {
    let a = Ipv4Addr::new(10, 100 + (from / 256) as u8, (from % 256) as u8, 1);
    let b = Ipv4Addr::new(10, 100 + (to / 256) as u8, (to % 256) as u8, 1);
    let (na, nb) = (format!("{prefix}v{from}"), format!("{prefix}v{to}"));
    if add_lo_addr(&na, a).is_err() || add_lo_addr(&nb, b).is_err() {
        return false;
    }
    let dst = SocketAddr::new(b.into(), 9200);
    let rx = in_ns(&nb, move || UdpSocket::bind(dst).unwrap());
    rx.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let tx = in_ns(&na, move || {
        UdpSocket::bind(SocketAddr::new(a.into(), 0)).unwrap()
    });
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let _ = tx.send_to(b"x", dst);
        if rx.recv_from(&mut [0u8; 8]).is_ok() {
            return true;
        }
    }
    false
}

fn control_plane(prefix: &str, n: usize, res: &mut Results) -> Res<()> {
    let p = format!("{prefix}r{n}-");
    let dir = std::env::temp_dir().join(format!("{p}dir"));
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let pins = PathBuf::from("/sys/fs/bpf").join(format!("{p}pins"));
    let mut c = Cleanup {
        dirs: vec![dir.clone()],
        pins: vec![pins.clone()],
        netns: (0..n).map(|i| format!("{p}v{i}")).collect(),
    };
    let cfg = dir.join("peerd.toml");
    fs::write(&cfg, ring_config(&p, &dir, &pins, n, None)).map_err(|e| e.to_string())?;
    let (rss0, mem0) = (rss_kib(), mem_available_kib());
    let t0 = Instant::now();
    let mut d = Daemon::start(&cfg).map_err(|e| e.to_string())?;
    let started = t0.elapsed().as_secs_f64();
    let ok = n < 2 || forwards(&p, 0, 1);
    let to_forwarding = t0.elapsed().as_secs_f64();
    res.control_plane
        .insert(format!("vpcs={n}: config to converged (s)"), started);
    if n >= 2 {
        res.control_plane.insert(
            format!("vpcs={n}: config to forwarding (s)"),
            if ok { to_forwarding } else { f64::NAN },
        );
    }
    res.control_plane.insert(
        format!("vpcs={n}: daemon RSS growth (KiB)"),
        rss_kib().saturating_sub(rss0) as f64,
    );
    res.control_plane.insert(
        format!("vpcs={n}: host memory per VPC (KiB, MemAvailable delta)"),
        mem0.saturating_sub(mem_available_kib()) as f64 / n as f64,
    );
    if n >= 100 {
        // One added peering (both ends), applied by a reload.
        let (x, y) = (0, n / 2);
        fs::write(&cfg, ring_config(&p, &dir, &pins, n, Some((x, y))))
            .map_err(|e| e.to_string())?;
        let t1 = Instant::now();
        d.reload().map_err(|e| e.to_string())?;
        let applied = t1.elapsed().as_secs_f64() * 1000.0;
        res.control_plane
            .insert(format!("vpcs={n}: one added peering applied (ms)"), applied);
        if !forwards(&p, x, y) {
            res.notes
                .push(format!("vpcs={n}: the added peering did not forward"));
        }
    }
    drop(d);
    c.netns.sort();
    drop(c);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Report

fn ratio(res: &Results, a: &str, b: &str, m: &str) -> Option<f64> {
    let x = res.forwarding.get(a)?.get(m)?.median;
    let y = res.forwarding.get(b)?.get(m)?.median;
    Some(x / y)
}

fn write_results(out: &Path, res: &Results) -> Res<()> {
    let json = serde_json::to_string_pretty(res).map_err(|e| e.to_string())?;
    fs::write(out.join("results.json"), json).map_err(|e| e.to_string())?;
    let mut md = String::from("# peerd benchmark report\n\n");
    md += &format!(
        "Machine: {} CPUs ({}), kernel {}. {} interleaved rounds; median (min–max).\n\n",
        res.machine.get("cpus").cloned().unwrap_or_default(),
        res.machine.get("cpu").cloned().unwrap_or_default(),
        res.machine.get("kernel").cloned().unwrap_or_default(),
        res.rounds
    );
    md += "![forwarding](chart.svg)\n\n## Forwarding\n\n64 B pps: 64-byte frames injected by BPF_PROG_TEST_RUN in live-frames mode (headers restored on every repetition) on CPU 0, counted by a TC sink program on the destination VPC's link, which drops them. UDP sink: the same frames received by a UDP socket in the destination namespace (CPU 1), so the destination's stack is included. Socket sender: sendmmsg from the source namespace instead of the generator (the sender is then the bottleneck).\n\n| scenario | 64 B pps | 64 B pps (UDP sink) | 64 B pps (socket sender) | TCP 1 stream Gbit/s | TCP 4 streams Gbit/s | latency p50 µs | latency p99 µs |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n";
    let cell = |s: Option<&Stat>, digits: usize| match s {
        Some(s) => format!(
            "{:.*} ({:.*}–{:.*})",
            digits, s.median, digits, s.min, digits, s.max
        ),
        None => "n/a".into(),
    };
    for (name, m) in &res.forwarding {
        md += &format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} |\n",
            cell(m.get("pps_64B"), 0),
            cell(m.get("pps_64B_udp_sink"), 0),
            cell(m.get("pps_64B_socket_sender"), 0),
            cell(m.get("tcp_1_stream_gbps"), 2),
            cell(m.get("tcp_4_streams_gbps"), 2),
            cell(m.get("latency_p50_us"), 1),
            cell(m.get("latency_p99_us"), 1)
        );
    }
    md += "\n## Targets (same run)\n\n";
    let targets = [
        (
            "peerd-tc / ceiling-tc, 64 B pps (target ≥ 0.90)",
            ratio(res, "peerd-tc", "ceiling-tc", "pps_64B"),
        ),
        (
            "peerd-tc / kernel-fwd+nft, 64 B pps (target ≥ 1.5)",
            ratio(res, "peerd-tc", "kernel-fwd+nft", "pps_64B"),
        ),
        (
            "peerd-xdp / ceiling-xdp, 64 B pps",
            ratio(res, "peerd-xdp", "ceiling-xdp", "pps_64B"),
        ),
        (
            "peerd-tc / kernel-fwd+nft, TCP 1 stream (target ≥ 1)",
            ratio(res, "peerd-tc", "kernel-fwd+nft", "tcp_1_stream_gbps"),
        ),
        (
            "peerd-tc / kernel-fwd+nft, latency p50 (target ≤ 1)",
            ratio(res, "peerd-tc", "kernel-fwd+nft", "latency_p50_us"),
        ),
        (
            "peerd-tc / kernel-fwd+nft, latency p99 (target ≤ 1)",
            ratio(res, "peerd-tc", "kernel-fwd+nft", "latency_p99_us"),
        ),
        (
            "peerd-xdp / peerd-tc, TCP 1 stream",
            ratio(res, "peerd-xdp", "peerd-tc", "tcp_1_stream_gbps"),
        ),
    ];
    for (k, v) in targets {
        md += &format!(
            "- {k}: {}\n",
            v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "n/a".into())
        );
    }
    let scale_cost = |vpcs: u32, routes: u32| {
        res.scale
            .iter()
            .find(|r| {
                r.tables
                    .starts_with(&format!("routes/VPC={routes} VPCs={vpcs} "))
            })
            .map(|r| r.cost_over_baseline_ns.median)
    };
    let cp = |k: &str| res.control_plane.get(k).copied();
    let more: [(&str, Option<f64>); 5] = [
        (
            "program cost over baseline, 100 routes per VPC, ns (target ≤ 60)",
            scale_cost(2, 100),
        ),
        (
            "program cost over baseline, 100k routes in all, ns (target ≤ 150)",
            scale_cost(1000, 100),
        ),
        (
            "1,000 VPCs from config to forwarding, s (target ≤ 10)",
            cp("vpcs=1000: config to forwarding (s)"),
        ),
        (
            "one added peering at 1,000 VPCs, ms (target ≤ 50)",
            cp("vpcs=1000: one added peering applied (ms)"),
        ),
        (
            "map memory per route, bytes (target ≤ 200)",
            res.map_bytes_per_route,
        ),
    ];
    for (k, v) in more {
        md += &format!(
            "- {k}: {}\n",
            v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "n/a".into())
        );
    }
    md += "\n## Program cost (BPF_PROG_TEST_RUN, ns per packet)\n\nEach run repeats the program on one buffer; peerd rewrites headers (TTL, MACs), so the peerd cases run a wrapper that first restores the headers from a template and then runs the datapath's entry point, and their baseline is a program that only restores (restore-tc / restore-xdp, itself a few ns over the empty program). The ceiling's baseline is the empty program.\n\n| program | ns | over baseline |\n| --- | --- | --- |\n";
    for (k, v) in &res.program_cost_ns {
        md += &format!(
            "| {k} | {v:.1} | {} |\n",
            res.program_cost_over_empty_ns
                .get(k)
                .map(|o| format!("{o:.1}"))
                .unwrap_or_else(|| "—".into())
        );
    }
    md += "\n### At scale\n\npeerd-tc, IPv4 forward of one hot pair (routes inside the peer) while the tables hold more VPCs and routes (filler routes are /32s in every VPC's main table): program cost over the restore baseline, and the 64-byte rate of a real pair of namespaces running this datapath with the same tables (generator and sink as above).\n\n| tables | ns over baseline | 64 B pps | tables written in (s) |\n| --- | --- | --- | --- |\n";
    for r in &res.scale {
        md += &format!(
            "| {} | {} | {} | {:.2} |\n",
            r.tables,
            cell(Some(&r.cost_over_baseline_ns), 1),
            cell(Some(&r.pps_64b), 0),
            r.sync_s
        );
    }
    if let Some(b) = res.map_bytes_per_route {
        md += &format!(
            "\nRoute trie memory (kernel accounting, memlock / entries): {b:.0} bytes per route.\n"
        );
    }
    md += "\n## Control plane\n\n| measurement | value |\n| --- | --- |\n";
    for (k, v) in &res.control_plane {
        md += &format!("| {k} | {v:.3} |\n");
    }
    if !res.notes.is_empty() {
        md += "\n## Notes\n\n";
        for n in &res.notes {
            md += &format!("- {n}\n");
        }
    }
    fs::write(out.join("REPORT.md"), md).map_err(|e| e.to_string())?;
    fs::write(out.join("chart.svg"), chart(res)).map_err(|e| e.to_string())?;
    eprintln!("wrote {}/results.json, REPORT.md, chart.svg", out.display());
    Ok(())
}

/// A bar chart of the 64-byte pps medians (min–max whiskers).
fn chart(res: &Results) -> String {
    let rows: Vec<(&String, &Stat)> = res
        .forwarding
        .iter()
        .filter_map(|(k, m)| m.get("pps_64B").map(|s| (k, s)))
        .collect();
    let max = rows.iter().map(|(_, s)| s.max).fold(1.0, f64::max);
    let (w, bar_h, left) = (760.0, 28.0, 190.0);
    let h = 50.0 + rows.len() as f64 * (bar_h + 12.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"13\">\n<text x=\"10\" y=\"22\" font-size=\"15\">64-byte UDP packets per second (median, min–max)</text>\n"
    );
    for (i, (name, s)) in rows.iter().enumerate() {
        let y = 40.0 + i as f64 * (bar_h + 12.0);
        let scale = |v: f64| (w - left - 90.0) * v / max;
        let colour = if name.starts_with("peerd") {
            "#2b7bb9"
        } else if name.starts_with("ceiling") {
            "#999"
        } else {
            "#d98b2b"
        };
        svg += &format!(
            "<text x=\"10\" y=\"{}\">{name}</text><rect x=\"{left}\" y=\"{y}\" width=\"{:.1}\" height=\"{bar_h}\" fill=\"{colour}\"/><line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/><text x=\"{:.1}\" y=\"{}\">{:.0}k</text>\n",
            y + 19.0,
            scale(s.median),
            left + scale(s.min),
            left + scale(s.max),
            y + bar_h / 2.0,
            y + bar_h / 2.0,
            left + scale(s.max) + 6.0,
            y + 19.0,
            s.median / 1000.0
        );
    }
    svg + "</svg>\n"
}
