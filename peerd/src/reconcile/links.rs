//! Reconciler for VPC namespaces and their veth pairs: the namespace, the pair (host end named
//! from the slots, VPC end `peerd0`), MTUs, up/down, IPv6 off on the host end, the VPC end's
//! offloads, and the deletion of VPCs that left the configuration.
//!
//! Fail closed: a host end is created down, and only brought up (in the `Finish` pass, after
//! the program reconciler ran) when the datapath program is attached to it; a host end found
//! up without its program is set down. A link with the right name that peerd did not create is
//! never touched: the VPC is reported and the next slot assignment picks another name.
use std::{collections::HashMap, fmt};

use netlink_packet_route::link::LinkMessage;
use rtnetlink::LinkUnspec;

use super::Report;
use crate::{
    desired::{LinkFacts, VpcWant},
    netlink::{self, Netlink},
    netns::{self, Offload, NS_IFNAME},
};

/// The alias peerd gives the host end of a VPC's pair: how it recognises its own links.
pub fn alias(netns: &str) -> String {
    format!("peerd:{netns}")
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct End {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub up: bool,
}

/// One VPC's namespace and pair as found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Have {
    pub netns: bool,
    /// The host-side link with the wanted name, if it is peerd's.
    pub host: Option<End>,
    /// A link with the wanted name exists but is not peerd's.
    pub foreign: bool,
    /// peerd's host link lacks the alias (made by an older peerd): it is ours by its pair.
    pub needs_alias: bool,
    pub ns_end: Option<End>,
    /// Host end and VPC end are each other's peer.
    pub intact: bool,
    pub host_ipv6_off: bool,
    pub lo_up: bool,
    /// (GRO, TX checksum, VLAN insertion) of the VPC end, when asked for.
    pub offloads: Option<(bool, bool, bool)>,
}

impl Have {
    /// The pair's facts, when it is complete.
    pub fn facts(&self) -> Option<LinkFacts> {
        match (&self.host, &self.ns_end, self.intact) {
            (Some(h), Some(n), true) => Some(LinkFacts {
                host_ifindex: h.ifindex,
                host_mac: h.mac,
                ns_ifindex: n.ifindex,
                ns_mac: n.mac,
            }),
            _ => None,
        }
    }
}

/// A VPC to remove (no longer configured).
pub use crate::state::Removal as Gone;

/// Which changes a pass makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Everything but bringing the host end up or down.
    Build,
    /// Host end up (program attached) or down (program missing), and offloads.
    Finish,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    CreateNetns {
        vpc: String,
        netns: String,
    },
    /// Creates the pair (down), replacing a broken one.
    CreateVeth {
        vpc: String,
        netns: String,
        host_if: String,
        mtu: u32,
        replace: bool,
    },
    SetAlias {
        vpc: String,
        netns: String,
        host_if: String,
    },
    DisableHostIpv6 {
        vpc: String,
        host_if: String,
    },
    SetMtu {
        vpc: String,
        netns: Option<String>,
        ifname: String,
        from: u32,
        to: u32,
    },
    /// VPC side: `lo` and `peerd0` up (and no DAD on peerd0).
    UpInside {
        vpc: String,
        netns: String,
    },
    SetHostUp {
        vpc: String,
        host_if: String,
        up: bool,
    },
    SetOffloads {
        vpc: String,
        netns: String,
        xdp: bool,
    },
    /// A link with the VPC's name belongs to someone else: not touched.
    Blocked {
        vpc: String,
        reason: String,
    },
    Delete(Gone),
}

