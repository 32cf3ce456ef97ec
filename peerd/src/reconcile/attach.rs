//! Reconciler for attached workloads (`peerd attach`, the CNI plugin; see docs/workloads.md):
//! inside each VPC namespace that has some, the workloads' links (the VPC end of a container's
//! veth pair, or a VM's tap), their host routes, and forwarding; inside a container's
//! namespace, its end of the pair with the addresses and default routes via the link-local
//! gateway.
//!
//! The gateway scheme: a workload sends everything to `169.254.1.1` / `fe80::1`. The VPC end
//! of its link answers for both: proxy ARP (the VPC namespace has a route to `169.254.1.1`
//! through its uplink, so the kernel answers ARP for it on every other link) and `fe80::1`
//! as an address of the link. Routes and links peerd makes here carry protocol
//! [`RT_PROTO_ATTACH`] and alias [`ALIAS`]; nothing else is ever touched.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags, AddressHeaderFlags},
    link::LinkMessage,
    route::{RouteProtocol, RouteScope},
};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use super::{
    links::Error,
    routes::{GATEWAY_V4, GATEWAY_V6},
    Report,
};
use crate::{
    attach::{netns_path, Attachment, Workload},
    netlink::{self, Netlink},
    netns::{self, NS_IFNAME},
};

/// Protocol of the routes peerd installs for attached workloads (host routes in the VPC
/// namespace, default routes in a container's). Not `RT_PROTO_PEERD`: workload discovery
/// (`endpoints.rs`) counts these host routes as the VPC's endpoints.
pub const RT_PROTO_ATTACH: u8 = 0xd1;
/// The alias of the workload links peerd put in a VPC namespace.
pub const ALIAS: &str = "peerd-attach";

/// One workload link wanted in a VPC namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkWant {
    pub key: String,
    pub workload: Workload,
    pub addresses: Vec<IpNet>,
}

/// What one VPC namespace should hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    pub vpc: String,
    pub netns: String,
    pub mtu: u32,
    /// VPC-side link name -> its workload.
    pub links: BTreeMap<String, LinkWant>,
}

impl Want {
    /// The wanted attachments of every VPC in `vpcs` (its namespace and MTU), from the state.
    pub fn of(
        attachments: &BTreeMap<String, Attachment>,
        vpcs: &BTreeMap<String, crate::desired::VpcWant>,
    ) -> BTreeMap<String, Want> {
        let mut out: BTreeMap<String, Want> = BTreeMap::new();
        for (key, a) in attachments {
            let Some(v) = vpcs.get(&a.vpc) else { continue };
            out.entry(a.vpc.clone())
                .or_insert_with(|| Want::empty(v))
                .links
                .insert(
                    a.workload.vpc_link(&a.vpc),
                    LinkWant {
                        key: key.clone(),
                        workload: a.workload.clone(),
                        addresses: a.addresses.clone(),
                    },
                );
        }
        out
    }

    /// A VPC with no attachment (looked at to remove what is left).
    pub fn empty(v: &crate::desired::VpcWant) -> Want {
        Want {
            vpc: v.name.clone(),
            netns: v.netns.clone(),
            mtu: v.mtu,
            links: BTreeMap::new(),
        }
    }

    /// Routes of protocol `RT_PROTO_ATTACH` in the VPC namespace: destination -> link.
    fn routes(&self, absent: &BTreeSet<String>) -> BTreeMap<IpNet, String> {
        let mut out = BTreeMap::new();
        if self.links.is_empty() {
            return out;
        }
        // The gateway is reachable through the uplink: what proxy ARP answers for.
        out.insert(IpNet::from(IpAddr::V4(GATEWAY_V4)), NS_IFNAME.to_owned());
        for (link, w) in &self.links {
            if absent.contains(link) {
                continue;
            }
            for a in &w.addresses {
                out.insert(IpNet::from(a.addr()), link.clone());
            }
        }
        out
    }
}

/// A workload link found in the VPC namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Up, with the alias, proxy ARP and `fe80::1`.
    pub ready: bool,
    pub tap: bool,
}

