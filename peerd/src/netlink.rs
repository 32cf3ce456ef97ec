//! Long-lived rtnetlink handles: one for the host namespace (the one peerd runs in) and one per
//! VPC namespace, opened once and reused by every reconcile.
//!
//! A namespace's socket is created on a short thread that entered the namespace (the socket
//! stays bound to it) and then driven by the caller's tokio runtime. A handle is dropped when
//! its namespace goes, and reopened when a namespace of the same name is a new one (another
//! inode): a cached socket would otherwise keep a deleted namespace alive and report on it.
use std::{collections::HashMap, net::IpAddr, os::fd::IntoRawFd as _};

use futures::TryStreamExt as _;
use netlink_packet_route::{
    link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol},
    AddressFamily,
};
use netlink_sys::{protocols::NETLINK_ROUTE, TokioSocket};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::netns;

const ENODEV: i32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {target}: {source}")]
    Netlink {
        op: &'static str,
        target: String,
        source: rtnetlink::Error,
    },
    #[error("netlink socket in {ns}: {source}")]
    Socket { ns: String, source: std::io::Error },
    #[error(transparent)]
    Netns(#[from] netns::Error),
    #[error("namespace {0} does not exist")]
    NoNamespace(String),
}

pub fn failed(
    op: &'static str,
    target: impl Into<String>,
) -> impl FnOnce(rtnetlink::Error) -> Error {
    let target = target.into();
    move |source| Error::Netlink { op, target, source }
}

/// The handles. Create it inside the tokio runtime that will drive the sockets.
pub struct Netlink {
    host: Handle,
    /// Held only to look up or insert, never across an await.
    by_ns: std::sync::Mutex<HashMap<String, (u64, Handle)>>,
}

/// A route netlink socket bound in namespace `name` (created on a short thread that entered
/// it), joined to multicast `groups`.
async fn ns_socket(name: &str, groups: &[u32]) -> Result<TokioSocket, Error> {
    socket_at(&netns::path(name), name, groups).await
}

/// The same in the namespace whose file is `path` (`/run/netns/NAME`, `/proc/PID/ns/net`).
async fn socket_at(
    path: &std::path::Path,
    name: &str,
    groups: &[u32],
) -> Result<TokioSocket, Error> {
    let path = path.to_owned();
    let groups = groups.to_vec();
    let fd = tokio::task::spawn_blocking(move || {
        netns::run_at(&path, || -> std::io::Result<i32> {
            let mut s = netlink_sys::Socket::new(NETLINK_ROUTE)?;
            s.bind_auto()?;
            for g in groups {
                s.add_membership(g)?;
            }
            Ok(s.into_raw_fd())
        })
    })
    .await
    .map_err(|_| netns::Error::Thread(name.to_owned()))??
    .map_err(|source| Error::Socket {
        ns: name.to_owned(),
        source,
    })?;
    // SAFETY: `fd` is the netlink socket just created for us and owned by nobody else.
    Ok(unsafe { <TokioSocket as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

fn connect(sock: TokioSocket) -> Handle {
    let (conn, handle, _) = rtnetlink::from_socket(sock);
    tokio::spawn(conn);
    handle
}

impl Netlink {
    pub fn new() -> Result<Netlink, Error> {
        let (conn, host, _) = rtnetlink::new_connection().map_err(|source| Error::Socket {
            ns: "host namespace".into(),
            source,
        })?;
        tokio::spawn(conn);
        Ok(Netlink {
            host,
            by_ns: Default::default(),
        })
    }

    /// The handle of the namespace peerd runs in (the host side of every veth).
    pub fn host(&self) -> Handle {
        self.host.clone()
    }

    /// The handle of named namespace `name`, opened on first use.
    pub async fn ns(&self, name: &str) -> Result<Handle, Error> {
        let Some(ino) = netns::inode(name) else {
            self.forget(name);
            return Err(Error::NoNamespace(name.to_owned()));
        };
        if let Some((i, h)) = self.cache().get(name) {
            if *i == ino {
                return Ok(h.clone());
            }
        }
        let h = connect(ns_socket(name, &[]).await?);
        self.cache().insert(name.to_owned(), (ino, h.clone()));
        Ok(h)
    }

    /// Drops the handle of a namespace that is being deleted (so the socket does not keep it
    /// alive).
    pub fn forget(&self, name: &str) {
        self.cache().remove(name);
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Handle)>> {
        self.by_ns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A link by name; `None` when there is none.
pub async fn get_link(h: &Handle, name: &str) -> Result<Option<LinkMessage>, Error> {
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
        Err(e) => Err(failed("looking up link", name)(e)),
    }
}

/// Every link of a namespace, by name.
pub async fn dump_links(h: &Handle, ns: &str) -> Result<HashMap<String, LinkMessage>, Error> {
    let links = dump(h.link().get().execute(), "listing links in", ns).await?;
    Ok(links
        .into_iter()
        .filter_map(|l| Some((name_of(&l)?.to_owned(), l)))
        .collect())
}

pub fn name_of(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

pub fn mac_of(l: &LinkMessage) -> [u8; 6] {
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(m) if m.len() == 6 => Some([m[0], m[1], m[2], m[3], m[4], m[5]]),
            _ => None,
        })
        .unwrap_or_default()
}

pub fn mtu_of(l: &LinkMessage) -> u32 {
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(0)
}

/// The ifindex of the other end of a veth (in the namespace that end lives in).
pub fn peer_of(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(i) => Some(*i),
        _ => None,
    })
}

pub fn alias_of(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(s) => Some(s.as_str()),
        _ => None,
    })
}

