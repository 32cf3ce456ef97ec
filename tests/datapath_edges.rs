//! Edges of the datapath that only real links show (SPEC §5, "fail closed"): frames that
//! BPF_PROG_TEST_RUN cannot present the way the kernel does, sent by a VPC on its own link.
mod common;

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use common::{
    env::{in_ns, sh, wait_for, Env},
    packet::{eth, ipv4, udp, SRC_MAC},
};

const TWO_PEERED: &str = r#"
[[vpc]]
name = "a"
cidrs = ["10.71.0.0/16"]
  [[vpc.peering]]
  id = "pcx-ab"
  peer = "b"

[[vpc]]
name = "b"
cidrs = ["10.72.0.0/16"]
  [[vpc.peering]]
  id = "pcx-ab"
  peer = "a"
"#;

const SRC: Ipv4Addr = Ipv4Addr::new(10, 71, 0, 5);
const DST: Ipv4Addr = Ipv4Addr::new(10, 72, 0, 7);
/// Frames per case.
const N: u32 = 10;

fn start(body: &str) -> Env {
    assert!(
        common::can_run(),
        "needs root and the eBPF object (run with --run-ignored all as root)"
    );
    let mut env = Env::new();
    env.write_config(body);
    env.start();
    env
}

/// The gateway's MAC as VPC `vpc` sees it (peerd's permanent neighbour entry on `peerd0`).
fn gateway_mac(env: &Env, vpc: &str) -> [u8; 6] {
    let ns = env.netns(vpc);
    let out = sh(&[
        "ip",
        "-n",
        &ns,
        "-j",
        "neigh",
        "show",
        "169.254.1.1",
        "dev",
        "peerd0",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j neigh");
    let s = v[0]["lladdr"]
        .as_str()
        .unwrap_or_else(|| panic!("no gateway neighbour in {ns}: {out}"));
    let b: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    b.try_into().unwrap()
}

/// A frame from `SRC` in VPC a to `DST:port` in VPC b, to the gateway's MAC, with `tags`
/// (TPID, VLAN id) between the MAC addresses and the IPv4 ethertype.
fn frame(gw: [u8; 6], tags: &[(u16, u16)], port: u16, i: u32) -> Vec<u8> {
    let payload = udp(40000, port, format!("peerd-test {i}").as_bytes());
    let ip = ipv4(SRC, DST, 64, 17, &payload);
    let mut body = Vec::new();
    let mut ethertype = 0x0800u16;
    if let Some((&(first, _), _)) = tags.split_first() {
        ethertype = first;
        for (i, &(_, vid)) in tags.iter().enumerate() {
            body.extend_from_slice(&vid.to_be_bytes());
            let next = tags.get(i + 1).map(|t| t.0).unwrap_or(0x0800);
            body.extend_from_slice(&next.to_be_bytes());
        }
    }
    body.extend_from_slice(&ip);
    eth(gw, SRC_MAC, ethertype, &body)
}

/// Sends `frames` as they are out of `ifname` in namespace `ns` (an AF_PACKET socket).
fn send_raw(ns: &str, ifname: &str, frames: Vec<Vec<u8>>) {
    let ifname = ifname.to_owned();
    in_ns(ns, move || {
        let name = std::ffi::CString::new(ifname.clone()).unwrap();
        // SAFETY: plain libc calls on a socket this closure owns and closes.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr());
            assert_ne!(ifindex, 0, "no {ifname}");
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = ifindex as i32;
            sll.sll_halen = 6;
            for f in &frames {
                sll.sll_addr[..6].copy_from_slice(&f[..6]);
                let rc = libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(
                    rc,
                    f.len() as isize,
                    "send on {ifname}: {}",
                    std::io::Error::last_os_error()
                );
            }
            libc::close(fd);
        }
    });
}

/// A UDP receiver on `DST` inside VPC b.
fn receiver(env: &Env) -> (UdpSocket, u16) {
    let rx = in_ns(&env.netns("b"), || {
        UdpSocket::bind(SocketAddr::from((DST, 0))).expect("bind receiver")
    });
    let port = rx.local_addr().unwrap().port();
    (rx, port)
}

/// Datagrams that reach `rx`, waiting at most `wait` for each.
fn received(rx: &UdpSocket, wait: Duration) -> u32 {
    rx.set_read_timeout(Some(wait)).unwrap();
    let mut got = 0;
    let mut buf = [0u8; 128];
    while let Ok(len) = rx.recv(&mut buf) {
        assert!(buf[..len].starts_with(b"peerd-test"));
        got += 1;
    }
    got
}

/// Packets forwarded a -> b so far.
fn forwarded(env: &Env) -> u64 {
    Env::peering(&env.status(), "pcx-ab")["forwarded"][0]["packets"]
        .as_u64()
        .unwrap()
}

/// Sends N frames with `tags` out of `ifname` in VPC a: untagged they must all arrive in b;
/// tagged none may, each counted once as `unsupported-protocol` and none as forwarded.
fn check(env: &Env, what: &str, ifname: &str, gw: [u8; 6], tags: &[(u16, u16)]) {
    let (rx, port) = receiver(env);
    let drops = env.drops("a", "unsupported-protocol");
    let fwd = forwarded(env);
    let frames = (0..N).map(|i| frame(gw, tags, port, i)).collect();
    send_raw(&env.netns("a"), ifname, frames);
    if tags.is_empty() {
        let got = received(&rx, Duration::from_secs(3));
        assert_eq!(got, N, "{what}: untagged frames delivered\n{}", env.log());
        assert_eq!(forwarded(env), fwd + N as u64, "{what}: forwarded counter");
        return;
    }
    wait_for(
        Duration::from_secs(5),
        &format!("{what}: {N} unsupported-protocol drops"),
        || (env.drops("a", "unsupported-protocol") >= drops + N as u64).then_some(()),
    );
    assert_eq!(
        received(&rx, Duration::from_millis(400)),
        0,
        "{what}: a tagged frame was delivered into b"
    );
    assert_eq!(
        env.drops("a", "unsupported-protocol"),
        drops + N as u64,
        "{what}: each tagged frame counted once"
    );
    assert_eq!(
        forwarded(env),
        fwd,
        "{what}: tagged frames counted as forwarded"
    );
}

const DOT1Q: u16 = 0x8100;
const DOT1AD: u16 = 0x88a8;

/// VLAN-tagged frames (802.1Q and 802.1ad) from a VPC are dropped as `unsupported-protocol`,
/// counted against the source VPC, and never forwarded, whether the tag reaches peerd in the
/// frame (TC: the kernel moves it out of the data before the program runs, which then sees a
/// plain IPv4 packet) or in skb metadata (a VLAN device or bridge in the VPC with tag insertion
/// offloaded, here a tc mirred redirect from a veth that received the tagged frames). The same
/// frames untagged are delivered. Both datapaths (`PEERD_TEST_DATAPATH=xdp`).
#[test]
#[ignore = "needs root"]
fn vlan_tagged_frames_are_dropped_and_counted_not_forwarded() {
    let env = start(TWO_PEERED);
    let ns = env.netns("a");
    let gw = gateway_mac(&env, "a");
    env.add_addr("b", &DST.to_string());

    // Tag in the frame, sent on the VPC's link.
    check(&env, "untagged on peerd0", "peerd0", gw, &[]);
    check(&env, "802.1Q on peerd0", "peerd0", gw, &[(DOT1Q, 100)]);
    check(&env, "802.1ad on peerd0", "peerd0", gw, &[(DOT1AD, 200)]);
    check(
        &env,
        "802.1ad + 802.1Q on peerd0",
        "peerd0",
        gw,
        &[(DOT1AD, 200), (DOT1Q, 100)],
    );

    // Tag in skb metadata: frames sent on x0 arrive on x1 (the kernel takes the tag out of
    // the data on receipt) and are redirected out of peerd0 as they are.
    sh(&[
        "ip", "-n", &ns, "link", "add", "x0", "type", "veth", "peer", "name", "x1",
    ]);
    for dev in ["x0", "x1"] {
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{dev}.disable_ipv6=1"),
        ]);
        sh(&["ip", "-n", &ns, "link", "set", dev, "up"]);
    }
    sh(&["tc", "-n", &ns, "qdisc", "add", "dev", "x1", "clsact"]);
    sh(&[
        "tc", "-n", &ns, "filter", "add", "dev", "x1", "ingress", "protocol", "all", "u32",
        "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", "peerd0",
    ]);
    check(&env, "untagged via x1", "x0", gw, &[]);
    check(&env, "802.1Q via x1", "x0", gw, &[(DOT1Q, 100)]);
    check(&env, "802.1ad via x1", "x0", gw, &[(DOT1AD, 200)]);

    // Untagged traffic from the VPC's own stack still flows afterwards.
    env.add_addr("a", "10.71.0.6");
    env.add_addr("b", "10.72.0.8");
    assert_eq!(
        env.udp(
            "a",
            "10.71.0.6",
            "b",
            "10.72.0.8",
            N,
            Duration::from_secs(3)
        ),
        N,
        "untagged a -> b after the tagged traffic"
    );
}