/// One VPC namespace as found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Have {
    /// IPv4 and IPv6 forwarding on in the namespace.
    pub forwarding: bool,
    /// Every link of the namespace: name -> ifindex.
    pub ifindex: BTreeMap<String, u32>,
    /// Workload links (peerd's alias, or a wanted name).
    pub links: BTreeMap<String, Found>,
    /// Routes of protocol `RT_PROTO_ATTACH`: destination -> output ifindex.
    pub routes: BTreeMap<IpNet, u32>,
    /// Wanted taps found in the host namespace (to move in).
    pub host_taps: BTreeSet<String>,
    /// Wanted links whose workload is nowhere (its namespace or tap is gone): left alone.
    pub absent: BTreeSet<String>,
    /// Wanted veth links whose container end has the addresses and default routes.
    pub workload_ok: BTreeSet<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Forwarding {
        vpc: String,
        netns: String,
    },
    CreateVeth {
        key: String,
        netns: String,
        link: String,
        mtu: u32,
        workload_ns: String,
        ifname: String,
    },
    TakeTap {
        key: String,
        netns: String,
        tap: String,
    },
    SetupLink {
        key: String,
        netns: String,
        link: String,
    },
    SetupWorkload {
        key: String,
        workload_ns: String,
        ifname: String,
        addresses: Vec<IpNet>,
    },
    AddRoute {
        key: String,
        netns: String,
        net: IpNet,
        link: String,
    },
    DelRoute {
        vpc: String,
        netns: String,
        net: IpNet,
    },
    /// A workload link no longer wanted: a veth is deleted, a tap goes back to the host.
    Remove {
        vpc: String,
        netns: String,
        link: String,
        tap: bool,
    },
}

impl Change {
    /// The object an error is reported for: the attachment's key, or "VPC/forwarding".
    pub fn object(&self) -> String {
        match self {
            Change::Forwarding { vpc, .. } => format!("{vpc}/forwarding"),
            Change::CreateVeth { key, .. }
            | Change::TakeTap { key, .. }
            | Change::SetupLink { key, .. }
            | Change::SetupWorkload { key, .. }
            | Change::AddRoute { key, .. } => key.clone(),
            Change::DelRoute { vpc, net, .. } => format!("{vpc}/route {net}"),
            Change::Remove { vpc, link, .. } => format!("{vpc}/{link}"),
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Forwarding { netns, .. } => write!(f, "~ forwarding on in {netns}"),
            Change::CreateVeth {
                netns,
                link,
                workload_ns,
                ifname,
                ..
            } => write!(f, "+ veth {link} in {netns} <-> {ifname} in {workload_ns}"),
            Change::TakeTap { netns, tap, .. } => write!(f, "+ tap {tap} moved into {netns}"),
            Change::SetupLink { netns, link, .. } => {
                write!(f, "~ workload link {link} in {netns}: up, gateway")
            }
            Change::SetupWorkload {
                workload_ns,
                ifname,
                addresses,
                ..
            } => write!(
                f,
                "~ {ifname} in {workload_ns}: {}, default routes",
                crate::attach::list(addresses)
            ),
            Change::AddRoute {
                netns, net, link, ..
            } => write!(f, "+ route {net} dev {link} in {netns}"),
            Change::DelRoute { netns, net, .. } => write!(f, "- route {net} in {netns}"),
            Change::Remove {
                netns, link, tap, ..
            } => {
                if *tap {
                    write!(f, "- tap {link} out of {netns}")
                } else {
                    write!(f, "- veth {link} in {netns}")
                }
            }
        }
    }
}

/// The link-local addresses a link gets by itself: not the workload's.
fn link_local(n: &IpNet) -> bool {
    matches!(n.addr(), IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80)
}

