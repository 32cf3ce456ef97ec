//! Host state through netlink: named network namespaces, the veth pair of each VPC, the
//! gateway's neighbour entries and the routes towards it.
//!
//! `setns` moves only the calling thread, so everything done inside a namespace runs on a
//! dedicated thread that entered it and opened its own netlink socket there; no other thread
//! ever changes namespace.
use std::{
    collections::BTreeSet,
    fs,
    future::Future,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use futures::TryStreamExt as _;
use ipnet::IpNet;
use netlink_packet_route::{
    link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteProtocol},
    AddressFamily,
};
use nix::{
    mount::{mount, umount2, MntFlags, MsFlags},
    sched::{setns, unshare, CloneFlags},
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// The VPC-side end of the veth pair, inside the namespace.
pub const NS_IFNAME: &str = "peerd0";
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// Protocol of the routes peerd installs; only these are ever removed.
pub const RT_PROTO_PEERD: u8 = 0xd0;
const NETNS_DIR: &str = "/run/netns";
const ENODEV: i32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {target}: {source}")]
    Netlink {
        op: &'static str,
        target: String,
        source: rtnetlink::Error,
    },
    #[error("{op} {target}: {source}")]
    Sys {
        op: &'static str,
        target: String,
        source: nix::Error,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("link {0} not found after creating it")]
    Missing(String),
    #[error("namespace thread for {0} panicked")]
    Thread(String),
}

fn nl(op: &'static str, target: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let target = target.into();
    move |source| Error::Netlink { op, target, source }
}

fn sys(op: &'static str, target: impl Into<String>) -> impl FnOnce(nix::Error) -> Error {
    let target = target.into();
    move |source| Error::Sys { op, target, source }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { op, path, source }
}

/// "pd" + 8 hex digits of FNV-1a-32 of the namespace name: stable and at most 15 characters.
pub fn host_ifname(netns: &str) -> String {
    let mut h: u32 = 0x811c9dc5;
    for b in netns.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    format!("pd{h:08x}")
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VpcHostSpec {
    pub netns: String,
    pub host_if: String,
    pub mtu: u32,
    pub routes: Vec<IpNet>,
    /// XDP datapath: the VPC-side end needs NAPI (GRO on) to receive XDP redirects, TX
    /// checksum offload off (an XDP redirect loses the skb's partial-checksum state) and VLAN
    /// tag insertion off (XDP sees tags only in the frame). `None`
    /// leaves them as they are (while switching modes).
    pub xdp: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VpcHostState {
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    pub ns_ifindex: u32,
    pub ns_mac: [u8; 6],
}

/// What a call changed, one line per change. Empty: nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub actions: Vec<String>,
}

/// Runs `f` with a netlink handle opened inside namespace `ns` (or the caller's namespace for
/// `None`), on a dedicated thread with its own current-thread runtime.
fn with_handle<T, F, Fut>(ns: Option<&str>, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, Error>>,
{
    let ns = ns.map(str::to_owned);
    let label = ns.clone().unwrap_or_else(|| "root namespace".into());
    std::thread::spawn(move || {
        if let Some(ns) = &ns {
            let path = Path::new(NETNS_DIR).join(ns);
            let file = fs::File::open(&path).map_err(io("opening", &path))?;
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(sys("entering namespace", ns))?;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io(
                "starting runtime for",
                Path::new(ns.as_deref().unwrap_or("/")),
            ))?;
        rt.block_on(async move {
            let (conn, handle, _) = rtnetlink::new_connection().map_err(io(
                "netlink socket in",
                Path::new(ns.as_deref().unwrap_or("/")),
            ))?;
            let task = tokio::spawn(conn);
            let r = f(handle).await;
            task.abort();
            r
        })
    })
    .join()
    .map_err(|_| Error::Thread(label))?
}

pub fn netns_exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

pub fn list_netns(prefix: &str) -> Result<Vec<String>, Error> {
    let dir = Path::new(NETNS_DIR);
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut out: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    out.sort();
    Ok(out)
}

/// /run/netns as iproute2 makes it: a shared mount point, so namespaces mounted there are
/// seen from every mount namespace.
fn prepare_netns_dir() -> Result<(), Error> {
    // VPCs are ensured in parallel: one thread at a time checks and fixes the mount.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(NETNS_DIR);
    fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    if mount(None::<&str>, dir, None::<&str>, shared, None::<&str>).is_err() {
        mount(
            Some(dir),
            dir,
            Some("none"),
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(sys("bind-mounting", NETNS_DIR))?;
        mount(None::<&str>, dir, None::<&str>, shared, None::<&str>)
            .map_err(sys("sharing", NETNS_DIR))?;
    }
    Ok(())
}

fn create_netns(name: &str) -> Result<(), Error> {
    prepare_netns_dir()?;
    let path = Path::new(NETNS_DIR).join(name);
    fs::File::create(&path).map_err(io("creating", &path))?;
    let name = name.to_owned();
    let p = path.clone();
    let r = std::thread::spawn(move || -> Result<(), Error> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(sys("creating namespace", &name))?;
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) };
        let src = format!("/proc/self/task/{tid}/ns/net");
        mount(
            Some(src.as_str()),
            &p,
            Some("none"),
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys("mounting namespace", &name))
    })
    .join()
    .map_err(|_| Error::Thread(path.display().to_string()))?;
    if r.is_err() {
        let _ = fs::remove_file(&path);
    }
    r
}

