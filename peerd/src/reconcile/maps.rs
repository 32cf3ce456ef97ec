//! Reconciler for the datapath's map entries: makes the pinned maps hold exactly the desired
//! [`Tables`].
//!
//! Order (so no packet ever follows a half-written path): writes go leaves first — delivery
//! targets (`VPCS`), peerings, routes, source prefixes, and last the interface entries that
//! are the program's entry point — and removals go roots first, in the reverse order. Every
//! entry is applied on its own: one failure (a full trie, say) is reported and the rest goes on,
//! and writes refused for lack of room are retried after the removals, so a full map never
//! blocks another tenant's disconnect (a peering's state is an in-place array update that
//! cannot fail for room).
use std::{collections::BTreeMap, fmt, net::IpAddr};

use aya::maps::{lpm_trie::Key as LpmKey, MapError};
use ipnet::IpNet;
use peerd_common::{
    EndpointKey, IfaceInfo, KeyV4, KeyV6, PeeringInfo, RouteTarget, SrcInfo, Underlay, VpcInfo,
    CONFIG_VXLAN_IFINDEX,
};

use crate::{datapath::Datapath, tables::Tables};

/// The maps' contents as plain values: what a sync wants (from `Tables`) or what the maps hold.
/// The tables as they are, but for the interface entries (as the program reads them) and the
/// reverse index of the hosts (underlay address -> host slot); `t.ifaces` is unused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contents {
    pub ifaces: BTreeMap<u32, IfaceInfo>,
    pub underlay: BTreeMap<IpAddr, u32>,
    pub t: Tables,
}

impl Contents {
    pub fn of(t: &Tables) -> Self {
        Contents {
            ifaces: t.iface_infos(),
            underlay: t.hosts.iter().map(|(s, a)| (*a, *s)).collect(),
            t: Tables {
                ifaces: BTreeMap::new(),
                ..t.clone()
            },
        }
    }

    /// What the maps hold now, read from the kernel.
    pub fn read(dp: &Datapath) -> Result<Contents, MapError> {
        let mut c = Contents::default();
        for e in dp.ifaces.iter() {
            let (k, v) = e?;
            c.ifaces.insert(k, v);
        }
        for (i, v) in dp.vpcs.iter().enumerate() {
            let v = v?;
            if v != VpcInfo::default() {
                c.t.vpcs.insert(i as u32, v);
            }
        }
        for (i, v) in dp.peerings.iter().enumerate() {
            let v = v?;
            if v != PeeringInfo::default() {
                c.t.peerings.insert(i as u32, v);
            }
        }
        // LPM tries: a lookup is a longest-prefix match, so values are read for the keys the
        // trie has (for a present key, the longest match is the key itself).
        for k in dp.src_v4.keys().filter_map(Result::ok) {
            if let Ok(v) = dp.src_v4.get(&k, 0) {
                c.t.src.insert(from_key4(&k), v.table);
            }
        }
        for k in dp.src_v6.keys().filter_map(Result::ok) {
            if let Ok(v) = dp.src_v6.get(&k, 0) {
                c.t.src.insert(from_key6(&k), v.table);
            }
        }
        for k in dp.routes_v4.keys().filter_map(Result::ok) {
            if let Ok(v) = dp.routes_v4.get(&k, 0) {
                c.t.routes.insert(from_key4(&k), v);
            }
        }
        for k in dp.routes_v6.keys().filter_map(Result::ok) {
            if let Ok(v) = dp.routes_v6.get(&k, 0) {
                c.t.routes.insert(from_key6(&k), v);
            }
        }
        for k in dp.endpoints.keys().filter_map(Result::ok) {
            if let (Ok(v), Some(a)) = (dp.endpoints.get(&k, 0), addr_of(k.family, &k.addr)) {
                c.t.endpoints.insert((k.vpc, a), v);
            }
        }
        for (i, v) in dp.hosts.iter().enumerate() {
            let v = v?;
            if let Some(a) = addr_of(v.family, &v.addr) {
                c.t.hosts.insert(i as u32, a);
            }
        }
        for k in dp.underlay.keys().filter_map(Result::ok) {
            if let (Ok(v), Some(a)) = (dp.underlay.get(&k, 0), addr_of(k.family, &k.addr)) {
                c.underlay.insert(a, v);
            }
        }
        for k in dp.vnis.keys().filter_map(Result::ok) {
            if let Ok(v) = dp.vnis.get(&k, 0) {
                c.t.vnis.insert(k, v);
            }
        }
        for k in dp.allowed_v4.keys().filter_map(Result::ok) {
            if let Ok(v) = dp.allowed_v4.get(&k, 0) {
                c.t.allowed.insert(from_key4(&k), v);
            }
        }
        for k in dp.allowed_v6.keys().filter_map(Result::ok) {
            if let Ok(v) = dp.allowed_v6.get(&k, 0) {
                c.t.allowed.insert(from_key6(&k), v);
            }
        }
        c.t.vxlan_ifindex = dp.config.get(&CONFIG_VXLAN_IFINDEX, 0).unwrap_or(0);
        Ok(c)
    }
}

