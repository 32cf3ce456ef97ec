//! Reconciler for what peerd puts inside a VPC namespace besides the link: the gateway's
//! permanent neighbour entries (169.254.1.1 and fe80::1 -> the host end's MAC) and the routes
//! via the gateway (protocol `RT_PROTO_PEERD`; routes of any other protocol are never touched).
use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
use netlink_packet_route::{neighbour::NeighbourState, route::RouteProtocol};
use rtnetlink::RouteMessageBuilder;

use super::Report;
use crate::{
    desired::{LinkFacts, VpcWant},
    netlink::{self, Netlink},
};

pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// Protocol of the routes peerd installs; only these are ever removed.
pub const RT_PROTO_PEERD: u8 = 0xd0;

/// A VPC namespace's gateway neighbours and peerd routes as found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Have {
    /// Gateways with a permanent entry pointing at the right MAC.
    pub neighbours: BTreeSet<IpAddr>,
    pub routes: BTreeSet<IpNet>,
}

/// What the namespace should hold, from the desired VPC and its link's facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    pub vpc: String,
    pub netns: String,
    pub ns_ifindex: u32,
    pub gw_mac: [u8; 6],
    pub routes: BTreeSet<IpNet>,
}

impl Want {
    pub fn of(v: &VpcWant, link: &LinkFacts) -> Want {
        Want {
            vpc: v.name.clone(),
            netns: v.netns.clone(),
            ns_ifindex: link.ns_ifindex,
            gw_mac: link.host_mac,
            routes: v.routes.iter().copied().collect(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    SetNeighbour {
        vpc: String,
        netns: String,
        ifindex: u32,
        gw: IpAddr,
        mac: [u8; 6],
    },
    AddRoute {
        vpc: String,
        netns: String,
        ifindex: u32,
        net: IpNet,
    },
    DelRoute {
        vpc: String,
        netns: String,
        net: IpNet,
    },
}

impl Change {
    fn vpc(&self) -> &str {
        match self {
            Change::SetNeighbour { vpc, .. }
            | Change::AddRoute { vpc, .. }
            | Change::DelRoute { vpc, .. } => vpc,
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::SetNeighbour { netns, gw, .. } => {
                write!(f, "+ gateway neighbour {gw} in {netns}")
            }
            Change::AddRoute { netns, net, .. } => {
                write!(f, "+ route {net} via gateway in {netns}")
            }
            Change::DelRoute { netns, net, .. } => write!(f, "- route {net} in {netns}"),
        }
    }
}

pub async fn observe(nl: &Netlink, want: &Want) -> Result<Have, netlink::Error> {
    let h = nl.ns(&want.netns).await?;
    let mut have = Have::default();
    for (ip, mac) in netlink::permanent_neighbours(&h, want.ns_ifindex, &want.netns).await? {
        if mac[..] == want.gw_mac[..] {
            have.neighbours.insert(ip);
        }
    }
    for (net, _) in netlink::routes_of_proto(&h, RT_PROTO_PEERD, &want.netns).await? {
        have.routes.insert(net);
    }
    Ok(have)
}

pub fn diff(have: &Have, want: &Want) -> Vec<Change> {
    let mut out = Vec::new();
    for gw in [IpAddr::V4(GATEWAY_V4), IpAddr::V6(GATEWAY_V6)] {
        if !have.neighbours.contains(&gw) {
            out.push(Change::SetNeighbour {
                vpc: want.vpc.clone(),
                netns: want.netns.clone(),
                ifindex: want.ns_ifindex,
                gw,
                mac: want.gw_mac,
            });
        }
    }
    for net in want.routes.difference(&have.routes) {
        out.push(Change::AddRoute {
            vpc: want.vpc.clone(),
            netns: want.netns.clone(),
            ifindex: want.ns_ifindex,
            net: *net,
        });
    }
    for net in have.routes.difference(&want.routes) {
        out.push(Change::DelRoute {
            vpc: want.vpc.clone(),
            netns: want.netns.clone(),
            net: *net,
        });
    }
    out
}

/// Applies every change; a failure is reported for its VPC and the rest goes on (a VPC whose
/// tenant disabled IPv6 inside still gets its IPv4 gateway and routes).
pub async fn apply(nl: &Netlink, changes: Vec<Change>) -> Report {
    let mut report = Report::default();
    for c in changes {
        let r = apply_one(nl, &c).await;
        report.outcome(c.vpc(), c.to_string(), r);
    }
    report
}

async fn apply_one(nl: &Netlink, c: &Change) -> Result<(), netlink::Error> {
    match c {
        Change::SetNeighbour {
            netns,
            ifindex,
            gw,
            mac,
            ..
        } => {
            let h = nl.ns(netns).await?;
            h.neighbours()
                .add(*ifindex, *gw)
                .link_layer_address(mac)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(netlink::failed("adding gateway neighbour in", netns))
        }
        Change::AddRoute {
            netns,
            ifindex,
            net,
            ..
        } => {
            let h = nl.ns(netns).await?;
            let msg = match net {
                IpNet::V4(n) => RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(n.network(), n.prefix_len())
                    .gateway(GATEWAY_V4)
                    .output_interface(*ifindex)
                    .protocol(RouteProtocol::from(RT_PROTO_PEERD))
                    .onlink()
                    .build(),
                IpNet::V6(n) => RouteMessageBuilder::<Ipv6Addr>::new()
                    .destination_prefix(n.network(), n.prefix_len())
                    .gateway(GATEWAY_V6)
                    .output_interface(*ifindex)
                    .protocol(RouteProtocol::from(RT_PROTO_PEERD))
                    .build(),
            };
            h.route()
                .add(msg)
                .replace()
                .execute()
                .await
                .map_err(netlink::failed("adding route in", netns))
        }
        Change::DelRoute { netns, net, .. } => {
            let h = nl.ns(netns).await?;
            for (n, r) in netlink::routes_of_proto(&h, RT_PROTO_PEERD, netns).await? {
                if n == *net {
                    h.route()
                        .del(r)
                        .execute()
                        .await
                        .map_err(netlink::failed("removing route in", netns))?;
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_missing_and_stale_peerd_routes_change() {
        let want = Want {
            vpc: "a".into(),
            netns: "vpc-a".into(),
            ns_ifindex: 2,
            gw_mac: [2; 6],
            routes: ["10.1.0.0/16".parse().unwrap(), "fd01::/48".parse().unwrap()].into(),
        };
        let have = Have {
            neighbours: [IpAddr::V4(GATEWAY_V4)].into(),
            routes: [
                "10.1.0.0/16".parse().unwrap(),
                "10.9.0.0/16".parse().unwrap(),
            ]
            .into(),
        };
        let c: Vec<String> = diff(&have, &want).iter().map(|c| c.to_string()).collect();
        assert_eq!(
            c,
            [
                "+ gateway neighbour fe80::1 in vpc-a",
                "+ route fd01::/48 via gateway in vpc-a",
                "- route 10.9.0.0/16 in vpc-a"
            ]
        );
    }
}