impl Change {
    pub fn vpc(&self) -> &str {
        match self {
            Change::CreateNetns { vpc, .. }
            | Change::CreateVeth { vpc, .. }
            | Change::SetAlias { vpc, .. }
            | Change::DisableHostIpv6 { vpc, .. }
            | Change::SetMtu { vpc, .. }
            | Change::UpInside { vpc, .. }
            | Change::SetHostUp { vpc, .. }
            | Change::SetOffloads { vpc, .. }
            | Change::Blocked { vpc, .. } => vpc,
            Change::Delete(g) => &g.vpc,
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::CreateNetns { vpc, netns } => {
                write!(f, "+ VPC {vpc}: create namespace {netns}")
            }
            Change::CreateVeth {
                vpc,
                netns,
                host_if,
                replace,
                ..
            } => write!(
                f,
                "{} VPC {vpc}: veth {host_if} <-> {netns}/{NS_IFNAME}{}",
                if *replace { "~" } else { "+" },
                if *replace { " (recreated)" } else { "" }
            ),
            Change::SetAlias { vpc, host_if, .. } => {
                write!(f, "~ VPC {vpc}: mark {host_if} as peerd's")
            }
            Change::DisableHostIpv6 { vpc, host_if } => {
                write!(f, "~ VPC {vpc}: disable IPv6 on {host_if}")
            }
            Change::SetMtu {
                vpc,
                ifname,
                from,
                to,
                ..
            } => write!(f, "~ VPC {vpc}: mtu {from} -> {to} on {ifname}"),
            Change::UpInside { vpc, netns } => {
                write!(f, "~ VPC {vpc}: bring up lo and {NS_IFNAME} in {netns}")
            }
            Change::SetHostUp { vpc, host_if, up } => write!(
                f,
                "~ VPC {vpc}: {host_if} {}",
                if *up {
                    "up (datapath attached)"
                } else {
                    "down (no datapath program on it)"
                }
            ),
            Change::SetOffloads { vpc, netns, xdp } => write!(
                f,
                "~ VPC {vpc}: offloads of {netns}/{NS_IFNAME} for {}",
                if *xdp { "XDP" } else { "TC" }
            ),
            Change::Blocked { vpc, reason } => write!(f, "! VPC {vpc}: {reason}"),
            Change::Delete(g) => write!(
                f,
                "- VPC {}: delete {}veth {}",
                g.vpc,
                if g.created {
                    format!("namespace {} and ", g.netns)
                } else {
                    String::new()
                },
                g.host_if
            ),
        }
    }
}

fn end(l: &LinkMessage) -> End {
    End {
        ifindex: l.header.index,
        mac: netlink::mac_of(l),
        mtu: netlink::mtu_of(l),
        up: netlink::is_up(l),
    }
}

/// Looks at one VPC. `host_links` is one dump of the host namespace's links.
pub async fn observe(
    nl: &Netlink,
    host_links: &HashMap<String, LinkMessage>,
    want: &VpcWant,
    check_offloads: bool,
) -> Result<Have, netlink::Error> {
    let mut have = Have {
        netns: netns::exists(&want.netns),
        ..Have::default()
    };
    let host = host_links.get(&want.host_if);
    if have.netns {
        let h = nl.ns(&want.netns).await?;
        if let Some(l) = netlink::get_link(&h, NS_IFNAME).await? {
            have.intact = host.is_some_and(|hl| {
                netlink::is_veth(hl) && netlink::peer_of(&l) == Some(hl.header.index)
            });
            have.ns_end = Some(end(&l));
        }
        have.lo_up = netlink::get_link(&h, "lo")
            .await?
            .is_some_and(|l| netlink::is_up(&l));
        if check_offloads && have.ns_end.is_some() {
            let r = netns::run_in(&want.netns, || {
                Some((
                    netns::offload(NS_IFNAME, Offload::Gro, None).ok()?,
                    netns::offload(NS_IFNAME, Offload::TxChecksum, None).ok()?,
                    netns::offload(NS_IFNAME, Offload::VlanInsert, None).ok()?,
                ))
            })?;
            have.offloads = r;
        }
    }
    if let Some(hl) = host {
        let marked = netlink::alias_of(hl) == Some(alias(&want.netns).as_str());
        if marked || have.intact {
            have.host = Some(end(hl));
            have.needs_alias = !marked;
            let p = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", want.host_if);
            have.host_ipv6_off = std::fs::read_to_string(&p).is_ok_and(|v| v.trim() == "1");
        } else {
            have.foreign = true;
        }
    }
    Ok(have)
}