/// An address as peerd-common stores it: family 4 or 6, IPv4 in the first 4 bytes.
pub fn underlay_of(a: IpAddr) -> Underlay {
    let mut u = Underlay::default();
    match a {
        IpAddr::V4(v) => {
            u.family = 4;
            u.addr[..4].copy_from_slice(&v.octets());
        }
        IpAddr::V6(v) => {
            u.family = 6;
            u.addr = v.octets();
        }
    }
    u
}

fn addr_of(family: u32, addr: &[u8; 16]) -> Option<IpAddr> {
    match family {
        4 => Some(IpAddr::from([addr[0], addr[1], addr[2], addr[3]])),
        6 => Some(IpAddr::from(*addr)),
        _ => None,
    }
}

fn endpoint_key(vpc: u32, a: IpAddr) -> EndpointKey {
    let u = underlay_of(a);
    EndpointKey {
        vpc,
        family: u.family,
        addr: u.addr,
    }
}

/// One map entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Vpc(u32, VpcInfo),
    Peering(u32, PeeringInfo),
    Route((u32, IpNet), RouteTarget),
    Src((u32, IpNet), u32),
    Iface(u32, IfaceInfo),
    Endpoint((u32, IpAddr), u32),
    Host(u32, IpAddr),
    Underlay(IpAddr, u32),
    Vni(u32, u32),
    Allowed((u32, IpNet), u32),
    /// The VXLAN device's ifindex (0: none).
    Vxlan(u32),
}

/// One map key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    Vpc(u32),
    Peering(u32),
    Route(u32, IpNet),
    Src(u32, IpNet),
    Iface(u32),
    Endpoint(u32, IpAddr),
    Host(u32),
    Underlay(IpAddr),
    Vni(u32),
    Allowed(u32, IpNet),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Write(Entry),
    Remove(Key),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Write(Entry::Vpc(s, _)) => write!(f, "write VPC slot {s}"),
            Change::Write(Entry::Peering(s, p)) => {
                write!(f, "write peering slot {s} (state {})", p.state)
            }
            Change::Write(Entry::Route((t, n), r)) => {
                write!(f, "write route {n} in table {t} -> peering {}", r.peering)
            }
            Change::Write(Entry::Src((v, n), t)) => {
                write!(f, "write source {n} of VPC slot {v} -> table {t}")
            }
            Change::Write(Entry::Iface(i, info)) => {
                write!(f, "write interface {i} -> VPC slot {}", info.vpc)
            }
            Change::Write(Entry::Endpoint((v, a), h)) => {
                write!(f, "write endpoint {a} of VPC slot {v} -> host slot {h}")
            }
            Change::Write(Entry::Host(s, a)) => write!(f, "write host slot {s} -> {a}"),
            Change::Write(Entry::Underlay(a, s)) => {
                write!(f, "write underlay {a} -> host slot {s}")
            }
            Change::Write(Entry::Vni(n, s)) => write!(f, "write VNI {n} -> VPC slot {s}"),
            Change::Write(Entry::Allowed((v, n), p)) => {
                write!(f, "write allowed source {n} of VPC slot {v} -> peering {p}")
            }
            Change::Write(Entry::Vxlan(i)) => write!(f, "write VXLAN device {i}"),
            Change::Remove(Key::Endpoint(v, a)) => {
                write!(f, "remove endpoint {a} of VPC slot {v}")
            }
            Change::Remove(Key::Host(s)) => write!(f, "clear host slot {s}"),
            Change::Remove(Key::Underlay(a)) => write!(f, "remove underlay {a}"),
            Change::Remove(Key::Vni(n)) => write!(f, "remove VNI {n}"),
            Change::Remove(Key::Allowed(v, n)) => {
                write!(f, "remove allowed source {n} of VPC slot {v}")
            }
            Change::Remove(Key::Vpc(s)) => write!(f, "clear VPC slot {s}"),
            Change::Remove(Key::Peering(s)) => write!(f, "clear peering slot {s}"),
            Change::Remove(Key::Route(t, n)) => write!(f, "remove route {n} of table {t}"),
            Change::Remove(Key::Src(v, n)) => write!(f, "remove source {n} of VPC slot {v}"),
            Change::Remove(Key::Iface(i)) => write!(f, "remove interface {i}"),
        }
    }
}