pub async fn observe(
    nl: &Netlink,
    host_links: &HashMap<String, LinkMessage>,
    want: &Want,
) -> Result<Have, Error> {
    let h = nl.ns(&want.netns).await?;
    let all = netlink::dump_links(&h, &want.netns).await?;
    let mut have = Have {
        ifindex: all
            .iter()
            .map(|(n, l)| (n.clone(), l.header.index))
            .collect(),
        ..Have::default()
    };
    let mut found: Vec<(String, &LinkMessage)> = Vec::new();
    for (name, l) in &all {
        if netlink::alias_of(l) == Some(ALIAS) || want.links.contains_key(name) {
            found.push((name.clone(), l));
        }
    }
    let names: Vec<String> = found.iter().map(|(n, _)| n.clone()).collect();
    // Sysctls matter only where workloads are wanted (a thread per namespace otherwise).
    let wanted = !want.links.is_empty();
    let (forwarding, proxy_arp) = netns::run_in(&want.netns, move || {
        if !wanted {
            return (false, BTreeSet::new());
        }
        let on = |p: &str| {
            std::fs::read_to_string(p)
                .map(|v| v.trim() == "1")
                .unwrap_or(false)
        };
        let fwd =
            on("/proc/sys/net/ipv4/ip_forward") && on("/proc/sys/net/ipv6/conf/all/forwarding");
        let arp: BTreeSet<String> = names
            .into_iter()
            .filter(|n| on(&format!("/proc/sys/net/ipv4/conf/{n}/proxy_arp")))
            .collect();
        (fwd, arp)
    })?;
    have.forwarding = forwarding;
    let gw6 = IpNet::new(IpAddr::V6(GATEWAY_V6), 64).expect("a /64");
    for (name, l) in found {
        let addrs = netlink::addresses_of(&h, l.header.index, &want.netns).await?;
        have.links.insert(
            name.clone(),
            Found {
                ready: netlink::is_up(l)
                    && netlink::alias_of(l) == Some(ALIAS)
                    && proxy_arp.contains(&name)
                    && addrs.contains(&gw6),
                tap: netlink::is_tun(l),
            },
        );
    }
    for (net, r) in netlink::routes_of_proto(&h, RT_PROTO_ATTACH, &want.netns).await? {
        let oif = r.attributes.iter().find_map(|a| match a {
            netlink_packet_route::route::RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        have.routes.insert(net, oif.unwrap_or(0));
    }
    for (link, w) in &want.links {
        match &w.workload {
            Workload::Tap { ifname } => {
                if !have.links.contains_key(link) {
                    if host_links.get(ifname).is_some_and(netlink::is_tun) {
                        have.host_taps.insert(ifname.clone());
                    } else {
                        have.absent.insert(link.clone());
                    }
                }
            }
            Workload::Netns { netns, ifname } => {
                let path = netns_path(netns);
                if !path.exists() {
                    have.absent.insert(link.clone());
                } else if have.links.contains_key(link)
                    && workload_complete(&path, ifname, &w.addresses).await?
                {
                    have.workload_ok.insert(link.clone());
                }
            }
        }
    }
    Ok(have)
}

/// The container's end: up, exactly the wanted addresses, a default route per family.
async fn workload_complete(
    path: &std::path::Path,
    ifname: &str,
    addresses: &[IpNet],
) -> Result<bool, Error> {
    let label = path.display().to_string();
    let h = netlink::open_at(path).await?;
    let Some(l) = netlink::get_link(&h, ifname).await? else {
        return Ok(false);
    };
    let have: BTreeSet<IpNet> = netlink::addresses_of(&h, l.header.index, &label)
        .await?
        .into_iter()
        .filter(|n| !link_local(n))
        .collect();
    let want: BTreeSet<IpNet> = addresses.iter().copied().collect();
    let defaults: BTreeSet<bool> = netlink::routes_of_proto(&h, RT_PROTO_ATTACH, &label)
        .await?
        .into_iter()
        .filter(|(n, _)| n.prefix_len() == 0)
        .map(|(n, _)| n.addr().is_ipv4())
        .collect();
    let families: BTreeSet<bool> = want.iter().map(|n| n.addr().is_ipv4()).collect();
    Ok(netlink::is_up(&l) && have == want && families.is_subset(&defaults))
}

pub fn diff(have: &Have, want: &Want) -> Vec<Change> {
    let mut out = Vec::new();
    let live: Vec<(&String, &LinkWant)> = want
        .links
        .iter()
        .filter(|(l, _)| !have.absent.contains(*l))
        .collect();
    if !live.is_empty() && !have.forwarding {
        out.push(Change::Forwarding {
            vpc: want.vpc.clone(),
            netns: want.netns.clone(),
        });
    }
    for (link, w) in &live {
        let found = have.links.get(*link);
        match (&w.workload, found) {
            (Workload::Netns { netns, ifname }, None) => out.push(Change::CreateVeth {
                key: w.key.clone(),
                netns: want.netns.clone(),
                link: (*link).clone(),
                mtu: want.mtu,
                workload_ns: netns.clone(),
                ifname: ifname.clone(),
            }),
            (Workload::Tap { ifname }, None) if have.host_taps.contains(ifname) => {
                out.push(Change::TakeTap {
                    key: w.key.clone(),
                    netns: want.netns.clone(),
                    tap: ifname.clone(),
                })
            }
            _ => {}
        }
        if !found.is_some_and(|f| f.ready) {
            out.push(Change::SetupLink {
                key: w.key.clone(),
                netns: want.netns.clone(),
                link: (*link).clone(),
            });
        }
        if let Workload::Netns { netns, ifname } = &w.workload {
            if !have.workload_ok.contains(*link) {
                out.push(Change::SetupWorkload {
                    key: w.key.clone(),
                    workload_ns: netns.clone(),
                    ifname: ifname.clone(),
                    addresses: w.addresses.clone(),
                });
            }
        }
    }
    let routes = want.routes(&have.absent);
    for (net, link) in &routes {
        let same = have
            .ifindex
            .get(link)
            .is_some_and(|i| have.routes.get(net) == Some(i));
        if !same {
            let key = want
                .links
                .get(link)
                .map(|w| w.key.clone())
                .unwrap_or_else(|| format!("{}/gateway", want.vpc));
            out.push(Change::AddRoute {
                key,
                netns: want.netns.clone(),
                net: *net,
                link: link.clone(),
            });
        }
    }
    for net in have.routes.keys().filter(|n| !routes.contains_key(*n)) {
        // Routes of absent workloads stay (their link went with them).
        let absent = want.links.iter().any(|(l, w)| {
            have.absent.contains(l) && w.addresses.iter().any(|a| a.addr() == net.addr())
        });
        if !absent {
            out.push(Change::DelRoute {
                vpc: want.vpc.clone(),
                netns: want.netns.clone(),
                net: *net,
            });
        }
    }
    for (link, f) in &have.links {
        if !want.links.contains_key(link) {
            out.push(Change::Remove {
                vpc: want.vpc.clone(),
                netns: want.netns.clone(),
                link: link.clone(),
                tap: f.tap,
            });
        }
    }
    out
}

/// Applies every change in order; a failure is reported for its object (its attachment) and
/// the changes of other objects go on.
pub async fn apply(nl: &Netlink, changes: Vec<Change>) -> Report {
    let mut report = Report::default();
    for c in changes {
        let obj = c.object();
        if report.errors.contains_key(&obj) {
            continue;
        }
        let line = c.to_string();
        match apply_one(nl, &c).await {
            Ok(()) => report.actions.push(line),
            Err(e) => {
                report.errors.insert(obj, format!("{line}: {e}"));
            }
        }
    }
    report
}

async fn link_index(h: &Handle, name: &str) -> Result<u32, Error> {
    Ok(netlink::get_link(h, name)
        .await?
        .ok_or_else(|| Error::Blocked(format!("link {name} is missing")))?
        .header
        .index)
}

/// Sets sysctls (paths under /proc/sys/net) to "1" inside namespace `ns`.
fn sysctls_on(ns: &str, paths: Vec<String>) -> Result<(), Error> {
    netns::run_in(ns, move || -> Result<(), Error> {
        for p in paths {
            netns::write_sysctl(&p, "1").map_err(netns::io("writing", Path::new(&p)))?;
        }
        Ok(())
    })?
}

async fn add_address(h: &Handle, ifindex: u32, net: IpNet, ns: &str) -> Result<(), Error> {
    let mut req = h
        .address()
        .add(ifindex, net.addr(), net.prefix_len())
        .replace();
    if net.addr().is_ipv6() {
        // Usable at once: the namespace is ours to configure and the address is unique in it.
        let m = req.message_mut();
        m.header.flags |= AddressHeaderFlags::Nodad;
        m.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    req.execute()
        .await
        .map_err(netlink::failed("adding address in", ns))?;
    Ok(())
}

async fn set_up(h: &Handle, ifindex: u32, alias: Option<&str>, what: &str) -> Result<(), Error> {
    let mut b = LinkUnspec::new_with_index(ifindex).up();
    if let Some(a) = alias {
        b = b.alias(a);
    }
    h.link()
        .set(b.build())
        .execute()
        .await
        .map_err(netlink::failed("bringing up", what))?;
    Ok(())
}

/// A route of protocol `RT_PROTO_ATTACH` to `net` out of `ifindex`, via `gateway` when given.
async fn add_route(
    h: &Handle,
    net: IpNet,
    ifindex: u32,
    gateway: Option<IpAddr>,
    ns: &str,
) -> Result<(), Error> {
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(net.addr(), net.prefix_len())
        .expect("a valid prefix")
        .output_interface(ifindex)
        .protocol(RouteProtocol::from(RT_PROTO_ATTACH));
    match gateway {
        Some(gw) => b = b.gateway(gw).expect("same family").onlink(),
        None if net.addr().is_ipv4() => b = b.scope(RouteScope::Link),
        None => {}
    }
    h.route()
        .add(b.build())
        .replace()
        .execute()
        .await
        .map_err(netlink::failed("adding route in", ns))?;
    Ok(())
}

async fn apply_one(nl: &Netlink, c: &Change) -> Result<(), Error> {
    match c {
        Change::Forwarding { netns, .. } => sysctls_on(
            netns,
            vec![
                "/proc/sys/net/ipv4/ip_forward".into(),
                "/proc/sys/net/ipv6/conf/all/forwarding".into(),
            ],
        ),
        Change::CreateVeth {
            netns,
            link,
            mtu,
            workload_ns,
            ifname,
            ..
        } => {
            let h = nl.ns(netns).await?;
            let path = netns_path(workload_ns);
            let f = std::fs::File::open(&path).map_err(netns::io("opening", &path))?;
            Ok(netlink::add_veth(&h, link, Some(ALIAS), ifname, &f, *mtu).await?)
        }
        Change::TakeTap { netns, tap, .. } => {
            let host = nl.host();
            let index = link_index(&host, tap).await?;
            move_link(&host, index, &netns::path(netns), tap).await
        }
        Change::SetupLink { netns, link, .. } => {
            let h = nl.ns(netns).await?;
            let index = link_index(&h, link).await?;
            set_up(&h, index, Some(ALIAS), link).await?;
            sysctls_on(
                netns,
                vec![format!("/proc/sys/net/ipv4/conf/{link}/proxy_arp")],
            )?;
            let gw6 = IpNet::new(IpAddr::V6(GATEWAY_V6), 64).expect("a /64");
            add_address(&h, index, gw6, netns).await
        }
        Change::SetupWorkload {
            workload_ns,
            ifname,
            addresses,
            ..
        } => setup_workload(workload_ns, ifname, addresses).await,
        Change::AddRoute {
            netns, net, link, ..
        } => {
            let h = nl.ns(netns).await?;
            let index = link_index(&h, link).await?;
            add_route(&h, *net, index, None, netns).await
        }
        Change::DelRoute { netns, net, .. } => {
            let h = nl.ns(netns).await?;
            Ok(netlink::del_routes_of_proto(&h, RT_PROTO_ATTACH, *net, netns).await?)
        }
        Change::Remove {
            netns, link, tap, ..
        } => {
            let h = nl.ns(netns).await?;
            let Some(l) = netlink::get_link(&h, link).await? else {
                return Ok(());
            };
            let index = l.header.index;
            if !*tap {
                // Deleting one end deletes the pair (and the container's end with it).
                h.link()
                    .del(index)
                    .execute()
                    .await
                    .map_err(netlink::failed("deleting", link))?;
                return Ok(());
            }
            // The tap goes back where it came from, down and without peerd's alias.
            h.link()
                .set(LinkUnspec::new_with_index(index).down().alias("").build())
                .execute()
                .await
                .map_err(netlink::failed("setting down", link))?;
            move_link(&h, index, std::path::Path::new("/proc/self/ns/net"), link).await
        }
    }
}

/// Moves link `index` of the namespace of `h` into the namespace whose file is `to`.
async fn move_link(h: &Handle, index: u32, to: &std::path::Path, name: &str) -> Result<(), Error> {
    let f = std::fs::File::open(to).map_err(netns::io("opening", to))?;
    h.link()
        .set(
            LinkUnspec::new_with_index(index)
                .setns_by_fd(f.as_raw_fd())
                .build(),
        )
        .execute()
        .await
        .map_err(netlink::failed("moving", name))?;
    Ok(())
}

/// The container's end: up (and `lo`), exactly the wanted addresses, default routes via the
/// link-local gateway for each family it has addresses of.
async fn setup_workload(workload_ns: &str, ifname: &str, addresses: &[IpNet]) -> Result<(), Error> {
    let path: PathBuf = netns_path(workload_ns);
    let label = path.display().to_string();
    let h = netlink::open_at(&path).await?;
    let index = link_index(&h, ifname).await?;
    for name in ["lo", ifname] {
        let i = link_index(&h, name).await?;
        set_up(&h, i, None, name).await?;
    }
    let want: BTreeSet<IpNet> = addresses.iter().copied().collect();
    for old in netlink::address_messages_of(&h, index, &label).await? {
        let (net, msg) = old;
        if !link_local(&net) && !want.contains(&net) {
            h.address()
                .del(msg)
                .execute()
                .await
                .map_err(netlink::failed("removing address in", &label))?;
        }
    }
    for net in &want {
        add_address(&h, index, *net, &label).await?;
    }
    if want.iter().any(|n| n.addr().is_ipv4()) {
        let any = IpNet::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).expect("/0");
        add_route(&h, any, index, Some(IpAddr::V4(GATEWAY_V4)), &label).await?;
    }
    if want.iter().any(|n| n.addr().is_ipv6()) {
        let any = IpNet::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0).expect("/0");
        add_route(&h, any, index, Some(IpAddr::V6(GATEWAY_V6)), &label).await?;
    }
    Ok(())
}

/// One pass over the VPCs in `want` (those with attachments, and those to clean up).
pub async fn run(
    nl: &Netlink,
    host_links: &HashMap<String, LinkMessage>,
    want: &BTreeMap<String, Want>,
) -> Report {
    let mut report = Report::default();
    for w in want.values() {
        match observe(nl, host_links, w).await {
            Ok(have) => report.merge(apply(nl, diff(&have, w)).await),
            Err(e) => {
                report
                    .errors
                    .insert(format!("{}/workloads", w.vpc), e.to_string());
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want() -> Want {
        let mut links = BTreeMap::new();
        links.insert(
            "pw00000001".to_owned(),
            LinkWant {
                key: "a/pw00000001".into(),
                workload: Workload::Netns {
                    netns: "c1".into(),
                    ifname: "eth0".into(),
                },
                addresses: vec![
                    "10.1.0.5/24".parse().unwrap(),
                    "fd00:1::5/64".parse().unwrap(),
                ],
            },
        );
        links.insert(
            "tap0".to_owned(),
            LinkWant {
                key: "a/tap0".into(),
                workload: Workload::Tap {
                    ifname: "tap0".into(),
                },
                addresses: vec!["10.1.0.6/24".parse().unwrap()],
            },
        );
        Want {
            vpc: "a".into(),
            netns: "vpc-a".into(),
            mtu: 1500,
            links,
        }
    }

    fn lines(c: &[Change]) -> Vec<String> {
        c.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn a_fresh_namespace_gets_everything() {
        let have = Have {
            ifindex: [("peerd0".to_owned(), 2)].into(),
            host_taps: ["tap0".to_owned()].into(),
            ..Have::default()
        };
        assert_eq!(
            lines(&diff(&have, &want())),
            [
                "~ forwarding on in vpc-a",
                "+ veth pw00000001 in vpc-a <-> eth0 in c1",
                "~ workload link pw00000001 in vpc-a: up, gateway",
                "~ eth0 in c1: 10.1.0.5/24 fd00:1::5/64, default routes",
                "+ tap tap0 moved into vpc-a",
                "~ workload link tap0 in vpc-a: up, gateway",
                "+ route 10.1.0.5/32 dev pw00000001 in vpc-a",
                "+ route 10.1.0.6/32 dev tap0 in vpc-a",
                "+ route 169.254.1.1/32 dev peerd0 in vpc-a",
                "+ route fd00:1::5/128 dev pw00000001 in vpc-a",
            ]
        );
    }

    fn converged() -> Have {
        let ready = Found {
            ready: true,
            tap: false,
        };
        Have {
            forwarding: true,
            ifindex: [
                ("peerd0".to_owned(), 2),
                ("pw00000001".to_owned(), 5),
                ("tap0".to_owned(), 6),
            ]
            .into(),
            links: [
                ("pw00000001".to_owned(), ready.clone()),
                ("tap0".to_owned(), Found { tap: true, ..ready }),
            ]
            .into(),
            routes: [
                ("169.254.1.1/32".parse().unwrap(), 2),
                ("10.1.0.5/32".parse().unwrap(), 5),
                ("fd00:1::5/128".parse().unwrap(), 5),
                ("10.1.0.6/32".parse().unwrap(), 6),
            ]
            .into(),
            workload_ok: ["pw00000001".to_owned()].into(),
            ..Have::default()
        }
    }

    #[test]
    fn converged_means_no_change_and_a_detach_removes_the_link_and_its_routes() {
        assert_eq!(diff(&converged(), &want()), []);
        let mut w = want();
        w.links.remove("tap0");
        assert_eq!(
            lines(&diff(&converged(), &w)),
            ["- route 10.1.0.6/32 in vpc-a", "- tap tap0 out of vpc-a"]
        );
        w.links.clear();
        assert_eq!(
            lines(&diff(&converged(), &w)),
            [
                "- route 10.1.0.5/32 in vpc-a",
                "- route 10.1.0.6/32 in vpc-a",
                "- route 169.254.1.1/32 in vpc-a",
                "- route fd00:1::5/128 in vpc-a",
                "- veth pw00000001 in vpc-a",
                "- tap tap0 out of vpc-a",
            ]
        );
    }

    #[test]
    fn new_addresses_a_moved_route_and_a_gone_workload() {
        let mut w = want();
        w.links.get_mut("pw00000001").unwrap().addresses = vec!["10.1.0.7/24".parse().unwrap()];
        let mut have = converged();
        have.workload_ok.clear();
        have.routes.insert("10.1.0.6/32".parse().unwrap(), 5);
        assert_eq!(
            lines(&diff(&have, &w)),
            [
                "~ eth0 in c1: 10.1.0.7/24, default routes",
                "+ route 10.1.0.6/32 dev tap0 in vpc-a",
                "+ route 10.1.0.7/32 dev pw00000001 in vpc-a",
                "- route 10.1.0.5/32 in vpc-a",
                "- route fd00:1::5/128 in vpc-a",
            ]
        );
        // The container went away (its veth with it): nothing is made for it.
        let mut have = converged();
        have.links.remove("pw00000001");
        have.ifindex.remove("pw00000001");
        have.routes.remove(&"10.1.0.5/32".parse().unwrap());
        have.routes.remove(&"fd00:1::5/128".parse().unwrap());
        have.absent.insert("pw00000001".into());
        assert_eq!(diff(&have, &want()), []);
    }
}
