//! Reconciler for the host's one VXLAN device in cluster mode: `external` (collect_md, the
//! datapath sets the tunnel key per packet), no learning, on the configured UDP port, in the
//! namespace peerd runs in. Created down; up only once its receive program is attached (the
//! `Finish` pass), like a VPC's link.
use std::fmt;

use netlink_packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVxlan};

use super::{links::Pass, Report};
use crate::netlink::{self, Netlink};

/// The device's name.
pub const NAME: &str = "peerd-vx";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    pub port: u16,
    /// The largest inner frame the underlay carries: underlay MTU minus the encapsulation.
    pub mtu: u32,
    /// The receive program is attached: the device may be up.
    pub up: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Have {
    pub ifindex: Option<u32>,
    /// A VXLAN device in collect_md mode on the wanted port.
    pub ours: bool,
    pub mtu: u32,
    pub up: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// (Re)creates the device, down; a device of that name that is something else is replaced.
    Create {
        port: u16,
        mtu: u32,
        replace: bool,
    },
    SetMtu {
        from: u32,
        to: u32,
    },
    SetUp(bool),
    Delete,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Create { port, replace, .. } => write!(
                f,
                "{} VXLAN device {NAME} (external, UDP port {port})",
                if *replace { "~ recreate" } else { "+ create" }
            ),
            Change::SetMtu { from, to } => write!(f, "~ VXLAN device {NAME}: mtu {from} -> {to}"),
            Change::SetUp(true) => write!(f, "~ VXLAN device {NAME} up (receive program attached)"),
            Change::SetUp(false) => {
                write!(f, "~ VXLAN device {NAME} down (no receive program on it)")
            }
            Change::Delete => write!(f, "- VXLAN device {NAME}"),
        }
    }
}

fn info_vxlan(l: &netlink_packet_route::link::LinkMessage) -> Vec<InfoVxlan> {
    l.attributes
        .iter()
        .filter_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => Some(infos),
            _ => None,
        })
        .flatten()
        .filter_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(v)) => Some(v.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

pub async fn observe(nl: &Netlink, port: u16) -> Result<Have, netlink::Error> {
    let Some(l) = netlink::get_link(&nl.host(), NAME).await? else {
        return Ok(Have::default());
    };
    let info = info_vxlan(&l);
    let external = info.contains(&InfoVxlan::CollectMetadata(true));
    let on_port = info.contains(&InfoVxlan::Port(port));
    Ok(Have {
        ifindex: Some(l.header.index),
        ours: external && on_port,
        mtu: netlink::mtu_of(&l),
        up: netlink::is_up(&l),
    })
}

/// `want = None`: no cluster, no device.
pub fn diff(have: &Have, want: Option<&Want>, pass: Pass) -> Vec<Change> {
    let Some(want) = want else {
        return match (have.ifindex, have.ours, pass) {
            (Some(_), true, Pass::Build) => vec![Change::Delete],
            _ => Vec::new(),
        };
    };
    let mut out = Vec::new();
    match pass {
        Pass::Build => {
            if have.ifindex.is_none() || !have.ours {
                out.push(Change::Create {
                    port: want.port,
                    mtu: want.mtu,
                    replace: have.ifindex.is_some(),
                });
            } else if have.mtu != want.mtu {
                out.push(Change::SetMtu {
                    from: have.mtu,
                    to: want.mtu,
                });
            }
        }
        Pass::Finish => {
            if have.ifindex.is_some() && have.ours && have.up != want.up {
                out.push(Change::SetUp(want.up));
            }
        }
    }
    out
}

pub async fn apply(nl: &Netlink, changes: Vec<Change>) -> Report {
    let mut report = Report::default();
    for c in changes {
        let r = apply_one(nl, &c).await;
        if !report.outcome(NAME, c.to_string(), r) {
            break;
        }
    }
    report
}

async fn apply_one(nl: &Netlink, c: &Change) -> Result<(), netlink::Error> {
    let h = nl.host();
    let index = || async {
        netlink::get_link(&h, NAME)
            .await
            .map(|l| l.map(|l| l.header.index))
    };
    match c {
        Change::Create { port, mtu, .. } => {
            if let Some(i) = index().await? {
                h.link()
                    .del(i)
                    .execute()
                    .await
                    .map_err(netlink::failed("deleting", NAME))?;
            }
            let msg = LinkMessageBuilder::<LinkVxlan>::new_with_info_kind(InfoKind::Vxlan)
                .name(NAME.to_owned())
                .mtu(*mtu)
                .down()
                .set_info_data(InfoData::Vxlan(vec![
                    InfoVxlan::CollectMetadata(true),
                    InfoVxlan::Port(*port),
                    InfoVxlan::Learning(false),
                ]))
                .build();
            h.link()
                .add(msg)
                .execute()
                .await
                .map_err(netlink::failed("creating", NAME))
        }
        Change::SetMtu { to, .. } => {
            let Some(i) = index().await? else {
                return Ok(());
            };
            h.link()
                .set(LinkUnspec::new_with_index(i).mtu(*to).build())
                .execute()
                .await
                .map_err(netlink::failed("setting mtu of", NAME))
        }
        Change::SetUp(up) => {
            let Some(i) = index().await? else {
                return Ok(());
            };
            let m = LinkUnspec::new_with_index(i);
            let m = if *up { m.up() } else { m.down() };
            h.link()
                .set(m.build())
                .execute()
                .await
                .map_err(netlink::failed("setting up/down", NAME))
        }
        Change::Delete => {
            let Some(i) = index().await? else {
                return Ok(());
            };
            h.link()
                .del(i)
                .execute()
                .await
                .map_err(netlink::failed("deleting", NAME))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_down_brought_up_once_attached_and_replaced_when_foreign() {
        let want = Want {
            port: 4789,
            mtu: 1450,
            up: false,
        };
        assert!(matches!(
            diff(&Have::default(), Some(&want), Pass::Build)[..],
            [Change::Create { replace: false, .. }]
        ));
        let mine = Have {
            ifindex: Some(9),
            ours: true,
            mtu: 1450,
            up: false,
        };
        assert!(diff(&mine, Some(&want), Pass::Finish).is_empty());
        let attached = Want {
            up: true,
            ..want.clone()
        };
        assert_eq!(
            diff(&mine, Some(&attached), Pass::Finish),
            [Change::SetUp(true)]
        );
        let foreign = Have {
            ours: false,
            ..mine.clone()
        };
        assert!(matches!(
            diff(&foreign, Some(&want), Pass::Build)[..],
            [Change::Create { replace: true, .. }]
        ));
        assert!(
            diff(&foreign, None, Pass::Build).is_empty(),
            "not ours: left alone"
        );
        assert_eq!(diff(&mine, None, Pass::Build), [Change::Delete]);
    }
}