pub fn is_veth(l: &LinkMessage) -> bool {
    l.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    })
}

pub fn is_up(l: &LinkMessage) -> bool {
    l.header.flags.contains(LinkFlags::Up)
}

/// Permanent neighbour entries on `ifindex`: (address, MAC).
pub async fn permanent_neighbours(
    h: &Handle,
    ifindex: u32,
    ns: &str,
) -> Result<Vec<(IpAddr, Vec<u8>)>, Error> {
    let neighbours = dump(h.neighbours().get().execute(), "listing neighbours in", ns).await?;
    let mut out = Vec::new();
    for n in neighbours {
        if n.header.ifindex != ifindex
            || n.header.state != netlink_packet_route::neighbour::NeighbourState::Permanent
        {
            continue;
        }
        let dst = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => Some(IpAddr::V4(*a)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
            _ => None,
        });
        let ll = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(m) => Some(m.clone()),
            _ => None,
        });
        if let (Some(d), Some(m)) = (dst, ll) {
            out.push((d, m));
        }
    }
    Ok(out)
}

/// Routes of protocol `proto` in the main table, both families: (destination, message).
pub async fn routes_of_proto(
    h: &Handle,
    proto: u8,
    ns: &str,
) -> Result<Vec<(ipnet::IpNet, RouteMessage)>, Error> {
    let mut out = Vec::new();
    for r in dump_routes(h, ns).await? {
        if u8::from(r.header.protocol) != proto && r.header.protocol != RouteProtocol::Other(proto)
        {
            continue;
        }
        let net = match route_dst(&r) {
            Some(d) => ipnet::IpNet::new(d, r.header.destination_prefix_length).ok(),
            None => None,
        };
        if let Some(net) = net {
            out.push((net, r));
        }
    }
    Ok(out)
}

/// Every route of the main table in a namespace, both families.
async fn dump_routes(h: &Handle, ns: &str) -> Result<Vec<RouteMessage>, Error> {
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut q = RouteMessageBuilder::<IpAddr>::new().build();
        q.header.address_family = family;
        let routes = dump(h.route().get(q).execute(), "listing routes in", ns).await?;
        out.extend(routes);
    }
    Ok(out)
}

/// Every message of a netlink dump in namespace `ns`; `what` says what it lists in the error.
async fn dump<T>(
    s: impl futures::TryStream<Ok = T, Error = rtnetlink::Error>,
    what: &'static str,
    ns: &str,
) -> Result<Vec<T>, Error> {
    s.try_collect().await.map_err(failed(what, ns))
}

/// The destination address of a route, if it has one.
fn route_dst(r: &RouteMessage) -> Option<IpAddr> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    })
}

/// Groups a namespace's event socket joins: addresses and routes of both families.
const EVENT_GROUPS: [u32; 4] = [
    5,  // RTNLGRP_IPV4_IFADDR
    7,  // RTNLGRP_IPV4_ROUTE
    9,  // RTNLGRP_IPV6_IFADDR
    11, // RTNLGRP_IPV6_ROUTE
];