fn delete_netns(name: &str) -> Result<bool, Error> {
    let path = Path::new(NETNS_DIR).join(name);
    if !path.exists() {
        return Ok(false);
    }
    let _ = umount2(&path, MntFlags::MNT_DETACH);
    fs::remove_file(&path).map_err(io("removing", &path))?;
    Ok(true)
}

async fn get_link(h: &Handle, name: &str) -> Result<Option<LinkMessage>, Error> {
    match h
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
    {
        Ok(l) => Ok(l),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -ENODEV => Ok(None),
        Err(e) => Err(nl("looking up link", name)(e)),
    }
}

fn mac_of(l: &LinkMessage) -> [u8; 6] {
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(m) if m.len() == 6 => Some([m[0], m[1], m[2], m[3], m[4], m[5]]),
            _ => None,
        })
        .unwrap_or_default()
}

fn mtu_of(l: &LinkMessage) -> u32 {
    l.attributes
        .iter()
        .find_map(|a| {
            if let LinkAttribute::Mtu(m) = a {
                Some(*m)
            } else {
                None
            }
        })
        .unwrap_or(0)
}

fn peer_of(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| {
        if let LinkAttribute::Link(i) = a {
            Some(*i)
        } else {
            None
        }
    })
}

fn is_up(l: &LinkMessage) -> bool {
    l.header.flags.contains(LinkFlags::Up)
}

/// Sets MTU and up on a link when they differ; returns what changed.
async fn link_up(
    h: &Handle,
    l: &LinkMessage,
    name: &str,
    mtu: Option<u32>,
    ch: &mut Vec<String>,
    ns: &str,
) -> Result<(), Error> {
    let idx = l.header.index;
    if let Some(m) = mtu.filter(|m| *m != mtu_of(l)) {
        h.link()
            .set(LinkUnspec::new_with_index(idx).mtu(m).build())
            .execute()
            .await
            .map_err(nl("setting mtu of", name))?;
        ch.push(format!("set mtu {m} on {name} in {ns}"));
    }
    if !is_up(l) {
        h.link()
            .set(LinkUnspec::new_with_index(idx).up().build())
            .execute()
            .await
            .map_err(nl("bringing up", name))?;
        ch.push(format!("brought up {name} in {ns}"));
    }
    Ok(())
}

fn write_sysctl(path: &str, value: &str) -> Result<bool, Error> {
    let p = Path::new(path);
    let cur = fs::read_to_string(p).map_err(io("reading", p))?;
    if cur.trim() == value {
        return Ok(false);
    }
    fs::write(p, value).map_err(io("writing", p))?;
    Ok(true)
}

/// What `ensure_vpc` returns.
pub type Ensured = Result<(VpcHostState, Changes), Error>;