/// Changed and new entries, leaves first; then stale entries, roots first.
pub fn diff(have: &Contents, want: &Contents) -> Vec<Change> {
    fn writes<K: Ord + Clone, V: PartialEq + Clone>(
        have: &BTreeMap<K, V>,
        want: &BTreeMap<K, V>,
        entry: impl Fn(K, V) -> Entry,
        out: &mut Vec<Change>,
    ) {
        for (k, v) in want {
            if have.get(k) != Some(v) {
                out.push(Change::Write(entry(k.clone(), v.clone())));
            }
        }
    }
    fn removes<K: Ord + Clone, V>(
        have: &BTreeMap<K, V>,
        want: &BTreeMap<K, V>,
        key: impl Fn(K) -> Key,
        out: &mut Vec<Change>,
    ) {
        for k in have.keys().filter(|k| !want.contains_key(k)) {
            out.push(Change::Remove(key(k.clone())));
        }
    }
    let mut out = Vec::new();
    // Cluster mode's leaves: the device, where hosts are, which sources they may send, then
    // the VNIs that make a VPC reachable from them.
    if want.t.vxlan_ifindex != 0 && have.t.vxlan_ifindex != want.t.vxlan_ifindex {
        out.push(Change::Write(Entry::Vxlan(want.t.vxlan_ifindex)));
    }
    writes(&have.t.hosts, &want.t.hosts, Entry::Host, &mut out);
    writes(&have.underlay, &want.underlay, Entry::Underlay, &mut out);
    writes(
        &have.t.endpoints,
        &want.t.endpoints,
        Entry::Endpoint,
        &mut out,
    );
    writes(&have.t.allowed, &want.t.allowed, Entry::Allowed, &mut out);
    writes(&have.t.vnis, &want.t.vnis, Entry::Vni, &mut out);
    writes(&have.t.vpcs, &want.t.vpcs, Entry::Vpc, &mut out);
    writes(&have.t.peerings, &want.t.peerings, Entry::Peering, &mut out);
    writes(&have.t.routes, &want.t.routes, Entry::Route, &mut out);
    writes(&have.t.src, &want.t.src, Entry::Src, &mut out);
    writes(&have.ifaces, &want.ifaces, Entry::Iface, &mut out);
    removes(&have.ifaces, &want.ifaces, Key::Iface, &mut out);
    removes(&have.t.src, &want.t.src, |(v, n)| Key::Src(v, n), &mut out);
    removes(
        &have.t.routes,
        &want.t.routes,
        |(t, n)| Key::Route(t, n),
        &mut out,
    );
    removes(&have.t.peerings, &want.t.peerings, Key::Peering, &mut out);
    removes(&have.t.vpcs, &want.t.vpcs, Key::Vpc, &mut out);
    removes(&have.t.vnis, &want.t.vnis, Key::Vni, &mut out);
    removes(
        &have.t.allowed,
        &want.t.allowed,
        |(v, n)| Key::Allowed(v, n),
        &mut out,
    );
    removes(
        &have.t.endpoints,
        &want.t.endpoints,
        |(v, a)| Key::Endpoint(v, a),
        &mut out,
    );
    removes(&have.underlay, &want.underlay, Key::Underlay, &mut out);
    removes(&have.t.hosts, &want.t.hosts, Key::Host, &mut out);
    if want.t.vxlan_ifindex == 0 && have.t.vxlan_ifindex != 0 {
        out.push(Change::Write(Entry::Vxlan(0)));
    }
    out
}