impl Netlink {
    /// A stream of address and route events of namespace `name` (one item per netlink
    /// message); it ends when the namespace goes. Runs on the caller's runtime.
    pub async fn ns_events(
        &self,
        name: &str,
    ) -> Result<futures::channel::mpsc::UnboundedReceiver<()>, Error> {
        let sock = ns_socket(name, &EVENT_GROUPS).await?;
        let (conn, _handle, mut messages) = rtnetlink::from_socket(sock);
        tokio::spawn(conn);
        let (tx, rx) = futures::channel::mpsc::unbounded();
        tokio::spawn(async move {
            use futures::StreamExt as _;
            while messages.next().await.is_some() {
                if tx.unbounded_send(()).is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

/// Every address configured in a namespace.
pub async fn addresses(h: &Handle, ns: &str) -> Result<Vec<IpAddr>, Error> {
    use netlink_packet_route::address::AddressAttribute;
    let addresses = dump(h.address().get().execute(), "listing addresses in", ns).await?;
    let mut out = Vec::new();
    for a in addresses {
        // IPv4 reports the local address as Local (Address is the peer on point-to-point).
        let local = a
            .attributes
            .iter()
            .find_map(|x| match x {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            })
            .or_else(|| {
                a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
        out.extend(local);
    }
    Ok(out)
}

/// Host routes (/32, /128) of the main table in a namespace that go out of a link other than
/// `except_ifindex`, any protocol but `except_proto`: workloads reached through a link.
pub async fn host_routes(
    h: &Handle,
    ns: &str,
    except_ifindex: u32,
    except_proto: u8,
) -> Result<Vec<IpAddr>, Error> {
    let mut out = Vec::new();
    for r in dump_routes(h, ns).await? {
        let host = r.header.destination_prefix_length
            == if r.header.address_family == AddressFamily::Inet {
                32
            } else {
                128
            };
        if !host || u8::from(r.header.protocol) == except_proto {
            continue;
        }
        let oif = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        if oif == Some(except_ifindex) || oif.is_none() {
            continue;
        }
        out.extend(route_dst(&r));
    }
    Ok(out)
}

/// The MTU of the link that holds `addr` in the namespace of `h`, if one does.
pub async fn mtu_of_address(h: &Handle, addr: IpAddr) -> Result<Option<u32>, Error> {
    use netlink_packet_route::address::AddressAttribute;
    let mut s = h.address().get().execute();
    let mut index = None;
    while let Some(a) = s
        .try_next()
        .await
        .map_err(failed("listing addresses in", "host"))?
    {
        let holds = a.attributes.iter().any(|x| {
            matches!(x, AddressAttribute::Local(ip) | AddressAttribute::Address(ip) if *ip == addr)
        });
        if holds {
            index = Some(a.header.index);
            break;
        }
    }
    let Some(index) = index else {
        return Ok(None);
    };
    let mut links = h.link().get().match_index(index).execute();
    Ok(links
        .try_next()
        .await
        .map_err(failed("looking up link", index.to_string()))?
        .map(|l| mtu_of(&l)))
}

/// A handle of the namespace whose file is `path` (a `/run/netns/NAME` or `/proc/PID/ns/net`),
/// not cached: dropped with the last clone.
pub async fn open_at(path: &std::path::Path) -> Result<Handle, Error> {
    let label = path.display().to_string();
    Ok(connect(socket_at(path, &label, &[]).await?))
}

/// Every address of link `ifindex` (address and prefix length).
pub async fn addresses_of(h: &Handle, ifindex: u32, ns: &str) -> Result<Vec<ipnet::IpNet>, Error> {
    Ok(address_messages_of(h, ifindex, ns)
        .await?
        .into_iter()
        .map(|(n, _)| n)
        .collect())
}

/// Every address of link `ifindex`, with its message (to delete it).
pub async fn address_messages_of(
    h: &Handle,
    ifindex: u32,
    ns: &str,
) -> Result<Vec<(ipnet::IpNet, netlink_packet_route::address::AddressMessage)>, Error> {
    use netlink_packet_route::address::AddressAttribute;
    let mut out = Vec::new();
    let mut s = h.address().get().set_link_index_filter(ifindex).execute();
    while let Some(a) = s
        .try_next()
        .await
        .map_err(failed("listing addresses in", ns))?
    {
        if a.header.index != ifindex {
            continue;
        }
        let ip = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        if let Some(net) = ip.and_then(|ip| ipnet::IpNet::new(ip, a.header.prefix_len).ok()) {
            out.push((net, a));
        }
    }
    Ok(out)
}

/// Deletes the routes of protocol `proto` to `net` in the main table.
pub async fn del_routes_of_proto(
    h: &Handle,
    proto: u8,
    net: ipnet::IpNet,
    ns: &str,
) -> Result<(), Error> {
    for (n, r) in routes_of_proto(h, proto, ns).await? {
        if n == net {
            h.route()
                .del(r)
                .execute()
                .await
                .map_err(failed("removing route in", ns))?;
        }
    }
    Ok(())
}

/// Whether `l` is a tun/tap device.
pub fn is_tun(l: &LinkMessage) -> bool {
    l.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Tun))),
        _ => false,
    })
}

/// Creates veth `name` (with `alias`) in the namespace of `h`, its peer `peer` made directly
/// inside the namespace whose file is `peer_ns` (no move between namespaces); both ends of
/// MTU `mtu`, down.
pub async fn add_veth(
    h: &Handle,
    name: &str,
    alias: Option<&str>,
    peer: &str,
    peer_ns: &std::fs::File,
    mtu: u32,
) -> Result<(), Error> {
    use std::os::fd::AsRawFd as _;
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer.to_owned())
        .mtu(mtu)
        .setns_by_fd(peer_ns.as_raw_fd())
        .build();
    let mut b = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(name.to_owned())
        .mtu(mtu)
        .down();
    if let Some(a) = alias {
        b = b.alias(a);
    }
    h.link()
        .add(
            b.set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .build(),
        )
        .execute()
        .await
        .map_err(failed("creating veth", name))?;
    Ok(())
}
