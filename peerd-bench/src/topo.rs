//! The topologies the forwarding scenarios run on, and the cleanup of everything they make.
use std::{
    fs,
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use aya::programs::XdpMode;

use crate::{
    object::{attach_tcx, BenchObj},
    peerd_api::{self, Daemon, Datapath, Tables, VpcLink},
    sh,
    shared::BenchTarget,
    Res,
};

/// One forwarding path: traffic from `src` (in namespace `src_ns`) to `dst` (in `dst_ns`).
pub struct Path2 {
    pub name: &'static str,
    pub src_ns: String,
    pub src: Ipv4Addr,
    pub dst_ns: String,
    pub dst: Ipv4Addr,
    /// Where the live-frames generator injects: namespace (None: root), ifindex there, and the
    /// destination MAC the frames must carry to be accepted there.
    pub gen_ns: Option<String>,
    pub gen_ifindex: u32,
    pub gen_mac: [u8; 6],
    /// The generator passes the frames to the ingress link's stack (its TC program and the
    /// kernel see them; None) or redirects them out of that link (Some: for XDP scenarios, out
    /// of the source VPC's uplink, so the host-side XDP program receives them).
    pub gen_redirect: Option<u32>,
    /// The destination's link (in `dst_ns`), where the counting sink attaches.
    pub dst_dev: &'static str,
}

/// Everything the bench created, removed on drop.
#[derive(Default)]
pub struct Cleanup {
    pub netns: Vec<String>,
    pub pins: Vec<PathBuf>,
    pub dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in &self.netns {
            peerd_api::remove_vpc(ns);
        }
        for p in self.pins.iter().chain(&self.dirs) {
            let _ = fs::remove_dir_all(p);
        }
    }
}

pub fn add_lo_addr(ns: &str, a: Ipv4Addr) -> Res<()> {
    let cidr = format!("{a}/32");
    let have = sh(&["ip", "-n", ns, "addr", "show", "dev", "lo"])?;
    if !have.contains(&format!(" {cidr} ")) {
        sh(&["ip", "-n", ns, "addr", "add", &cidr, "dev", "lo"])?;
    }
    Ok(())
}

/// The operator's alternative: A -- R -- B, R forwards, nftables allows exactly the peered
/// pairs (with conntrack, or with notrack).
pub fn kernel_fwd(prefix: &str, conntrack: bool, c: &mut Cleanup) -> Res<Path2> {
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
    load_nft(&r, &peering_rules(conntrack))?;
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
pub fn link_info(ns: &str, dev: &str) -> Res<(u32, [u8; 6])> {
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
pub fn peerd_path(prefix: &str, mode: &'static str, c: &mut Cleanup) -> Res<(Path2, Daemon)> {
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
    let d = Daemon::start(&cfg)?;
    let (sa, da) = (Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(10, 2, 0, 1));
    add_lo_addr(&format!("{p}a"), sa)?;
    add_lo_addr(&format!("{p}b"), da)?;
    let name = if mode == "tc" {
        "peerd-tc"
    } else {
        "peerd-xdp"
    };
    let host_if = peerd_api::host_ifname(&format!("{p}a"));
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
/// /16 to its gateway; their links, in that order.
fn vpc_pair(p: &str, xdp: bool, c: &mut Cleanup) -> Res<[VpcLink; 2]> {
    let mut links = Vec::new();
    for (v, route) in [("a", "10.2.0.0/16"), ("b", "10.1.0.0/16")] {
        let ns = format!("{p}{v}");
        c.netns.push(ns.clone());
        links.push(peerd_api::vpc_link(&ns, route, xdp)?);
    }
    add_lo_addr(&format!("{p}a"), PAIR_SRC)?;
    add_lo_addr(&format!("{p}b"), PAIR_DST)?;
    Ok([links[0], links[1]])
}

const PAIR_SRC: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const PAIR_DST: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 1);

/// The ceiling of a hook: two VPC-like namespaces, an unconditional redirect program on each
/// host-side veth. The returned object owns the links.
pub fn ceiling_path(prefix: &str, xdp: bool, c: &mut Cleanup) -> Res<(Path2, BenchObj)> {
    let p = format!("{prefix}{}-", if xdp { "cx" } else { "ct" });
    let links = vpc_pair(&p, xdp, c)?;
    let mut obj = BenchObj::load()?;
    for (from, to) in [(&links[0], &links[1]), (&links[1], &links[0])] {
        let target = BenchTarget {
            ifindex: to.host_ifindex,
            dst_mac: to.ns_mac,
            src_mac: to.host_mac,
        };
        obj.set_target(from.host_ifindex, target)?;
    }
    for v in ["a", "b"] {
        let host_if = peerd_api::host_ifname(&format!("{p}{v}"));
        if xdp {
            obj.xdp("bench_redirect_xdp")?
                .attach(&host_if, XdpMode::Driver)
                .map_err(|e| format!("attaching to {host_if}: {e}"))?;
        } else {
            attach_tcx(obj.tc("bench_redirect_tc")?, &host_if)?;
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
                links[0].ns_ifindex
            } else {
                links[0].host_ifindex
            },
            gen_mac: links[0].host_mac,
            gen_redirect: xdp.then_some(links[0].ns_ifindex),
            dst_dev: "peerd0",
        },
        obj,
    ))
}

/// A real pair of VPC namespaces whose host-side links run the loaded datapath's TC entry
/// point (attached here, detached when the datapath is dropped): the scale rows' hot pair.
pub struct HotPair {
    pub path: Path2,
    links: [VpcLink; 2],
}

impl HotPair {
    /// Points the hot pair of `t` (VPC slots 1 and 2) at the real links.
    pub fn patch(&self, t: &mut Tables) {
        t.hot_pair(&self.links);
    }
}

pub fn scale_path(prefix: &str, dp: &mut Datapath, c: &mut Cleanup) -> Res<HotPair> {
    let p = format!("{prefix}s-");
    let links = vpc_pair(&p, false, c)?;
    for v in ["a", "b"] {
        attach_tcx(dp.tc(), &peerd_api::host_ifname(&format!("{p}{v}")))?;
    }
    Ok(HotPair {
        path: Path2 {
            name: "peerd-tc (scale)",
            src_ns: format!("{p}a"),
            src: PAIR_SRC,
            dst_ns: format!("{p}b"),
            dst: PAIR_DST,
            gen_ns: None,
            gen_ifindex: links[0].host_ifindex,
            gen_mac: links[0].host_mac,
            gen_redirect: None,
            dst_dev: "peerd0",
        },
        links,
    })
}

/// nftables rules for a router between VPC a (10.1.0.0/16) and VPC b (10.2.0.0/16): the
/// forward chain accepts exactly the peered pairs (with conntrack, or with notrack).
pub fn peering_rules(conntrack: bool) -> String {
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
    format!(
        "table inet peering {{\n set a4 {{ type ipv4_addr; flags interval; elements = {{ 10.1.0.0/16 }} }}\n set b4 {{ type ipv4_addr; flags interval; elements = {{ 10.2.0.0/16 }} }}\n {raw} chain forward {{ type filter hook forward priority filter; policy drop;\n {track} ip saddr @a4 ip daddr @b4 accept\n ip saddr @b4 ip daddr @a4 accept\n }}\n}}\n"
    )
}

/// Loads `rules` with `nft -f -` in namespace `ns`.
pub fn load_nft(ns: &str, rules: &str) -> Res<()> {
    let mut nft = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
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
    Ok(())
}