/// `ensure_vpc` for many VPCs at once, on up to `ENSURE_THREADS` threads: the work is mostly
/// waiting on the kernel (namespace creation, RCU grace periods), so VPCs proceed side by
/// side. Results in the order of `specs`.
pub fn ensure_vpcs(specs: &[VpcHostSpec]) -> Vec<Ensured> {
    const ENSURE_THREADS: usize = 16;
    if specs.len() <= 1 {
        return specs.iter().map(ensure_vpc).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<Option<Ensured>> = specs.iter().map(|_| None).collect();
    std::thread::scope(|sc| {
        let workers: Vec<_> = (0..ENSURE_THREADS.min(specs.len()))
            .map(|_| {
                sc.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(spec) = specs.get(i) else {
                            return done;
                        };
                        done.push((i, ensure_vpc(spec)));
                    }
                })
            })
            .collect();
        for w in workers {
            // A worker that panicked leaves its VPCs without a result: reported below.
            for (i, r) in w.join().unwrap_or_default() {
                results[i] = Some(r);
            }
        }
    });
    results
        .into_iter()
        .zip(specs)
        .map(|(r, spec)| r.unwrap_or_else(|| Err(Error::Thread(spec.netns.clone()))))
        .collect()
}

/// Creates or repairs one VPC's namespace, veth pair, gateway neighbours and routes;
/// changes only what differs from `spec`.
pub fn ensure_vpc(spec: &VpcHostSpec) -> Ensured {
    let mut ch = Vec::new();
    if !netns_exists(&spec.netns) {
        create_netns(&spec.netns)?;
        ch.push(format!("created namespace {}", spec.netns));
    }
    let ns = spec.netns.clone();

    // Is the pair intact: host end here, VPC end in the namespace, each the other's peer?
    let host_if = spec.host_if.clone();
    let host = with_handle(None, move |h| async move { get_link(&h, &host_if).await })?;
    let ns_link = with_handle(Some(&ns), |h| async move { get_link(&h, NS_IFNAME).await })?;
    let intact = match (&host, &ns_link) {
        (Some(hl), Some(nl_)) => peer_of(nl_) == Some(hl.header.index),
        _ => false,
    };
    if !intact {
        if let Some(nl_) = ns_link {
            let idx = nl_.header.index;
            with_handle(Some(&ns), move |h| async move {
                h.link()
                    .del(idx)
                    .execute()
                    .await
                    .map_err(nl("deleting stale", NS_IFNAME))
            })?;
        }
        let host_if = spec.host_if.clone();
        // Builds before this one created the VPC end here as `{host_if}p` and moved it; one
        // interrupted mid-setup may have left it behind.
        let tmp = format!("{}p", spec.host_if);
        let nsfile_path = Path::new(NETNS_DIR).join(&spec.netns);
        let nsfile = fs::File::open(&nsfile_path).map_err(io("opening", &nsfile_path))?;
        let fd = nsfile.as_raw_fd();
        let existed = host.is_some();
        with_handle(None, move |h| async move {
            if let Some(old) = get_link(&h, &host_if).await? {
                h.link()
                    .del(old.header.index)
                    .execute()
                    .await
                    .map_err(nl("deleting stale", &host_if))?;
            }
            if let Some(old) = get_link(&h, &tmp).await? {
                h.link()
                    .del(old.header.index)
                    .execute()
                    .await
                    .map_err(nl("deleting stale", &tmp))?;
            }
            // The VPC end is created inside the namespace with its final name: moving a
            // link between namespaces waits for an RCU grace period under the RTNL lock,
            // which would serialise every VPC's setup behind it.
            let peer = LinkMessageBuilder::<LinkUnspec>::new()
                .name(NS_IFNAME.to_owned())
                .setns_by_fd(fd)
                .build();
            h.link()
                .add(
                    LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
                        .name(host_if.clone())
                        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                        .build(),
                )
                .execute()
                .await
                .map_err(nl("creating veth", &host_if))
        })?;
        drop(nsfile);
        ch.push(format!(
            "{} veth {} <-> {}/{}",
            if existed { "recreated" } else { "created" },
            spec.host_if,
            spec.netns,
            NS_IFNAME
        ));
    }

    // Host end: no IPv6 (so no link-local address), MTU, up.
    if write_sysctl(
        &format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", spec.host_if),
        "1",
    )? {
        ch.push(format!("disabled IPv6 on {}", spec.host_if));
    }
    let host_if = spec.host_if.clone();
    let mtu = spec.mtu;
    let (host_link, host_changes) = with_handle(None, move |h| async move {
        let mut c = Vec::new();
        let l = get_link(&h, &host_if)
            .await?
            .ok_or_else(|| Error::Missing(host_if.clone()))?;
        link_up(&h, &l, &host_if, Some(mtu), &mut c, "root namespace").await?;
        Ok((l, c))
    })?;
    ch.extend(host_changes);
    let host_mac = mac_of(&host_link);

    // Inside: lo and peerd0 up, gateway neighbours, routes.
    let spec2 = spec.clone();
    let (ns_link, ns_changes) = with_handle(Some(&spec.netns), move |h| async move {
        let mut c = Vec::new();
        let ns = spec2.netns.as_str();
        let lo = get_link(&h, "lo")
            .await?
            .ok_or_else(|| Error::Missing("lo".into()))?;
        link_up(&h, &lo, "lo", None, &mut c, ns).await?;
        let _ = write_sysctl(
            &format!("/proc/sys/net/ipv6/conf/{NS_IFNAME}/accept_dad"),
            "0",
        );
        let l = get_link(&h, NS_IFNAME)
            .await?
            .ok_or_else(|| Error::Missing(NS_IFNAME.into()))?;
        link_up(&h, &l, NS_IFNAME, Some(spec2.mtu), &mut c, ns).await?;
        if let Some(xdp) = spec2.xdp {
            c.extend(set_xdp_features(xdp, ns)?);
        }
        let idx = l.header.index;
        ensure_neighbours(&h, idx, host_mac, &mut c, ns).await?;
        ensure_routes(&h, idx, &spec2.routes, &mut c, ns).await?;
        Ok((l, c))
    })?;
    ch.extend(ns_changes);
    Ok((
        VpcHostState {
            host_ifindex: host_link.header.index,
            host_mac,
            ns_ifindex: ns_link.header.index,
            ns_mac: mac_of(&ns_link),
        },
        Changes { actions: ch },
    ))
}