/// The changes that make `have` match `want`, for one pass.
pub fn diff(have: &Have, want: &VpcWant, pass: Pass) -> Vec<Change> {
    let vpc = || want.name.clone();
    let mut out = Vec::new();
    if have.foreign {
        out.push(Change::Blocked {
            vpc: vpc(),
            reason: format!(
                "a link named {} exists that peerd did not create; not touching it",
                want.host_if
            ),
        });
        return out;
    }
    let complete = have.netns && have.host.is_some() && have.intact;
    if pass == Pass::Build {
        if !have.netns {
            out.push(Change::CreateNetns {
                vpc: vpc(),
                netns: want.netns.clone(),
            });
        }
        if !complete {
            out.push(Change::CreateVeth {
                vpc: vpc(),
                netns: want.netns.clone(),
                host_if: want.host_if.clone(),
                mtu: want.mtu,
                replace: have.host.is_some() || have.ns_end.is_some(),
            });
        }
        if complete && have.needs_alias {
            out.push(Change::SetAlias {
                vpc: vpc(),
                netns: want.netns.clone(),
                host_if: want.host_if.clone(),
            });
        }
        if !complete || !have.host_ipv6_off {
            out.push(Change::DisableHostIpv6 {
                vpc: vpc(),
                host_if: want.host_if.clone(),
            });
        }
        if let (true, Some(h)) = (complete, &have.host) {
            if h.mtu != want.mtu {
                out.push(Change::SetMtu {
                    vpc: vpc(),
                    netns: None,
                    ifname: want.host_if.clone(),
                    from: h.mtu,
                    to: want.mtu,
                });
            }
        }
        if let (true, Some(n)) = (complete, &have.ns_end) {
            if n.mtu != want.mtu {
                out.push(Change::SetMtu {
                    vpc: vpc(),
                    netns: Some(want.netns.clone()),
                    ifname: NS_IFNAME.into(),
                    from: n.mtu,
                    to: want.mtu,
                });
            }
        }
        let inside_up = complete && have.lo_up && have.ns_end.as_ref().is_some_and(|n| n.up);
        if !inside_up {
            out.push(Change::UpInside {
                vpc: vpc(),
                netns: want.netns.clone(),
            });
        }
    }
    if let Some(xdp) = want.xdp {
        // A new pair starts with the kernel's defaults: GRO off, TX checksum and VLAN insertion
        // on (TC's).
        let cur = match (complete, have.offloads) {
            (true, Some(o)) => Some(o),
            (true, None) => None,
            (false, _) => Some((false, true, true)),
        };
        let wanted = (xdp, !xdp, !xdp);
        if cur.is_some_and(|c| c != wanted) {
            out.push(Change::SetOffloads {
                vpc: vpc(),
                netns: want.netns.clone(),
                xdp,
            });
        }
    }
    if pass == Pass::Finish {
        let host_up = complete && have.host.as_ref().is_some_and(|h| h.up);
        if complete && host_up != want.up {
            out.push(Change::SetHostUp {
                vpc: vpc(),
                host_if: want.host_if.clone(),
                up: want.up,
            });
        }
    }
    out
}

/// Changes that remove VPCs no longer configured.
pub fn diff_gone(gone: &[Gone]) -> Vec<Change> {
    gone.iter().cloned().map(Change::Delete).collect()
}

