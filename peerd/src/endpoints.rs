//! Workload discovery inside VPC namespaces (SPEC §2, §7): an address added inside a VPC's
//! namespace (on `lo` or any link), or a host route inside it towards a link other than the
//! uplink (a tap or a container's veth), is a workload, hence an endpoint of the VPC on this
//! host. Only addresses inside the VPC's CIDRs count.
use std::{collections::BTreeSet, net::IpAddr};

use ipnet::IpNet;

use crate::{
    netlink::{self, Netlink},
    netns::NS_IFNAME,
    reconcile::routes::RT_PROTO_PEERD,
};

/// The endpoints of a VPC present in namespace `netns`, whose CIDRs are `cidrs`.
pub async fn observe(
    nl: &Netlink,
    netns: &str,
    cidrs: &[IpNet],
) -> Result<BTreeSet<IpAddr>, netlink::Error> {
    let h = nl.ns(netns).await?;
    let uplink = netlink::get_link(&h, NS_IFNAME)
        .await?
        .map(|l| l.header.index)
        .unwrap_or(0);
    let mut found = netlink::addresses(&h, netns).await?;
    found.extend(netlink::host_routes(&h, netns, uplink, RT_PROTO_PEERD).await?);
    Ok(found
        .into_iter()
        .filter(|a| cidrs.iter().any(|c| c.contains(a)))
        .collect())
}