/// What an apply did.
#[derive(Debug, Default)]
pub struct Applied {
    pub written: usize,
    pub removed: usize,
    /// Changes that failed, with why.
    pub failed: Vec<(Change, String)>,
}

fn no_room(e: &MapError) -> bool {
    match e {
        MapError::SyscallError(s) => matches!(
            s.io_error.raw_os_error(),
            Some(libc::E2BIG | libc::ENOSPC | libc::ENOMEM)
        ),
        _ => false,
    }
}

/// Applies `changes` in order, each on its own; writes refused for room are retried once after
/// the removals.
pub fn apply(dp: &mut Datapath, changes: Vec<Change>) -> Applied {
    let mut done = Applied::default();
    let mut retry = Vec::new();
    for c in changes {
        match apply_one(dp, &c) {
            Ok(()) => match c {
                Change::Write(_) => done.written += 1,
                Change::Remove(_) => done.removed += 1,
            },
            Err(e) if no_room(&e) && matches!(c, Change::Write(_)) => retry.push(c),
            Err(e) => done.failed.push((c, e.to_string())),
        }
    }
    for c in retry {
        match apply_one(dp, &c) {
            Ok(()) => done.written += 1,
            Err(e) => done.failed.push((c, e.to_string())),
        }
    }
    done
}

fn apply_one(dp: &mut Datapath, c: &Change) -> Result<(), MapError> {
    match c {
        Change::Write(Entry::Vpc(k, v)) => dp.vpcs.set(*k, v, 0),
        Change::Write(Entry::Peering(k, v)) => dp.peerings.set(*k, v, 0),
        Change::Write(Entry::Route((id, net), v)) => match net {
            IpNet::V4(_) => dp.routes_v4.insert(&key4(*id, net), v, 0),
            IpNet::V6(_) => dp.routes_v6.insert(&key6(*id, net), v, 0),
        },
        Change::Write(Entry::Src((id, net), table)) => {
            let v = SrcInfo { table: *table };
            match net {
                IpNet::V4(_) => dp.src_v4.insert(&key4(*id, net), v, 0),
                IpNet::V6(_) => dp.src_v6.insert(&key6(*id, net), v, 0),
            }
        }
        Change::Write(Entry::Iface(k, v)) => dp.ifaces.insert(k, v, 0),
        Change::Write(Entry::Endpoint((v, a), h)) => {
            dp.endpoints.insert(endpoint_key(*v, *a), h, 0)
        }
        Change::Write(Entry::Host(s, a)) => dp.hosts.set(*s, underlay_of(*a), 0),
        Change::Write(Entry::Underlay(a, s)) => dp.underlay.insert(underlay_of(*a), s, 0),
        Change::Write(Entry::Vni(n, s)) => dp.vnis.insert(n, s, 0),
        Change::Write(Entry::Allowed((id, net), p)) => match net {
            IpNet::V4(_) => dp.allowed_v4.insert(&key4(*id, net), p, 0),
            IpNet::V6(_) => dp.allowed_v6.insert(&key6(*id, net), p, 0),
        },
        Change::Write(Entry::Vxlan(i)) => dp.config.set(CONFIG_VXLAN_IFINDEX, i, 0),
        Change::Remove(Key::Endpoint(v, a)) => dp.endpoints.remove(&endpoint_key(*v, *a)),
        Change::Remove(Key::Host(s)) => dp.hosts.set(*s, Underlay::default(), 0),
        Change::Remove(Key::Underlay(a)) => dp.underlay.remove(&underlay_of(*a)),
        Change::Remove(Key::Vni(n)) => dp.vnis.remove(n),
        Change::Remove(Key::Allowed(id, net)) => match net {
            IpNet::V4(_) => dp.allowed_v4.remove(&key4(*id, net)),
            IpNet::V6(_) => dp.allowed_v6.remove(&key6(*id, net)),
        },
        Change::Remove(Key::Iface(k)) => dp.ifaces.remove(k),
        Change::Remove(Key::Src(id, net)) => match net {
            IpNet::V4(_) => dp.src_v4.remove(&key4(*id, net)),
            IpNet::V6(_) => dp.src_v6.remove(&key6(*id, net)),
        },
        Change::Remove(Key::Route(id, net)) => match net {
            IpNet::V4(_) => dp.routes_v4.remove(&key4(*id, net)),
            IpNet::V6(_) => dp.routes_v6.remove(&key6(*id, net)),
        },
        // Arrays cannot lose a key: their slot is cleared.
        Change::Remove(Key::Peering(k)) => dp.peerings.set(*k, PeeringInfo::default(), 0),
        Change::Remove(Key::Vpc(k)) => dp.vpcs.set(*k, VpcInfo::default(), 0),
    }
}