async fn ensure_neighbours(
    h: &Handle,
    idx: u32,
    mac: [u8; 6],
    ch: &mut Vec<String>,
    ns: &str,
) -> Result<(), Error> {
    let mut have = BTreeSet::new();
    let mut s = h.neighbours().get().execute();
    while let Some(n) = s
        .try_next()
        .await
        .map_err(nl("listing neighbours in", ns))?
    {
        if n.header.ifindex != idx || n.header.state != NeighbourState::Permanent {
            continue;
        }
        let dst = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => Some(IpAddr::V4(*a)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
            _ => None,
        });
        let ll = n
            .attributes
            .iter()
            .any(|a| matches!(a, NeighbourAttribute::LinkLayerAddress(m) if m[..] == mac[..]));
        if let (Some(d), true) = (dst, ll) {
            have.insert(d);
        }
    }
    for gw in [IpAddr::V4(GATEWAY_V4), IpAddr::V6(GATEWAY_V6)] {
        if have.contains(&gw) {
            continue;
        }
        h.neighbours()
            .add(idx, gw)
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(nl("adding gateway neighbour in", ns))?;
        ch.push(format!("set gateway neighbour {gw} in {ns}"));
    }
    Ok(())
}

async fn ensure_routes(
    h: &Handle,
    idx: u32,
    want: &[IpNet],
    ch: &mut Vec<String>,
    ns: &str,
) -> Result<(), Error> {
    let mut have = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut q = RouteMessageBuilder::<IpAddr>::new().build();
        q.header.address_family = family;
        let mut s = h.route().get(q).execute();
        while let Some(r) = s.try_next().await.map_err(nl("listing routes in", ns))? {
            if r.header.protocol != RouteProtocol::Other(RT_PROTO_PEERD)
                && u8::from(r.header.protocol) != RT_PROTO_PEERD
            {
                continue;
            }
            let dst = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
                RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
                _ => None,
            });
            let net = match dst {
                Some(d) => IpNet::new(d, r.header.destination_prefix_length).ok(),
                None => None,
            };
            if let Some(net) = net {
                have.push((net, r));
            }
        }
    }
    let want: BTreeSet<IpNet> = want.iter().copied().collect();
    for net in &want {
        if have.iter().any(|(n, _)| n == net) {
            continue;
        }
        let msg = match net {
            IpNet::V4(n) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(n.network(), n.prefix_len())
                .gateway(GATEWAY_V4)
                .output_interface(idx)
                .protocol(RouteProtocol::from(RT_PROTO_PEERD))
                .onlink()
                .build(),
            IpNet::V6(n) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(n.network(), n.prefix_len())
                .gateway(GATEWAY_V6)
                .output_interface(idx)
                .protocol(RouteProtocol::from(RT_PROTO_PEERD))
                .build(),
        };
        h.route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(nl("adding route in", ns))?;
        ch.push(format!("added route {net} in {ns}"));
    }
    for (net, r) in have {
        if !want.contains(&net) {
            h.route()
                .del(r)
                .execute()
                .await
                .map_err(nl("removing route in", ns))?;
            ch.push(format!("removed route {net} in {ns}"));
        }
    }
    Ok(())
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfreqData {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// GRO, TX checksum offload and VLAN tag insertion offload of the VPC-side end, for the XDP
/// datapath or for TC; run on a thread inside the namespace. Returns what changed.
fn set_xdp_features(xdp: bool, ns: &str) -> Result<Vec<String>, Error> {
    let (gro, txcsum) = if xdp { (1, 0) } else { (0, 1) };
    let features = [
        ("gro", ETHTOOL_GGRO, ETHTOOL_SGRO, gro),
        ("tx-checksumming", ETHTOOL_GTXCSUM, ETHTOOL_STXCSUM, txcsum),
    ];
    let mut c = Vec::new();
    for (name, get, set, want) in features {
        let have =
            ethtool(NS_IFNAME, get, 0).map_err(io("ethtool get on", Path::new(NS_IFNAME)))?;
        if have != want {
            ethtool(NS_IFNAME, set, want).map_err(io("ethtool set on", Path::new(NS_IFNAME)))?;
            let state = if want == 1 { "on" } else { "off" };
            c.push(format!("set {name} {state} on {NS_IFNAME} in {ns}"));
        }
    }
    // VLAN tag insertion off for XDP: a tagged frame then carries its tag in the data, where
    // the XDP program sees it and drops it; offloaded, the tag would ride in skb metadata that
    // XDP cannot see, and the redirect would deliver the frame untagged. (TC sees the tag
    // either way; there the kernel's default, on, is restored.)
    let vlan_insert = ["tx-vlan-hw-insert", "tx-vlan-stag-hw-insert"];
    let changed = crate::ethtool::set_features(NS_IFNAME, &vlan_insert, !xdp)
        .map_err(io("ethtool features on", Path::new(NS_IFNAME)))?;
    for name in changed {
        let state = if xdp { "off" } else { "on" };
        c.push(format!("set {name} {state} on {NS_IFNAME} in {ns}"));
    }
    Ok(c)
}

/// Sets the VPC-side features for a datapath mode (after a switch back to TC, once the XDP
/// links are gone).
pub fn set_vpc_features(netns: &str, xdp: bool) -> Result<Changes, Error> {
    let ns = netns.to_owned();
    let actions = with_handle(
        Some(netns),
        move |_h| async move { set_xdp_features(xdp, &ns) },
    )?;
    Ok(Changes { actions })
}

/// One ethtool get/set of a boolean feature, in the calling thread's namespace.
fn ethtool(ifname: &str, cmd: u32, data: u32) -> std::io::Result<u32> {
    // SAFETY: a plain socket; closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut v = EthtoolValue { cmd, data };
    let mut req = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data: &mut v as *mut _ as *mut libc::c_void,
        _pad: [0; 16],
    };
    for (d, s) in req
        .name
        .iter_mut()
        .zip(ifname.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s;
    }
    // SAFETY: req points at a valid ifreq whose data points at a valid ethtool_value.
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut req) };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(err);
    }
    Ok(v.data)
}

/// Deletes a VPC's namespace (and with it the veth pair). Fine if it is already gone.
pub fn remove_vpc(netns: &str, host_if: &str) -> Result<Changes, Error> {
    let mut ch = Vec::new();
    let host_if_owned = host_if.to_owned();
    // Deleting the host end removes the pair at once, even if something still holds the ns.
    let deleted = with_handle(None, move |h| async move {
        match get_link(&h, &host_if_owned).await? {
            Some(l) => {
                h.link()
                    .del(l.header.index)
                    .execute()
                    .await
                    .map_err(nl("deleting", &host_if_owned))?;
                Ok(true)
            }
            None => Ok(false),
        }
    })?;
    if deleted {
        ch.push(format!("deleted veth {host_if}"));
    }
    if delete_netns(netns)? {
        ch.push(format!("deleted namespace {netns}"));
    }
    Ok(Changes { actions: ch })
}

/// The ifindex of a link in the root namespace.
pub fn ifindex(name: &str) -> Result<Option<u32>, Error> {
    let name = name.to_owned();
    with_handle(None, move |h| async move {
        Ok(get_link(&h, &name).await?.map(|l| l.header.index))
    })
}