/// Applies `changes` in order; a VPC whose change fails skips its remaining changes, and the
/// others go on.
pub async fn apply(nl: &Netlink, changes: Vec<Change>) -> Report {
    let mut report = Report::default();
    for c in changes {
        let vpc = c.vpc().to_owned();
        if report.errors.contains_key(&vpc) {
            continue;
        }
        let line = c.to_string();
        match apply_one(nl, &c).await {
            Ok(true) => report.actions.push(line),
            Ok(false) => {}
            Err(e) => {
                report.errors.insert(vpc, format!("{line}: {e}"));
            }
        }
    }
    report
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Netlink(#[from] netlink::Error),
    #[error(transparent)]
    Netns(#[from] netns::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Blocked(String),
    #[error("link {0} not found after creating it")]
    Missing(String),
}

/// `Ok(false)`: nothing was needed after all.
async fn apply_one(nl: &Netlink, c: &Change) -> Result<bool, Error> {
    let host = nl.host();
    match c {
        Change::CreateNetns { netns, .. } => {
            let n = netns.clone();
            tokio::task::spawn_blocking(move || netns::create(&n))
                .await
                .map_err(|_| netns::Error::Thread(netns.clone()))??;
        }
        Change::CreateVeth {
            netns,
            host_if,
            mtu,
            ..
        } => {
            let h = nl.ns(netns).await?;
            if let Some(old) = netlink::get_link(&h, NS_IFNAME).await? {
                h.link()
                    .del(old.header.index)
                    .execute()
                    .await
                    .map_err(netlink::failed("deleting stale", NS_IFNAME))?;
            }
            if let Some(old) = netlink::get_link(&host, host_if).await? {
                // Only ever ours: `observe` reported anything else as foreign.
                host.link()
                    .del(old.header.index)
                    .execute()
                    .await
                    .map_err(netlink::failed("deleting stale", host_if))?;
            }
            let nsfile = std::fs::File::open(netns::path(netns))
                .map_err(netns::io("opening", &netns::path(netns)))?;
            // The VPC end is created inside the namespace with its final name: moving a link
            // between namespaces waits for an RCU grace period under the RTNL lock, which would
            // serialise every VPC's setup behind it. Both ends start down.
            netlink::add_veth(&host, host_if, None, NS_IFNAME, &nsfile, *mtu).await?;
            drop(nsfile);
            set_alias(nl, host_if, netns).await?;
        }
        Change::SetAlias { netns, host_if, .. } => set_alias(nl, host_if, netns).await?,
        Change::DisableHostIpv6 { host_if, .. } => {
            // The host end never has an address, so never an IPv6 link-local one either.
            let p = format!("/proc/sys/net/ipv6/conf/{host_if}/disable_ipv6");
            return Ok(netns::write_sysctl(&p, "1")?);
        }
        Change::SetMtu {
            netns, ifname, to, ..
        } => {
            let h = match netns {
                Some(ns) => nl.ns(ns).await?,
                None => host,
            };
            let l = netlink::get_link(&h, ifname)
                .await?
                .ok_or_else(|| Error::Missing(ifname.clone()))?;
            h.link()
                .set(LinkUnspec::new_with_index(l.header.index).mtu(*to).build())
                .execute()
                .await
                .map_err(netlink::failed("setting mtu of", ifname))?;
        }
        Change::UpInside { netns, .. } => {
            let h = nl.ns(netns).await?;
            // Best effort: a VPC whose root turned DAD back on still works with nodad gateway
            // neighbours.
            let _ = netns::run_in(netns, || {
                netns::write_sysctl(
                    &format!("/proc/sys/net/ipv6/conf/{NS_IFNAME}/accept_dad"),
                    "0",
                )
            });
            for name in ["lo", NS_IFNAME] {
                let l = netlink::get_link(&h, name)
                    .await?
                    .ok_or_else(|| Error::Missing(name.into()))?;
                if !netlink::is_up(&l) {
                    h.link()
                        .set(LinkUnspec::new_with_index(l.header.index).up().build())
                        .execute()
                        .await
                        .map_err(netlink::failed("bringing up", name))?;
                }
            }
        }
        Change::SetHostUp { host_if, up, .. } => {
            let l = netlink::get_link(&host, host_if)
                .await?
                .ok_or_else(|| Error::Missing(host_if.clone()))?;
            let msg = if *up {
                LinkUnspec::new_with_index(l.header.index).up().build()
            } else {
                LinkUnspec::new_with_index(l.header.index).down().build()
            };
            host.link()
                .set(msg)
                .execute()
                .await
                .map_err(netlink::failed("setting up/down", host_if))?;
        }
        Change::SetOffloads { netns, xdp, .. } => {
            let xdp = *xdp;
            netns::run_in(netns, move || -> std::io::Result<()> {
                netns::offload(NS_IFNAME, Offload::Gro, Some(xdp))?;
                netns::offload(NS_IFNAME, Offload::TxChecksum, Some(!xdp))?;
                netns::offload(NS_IFNAME, Offload::VlanInsert, Some(!xdp))?;
                Ok(())
            })??;
        }
        Change::Blocked { reason, .. } => return Err(Error::Blocked(reason.clone())),
        Change::Delete(g) => {
            let mut did = false;
            // Deleting the host end removes the pair at once, even if something holds the ns.
            if let Some(l) = netlink::get_link(&host, &g.host_if).await? {
                let ours =
                    netlink::alias_of(&l) == Some(alias(&g.netns).as_str()) || netlink::is_veth(&l);
                if ours {
                    host.link()
                        .del(l.header.index)
                        .execute()
                        .await
                        .map_err(netlink::failed("deleting", &g.host_if))?;
                    did = true;
                }
            }
            nl.forget(&g.netns);
            if g.created && netns::delete(&g.netns)? {
                did = true;
            }
            return Ok(did);
        }
    }
    Ok(true)
}

async fn set_alias(nl: &Netlink, host_if: &str, netns: &str) -> Result<(), Error> {
    let host = nl.host();
    let l = netlink::get_link(&host, host_if)
        .await?
        .ok_or_else(|| Error::Missing(host_if.to_owned()))?;
    host.link()
        .set(
            LinkUnspec::new_with_index(l.header.index)
                .alias(alias(netns))
                .build(),
        )
        .execute()
        .await
        .map_err(netlink::failed("setting the alias of", host_if))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(up: bool) -> VpcWant {
        VpcWant {
            name: "a".into(),
            slot: 1,
            netns: "vpc-a".into(),
            host_if: "pd1".into(),
            mtu: 1500,
            routes: vec![],
            xdp: Some(false),
            up,
        }
    }

    fn complete(up: bool) -> Have {
        let e = |up| End {
            ifindex: 5,
            mac: [2; 6],
            mtu: 1500,
            up,
        };
        Have {
            netns: true,
            host: Some(e(up)),
            ns_end: Some(e(true)),
            intact: true,
            host_ipv6_off: true,
            lo_up: true,
            offloads: Some((false, true, true)),
            ..Have::default()
        }
    }

    #[test]
    fn a_new_vpc_is_built_down_and_brought_up_only_once_attached() {
        let c = diff(&Have::default(), &want(false), Pass::Build);
        assert!(matches!(c[0], Change::CreateNetns { .. }));
        assert!(matches!(c[1], Change::CreateVeth { replace: false, .. }));
        assert!(!c.iter().any(|c| matches!(c, Change::SetHostUp { .. })));
        // Built, program not attached: nothing brings it up.
        assert!(diff(&complete(false), &want(false), Pass::Finish).is_empty());
        // Attached: up.
        assert_eq!(
            diff(&complete(false), &want(true), Pass::Finish),
            vec![Change::SetHostUp {
                vpc: "a".into(),
                host_if: "pd1".into(),
                up: true
            }]
        );
        // Up without a program: down.
        assert!(matches!(
            diff(&complete(true), &want(false), Pass::Finish)[0],
            Change::SetHostUp { up: false, .. }
        ));
        assert!(diff(&complete(true), &want(true), Pass::Build).is_empty());
        assert!(diff(&complete(true), &want(true), Pass::Finish).is_empty());
    }

    #[test]
    fn a_foreign_link_with_our_name_is_never_touched() {
        let have = Have {
            netns: true,
            foreign: true,
            ..Have::default()
        };
        let c = diff(&have, &want(false), Pass::Build);
        assert_eq!(c.len(), 1);
        assert!(matches!(c[0], Change::Blocked { .. }));
    }

    #[test]
    fn a_broken_pair_is_recreated_and_mtu_changes_are_in_place() {
        let mut h = complete(true);
        h.intact = false;
        assert!(matches!(
            diff(&h, &want(true), Pass::Build)[0],
            Change::CreateVeth { replace: true, .. }
        ));
        let mut w = want(true);
        w.mtu = 9000;
        let c = diff(&complete(true), &w, Pass::Build);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].to_string(), "~ VPC a: mtu 1500 -> 9000 on pd1");
    }
}