/// The LPM key of `(id, net)` in a trie keyed by id then address (prefix length 32 + net's).
/// IPv6 nets give a key whose address is truncated: callers pick the trie by family.
pub fn key4(id: u32, net: &IpNet) -> LpmKey<KeyV4> {
    let addr = match net.network() {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(_) => [0; 4],
    };
    LpmKey::new(
        32 + net.prefix_len() as u32,
        KeyV4 {
            id: id.to_be_bytes(),
            addr,
        },
    )
}

pub fn key6(id: u32, net: &IpNet) -> LpmKey<KeyV6> {
    let addr = match net.network() {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
    };
    LpmKey::new(
        32 + net.prefix_len() as u32,
        KeyV6 {
            id: id.to_be_bytes(),
            addr,
        },
    )
}

fn from_key4(k: &LpmKey<KeyV4>) -> (u32, IpNet) {
    let d = k.data();
    let len = k.prefix_len().saturating_sub(32).min(32) as u8;
    let net = IpNet::new(IpAddr::from(d.addr), len).unwrap_or_else(|_| IpNet::default());
    (u32::from_be_bytes(d.id), net)
}

fn from_key6(k: &LpmKey<KeyV6>) -> (u32, IpNet) {
    let d = k.data();
    let len = k.prefix_len().saturating_sub(32).min(128) as u8;
    let net = IpNet::new(IpAddr::from(d.addr), len).unwrap_or_else(|_| IpNet::default());
    (u32::from_be_bytes(d.id), net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn writes_go_leaves_first_and_removals_roots_first() {
        let mut have = Contents::default();
        have.ifaces.insert(9, IfaceInfo::default());
        have.t.vpcs.insert(3, VpcInfo::default());
        have.t.src.insert((3, net("10.3.0.0/16")), 3);
        have.t
            .routes
            .insert((3, net("10.4.0.0/16")), RouteTarget::default());
        have.t.peerings.insert(2, PeeringInfo::default());
        let mut want = Contents::default();
        want.ifaces.insert(7, IfaceInfo::default());
        want.t.vpcs.insert(1, VpcInfo::default());
        want.t.src.insert((1, net("10.1.0.0/16")), 1);
        want.t
            .routes
            .insert((1, net("10.2.0.0/16")), RouteTarget::default());
        want.t.peerings.insert(1, PeeringInfo::default());
        let kinds: Vec<String> = diff(&have, &want)
            .iter()
            .map(|c| {
                c.to_string()
                    .split(' ')
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "write VPC",
                "write peering",
                "write route",
                "write source",
                "write interface",
                "remove interface",
                "remove source",
                "remove route",
                "clear peering",
                "clear VPC"
            ]
        );
        assert!(diff(&want, &want).is_empty());
    }

    #[test]
    fn lpm_keys_round_trip() {
        for n in ["10.0.0.0/8", "10.1.2.3/32", "0.0.0.0/0"] {
            assert_eq!(from_key4(&key4(5, &net(n))), (5, net(n)));
        }
        for n in ["2001:db8::/32", "fd00::1/128"] {
            assert_eq!(from_key6(&key6(5, &net(n))), (5, net(n)));
        }
    }
}
