//! Workloads attached to a VPC by peerd (`peerd attach`, `peerd detach`, the CNI plugin): a
//! container's network namespace (a veth pair, one end in the container, the other in the VPC
//! namespace) or a VM's tap device (moved into the VPC namespace). What is attached is part of
//! the persisted state ([`crate::state::State::attachments`]); the reconciler
//! [`crate::reconcile::attach`] makes the host match it. See docs/workloads.md.
use std::{
    collections::BTreeSet,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{config::Config, netns};

/// What is attached: a container's namespace or a tap device.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Workload {
    /// A network namespace, by name (`/run/netns/NAME`) or path (`/proc/PID/ns/net`), that
    /// gets a veth end named `ifname`.
    Netns { netns: String, ifname: String },
    /// A tap device in the namespace peerd runs in, moved into the VPC namespace.
    Tap { ifname: String },
}

/// One workload of a VPC and its addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub vpc: String,
    pub workload: Workload,
    pub addresses: Vec<IpNet>,
    /// Who attached it, when not the command line: the CNI plugin's "CONTAINERID/IFNAME"
    /// (its DEL finds the attachment by it when the namespace is gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// What the control socket asks of the attachments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Attach(Attachment),
    /// Is it attached so (CNI CHECK)? Changes nothing.
    Check(Attachment),
    Detach {
        vpc: String,
        workload: Workload,
        id: Option<String>,
    },
}

impl Op {
    /// The VPC and the state key the operation is about; a detach by `id` finds the
    /// attachment with that id.
    pub fn key(
        &self,
        attached: &std::collections::BTreeMap<String, Attachment>,
    ) -> (String, String) {
        match self {
            Op::Attach(a) | Op::Check(a) => (a.vpc.clone(), a.workload.key(&a.vpc)),
            Op::Detach { vpc, workload, id } => {
                let by_id = id.as_ref().and_then(|id| {
                    attached
                        .iter()
                        .find(|(_, a)| a.vpc == *vpc && a.id.as_ref() == Some(id))
                        .map(|(k, _)| k.clone())
                });
                (vpc.clone(), by_id.unwrap_or_else(|| workload.key(vpc)))
            }
        }
    }
}

/// Addresses, space-separated.
pub fn list(addresses: &[IpNet]) -> String {
    let a: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
    a.join(" ")
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Netns { netns, ifname } => write!(f, "netns {netns} ({ifname})"),
            Workload::Tap { ifname } => write!(f, "tap {ifname}"),
        }
    }
}

impl Workload {
    /// The workload's link inside the VPC namespace: the tap itself, or the VPC end of the
    /// veth pair ("pw" + 8 hex digits of a hash of VPC, namespace and interface name).
    pub fn vpc_link(&self, vpc: &str) -> String {
        match self {
            Workload::Tap { ifname } => ifname.clone(),
            Workload::Netns { netns, ifname } => {
                let h = crate::state::link_name(&format!("{vpc}\0{netns}\0{ifname}"));
                format!("pw{}", &h[2..])
            }
        }
    }

    /// The key of the attachment in the state: "VPC/link".
    pub fn key(&self, vpc: &str) -> String {
        format!("{vpc}/{}", self.vpc_link(vpc))
    }
}

/// The file of a namespace given by name or by path.
pub fn netns_path(netns: &str) -> PathBuf {
    if netns.contains('/') {
        PathBuf::from(netns)
    } else {
        netns::path(netns)
    }
}

/// An interface name the kernel accepts.
fn valid_ifname(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n != "."
        && n != ".."
        && !n
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace())
}

/// Checks a request against the configuration and the attachments already made; returns the
/// attachment as it will be stored (addresses sorted, deduplicated).
pub fn check(
    cfg: &Config,
    placed: bool,
    attached: &std::collections::BTreeMap<String, Attachment>,
    a: &Attachment,
) -> Result<Attachment, String> {
    let Some(vpc) = cfg.vpcs.iter().find(|v| v.name == a.vpc) else {
        return Err(format!("unknown VPC {:?}", a.vpc));
    };
    if !placed {
        return Err(format!("VPC {} has no namespace on this host", a.vpc));
    }
    let ifname = match &a.workload {
        Workload::Netns { netns, ifname } => {
            if netns.is_empty() {
                return Err("--netns is empty".into());
            }
            ifname
        }
        Workload::Tap { ifname } => ifname,
    };
    if !valid_ifname(ifname) {
        return Err(format!("invalid interface name {ifname:?}"));
    }
    if a.addresses.is_empty() {
        return Err("no --address given".into());
    }
    let mut addresses = BTreeSet::new();
    for net in &a.addresses {
        if !vpc.cidrs.iter().any(|c| c.contains(&net.addr())) {
            let cidrs: Vec<String> = vpc.cidrs.iter().map(|c| c.to_string()).collect();
            return Err(format!(
                "address {net} is outside VPC {}'s CIDRs ({})",
                a.vpc,
                cidrs.join(", ")
            ));
        }
        addresses.insert(*net);
    }
    let key = a.workload.key(&a.vpc);
    for (k, other) in attached {
        if *k == key || other.vpc != a.vpc {
            continue;
        }
        let taken: BTreeSet<IpAddr> = other.addresses.iter().map(|n| n.addr()).collect();
        if let Some(n) = addresses.iter().find(|n| taken.contains(&n.addr())) {
            return Err(format!(
                "address {} is already attached to {} in VPC {}",
                n.addr(),
                other.workload,
                a.vpc
            ));
        }
        if matches!((&a.workload, &other.workload), (Workload::Tap { ifname: x }, Workload::Tap { ifname: y }) if x == y)
        {
            return Err(format!("tap {ifname} is attached to VPC {} already", a.vpc));
        }
    }
    if let Some(other) = attached
        .values()
        .find(|o| o.vpc != a.vpc && o.workload == a.workload)
    {
        return Err(format!(
            "{} is attached to VPC {} already (detach it first)",
            a.workload, other.vpc
        ));
    }
    if let Workload::Netns { netns, .. } = &a.workload {
        let p = netns_path(netns);
        if !p.exists() {
            return Err(format!("network namespace {} does not exist", p.display()));
        }
    }
    Ok(Attachment {
        vpc: a.vpc.clone(),
        workload: a.workload.clone(),
        addresses: addresses.into_iter().collect(),
        id: a.id.clone(),
    })
}

/// A tap to attach must be a tun/tap device in the namespace peerd runs in.
pub async fn check_tap(nl: &crate::netlink::Netlink, w: &Workload) -> Result<(), String> {
    let Workload::Tap { ifname } = w else {
        return Ok(());
    };
    match crate::netlink::get_link(&nl.host(), ifname).await {
        Ok(Some(l)) if crate::netlink::is_tun(&l) => Ok(()),
        Ok(Some(_)) => Err(format!("{ifname} is not a tap device")),
        Ok(None) => Err(format!("tap {ifname} does not exist")),
        Err(e) => Err(e.to_string()),
    }
}

/// The command line's `attach` and `detach`.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false, id = "workload")]
pub struct Target {
    /// The container's network namespace: a name (`/run/netns/NAME`) or a path
    /// (`/proc/PID/ns/net`).
    ///
    /// Example: --netns web-1
    #[arg(long, value_name = "NS")]
    pub netns: Option<String>,
    /// A tap device in the namespace peerd runs in, moved into the VPC namespace.
    ///
    /// Example: --tap tap-vm1
    #[arg(long, value_name = "IF")]
    pub tap: Option<String>,
}

impl Target {
    fn workload(self, ifname: String) -> Workload {
        match (self.netns, self.tap) {
            (Some(netns), _) => Workload::Netns { netns, ifname },
            (None, Some(ifname)) => Workload::Tap { ifname },
            (None, None) => unreachable!("clap requires --netns or --tap"),
        }
    }
}

/// `peerd attach` / `peerd detach`.
#[derive(clap::Args, Debug)]
pub struct AttachArgs {
    /// The VPC.
    ///
    /// Example: --vpc web
    #[arg(long)]
    pub vpc: String,
    #[command(flatten)]
    pub target: Target,
    /// The interface name inside the container's namespace (with --netns).
    ///
    /// Example: --ifname eth1
    #[arg(long, default_value = "eth0", requires = "netns")]
    pub ifname: String,
    /// The workload's addresses, inside the VPC's CIDRs, with their prefix length.
    ///
    /// Example: --address 10.1.0.5/24 --address fd00:1::5/64
    #[arg(long = "address", value_name = "CIDR", num_args = 1..)]
    pub addresses: Vec<IpNet>,
    /// Control socket of the running daemon (default: [daemon] socket of --config).
    ///
    /// Example: --socket /run/peerd/peerd.sock
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

/// Runs `peerd attach` (`detach` false) or `peerd detach` against the daemon at `socket`.
pub fn command(socket: &Path, args: AttachArgs, detach: bool) -> Result<(), String> {
    use crate::control::{request, Request};
    let workload = args.target.workload(args.ifname);
    let req = if detach {
        Request::Detach {
            vpc: args.vpc,
            workload,
            id: None,
        }
    } else {
        Request::Attach {
            attachment: Attachment {
                vpc: args.vpc,
                workload,
                addresses: args.addresses,
                id: None,
            },
            check: false,
        }
    };
    let r = request(socket, &req).map_err(|e| e.to_string())?;
    let what = if detach { "detached" } else { "attached" };
    let changed = if r["changed"] == true {
        ""
    } else {
        " (no change)"
    };
    println!("{what} {}{changed}", r["link"].as_str().unwrap_or_default());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::from_str(
            r#"
[[vpc]]
name = "a"
cidrs = ["10.1.0.0/16", "fd00:1::/48"]
[[vpc]]
name = "b"
cidrs = ["10.2.0.0/16"]
"#,
            Path::new("t.toml"),
        )
        .unwrap()
    }

    fn tap(vpc: &str, ifname: &str, addrs: &[&str]) -> Attachment {
        Attachment {
            vpc: vpc.into(),
            workload: Workload::Tap {
                ifname: ifname.into(),
            },
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            id: None,
        }
    }

    #[test]
    fn addresses_outside_the_cidrs_are_refused() {
        let e = check(
            &cfg(),
            true,
            &Default::default(),
            &tap("a", "t0", &["10.2.0.5/24"]),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "address 10.2.0.5/24 is outside VPC a's CIDRs (10.1.0.0/16, fd00:1::/48)"
        );
        let ok = check(
            &cfg(),
            true,
            &Default::default(),
            &tap("a", "t0", &["fd00:1::5/64", "10.1.0.5/24", "10.1.0.5/24"]),
        )
        .unwrap();
        assert_eq!(ok.addresses.len(), 2, "sorted and deduplicated");
    }

    #[test]
    fn unknown_vpcs_bad_names_and_taken_addresses_are_refused() {
        let none = Default::default();
        assert_eq!(
            check(&cfg(), true, &none, &tap("zz", "t0", &["10.1.0.5/24"])).unwrap_err(),
            "unknown VPC \"zz\""
        );
        assert!(
            check(&cfg(), true, &none, &tap("a", "a/b", &["10.1.0.5/24"]))
                .unwrap_err()
                .contains("invalid interface name")
        );
        assert!(check(&cfg(), true, &none, &tap("a", "t0", &[]))
            .unwrap_err()
            .contains("no --address"));
        let t0 = tap("a", "t0", &["10.1.0.5/24"]);
        let have = [(t0.workload.key("a"), t0.clone())].into();
        // The same workload again is fine (idempotent); another one with its address is not.
        assert!(check(&cfg(), true, &have, &t0).is_ok());
        assert_eq!(
            check(&cfg(), true, &have, &tap("a", "t1", &["10.1.0.5/32"])).unwrap_err(),
            "address 10.1.0.5 is already attached to tap t0 in VPC a"
        );
        assert!(
            check(&cfg(), true, &have, &tap("b", "t0", &["10.2.0.5/24"]))
                .unwrap_err()
                .contains("attached to VPC a already")
        );
        let missing = Attachment {
            vpc: "a".into(),
            workload: Workload::Netns {
                netns: "/nonexistent/pdt-ns".into(),
                ifname: "eth0".into(),
            },
            addresses: vec!["10.1.0.9/24".parse().unwrap()],
            id: None,
        };
        assert_eq!(
            check(&cfg(), true, &none, &missing).unwrap_err(),
            "network namespace /nonexistent/pdt-ns does not exist"
        );
    }

    #[test]
    fn a_detach_finds_its_attachment_by_id_when_the_namespace_is_unknown() {
        let ctr = |netns: &str| Workload::Netns {
            netns: netns.into(),
            ifname: "eth0".into(),
        };
        let a = Attachment {
            vpc: "a".into(),
            workload: ctr("/proc/42/ns/net"),
            addresses: vec!["10.1.0.5/24".parse().unwrap()],
            id: Some("c0ffee/eth0".into()),
        };
        let key = a.workload.key("a");
        let have = [(key.clone(), a.clone())].into();
        let detach = |id: Option<&str>| Op::Detach {
            vpc: "a".into(),
            workload: ctr(""),
            id: id.map(Into::into),
        };
        assert_eq!(
            detach(Some("c0ffee/eth0")).key(&have),
            ("a".into(), key.clone())
        );
        assert_ne!(detach(Some("other/eth0")).key(&have).1, key);
        assert_ne!(detach(None).key(&have).1, key);
        assert_eq!(Op::Check(a).key(&have).1, key);
    }

    #[test]
    fn vpc_links_are_stable_short_and_distinct() {
        let w = |ns: &str, i: &str| Workload::Netns {
            netns: ns.into(),
            ifname: i.into(),
        };
        let l = w("c1", "eth0").vpc_link("a");
        assert!(l.starts_with("pw") && l.len() == 10, "{l}");
        assert_eq!(l, w("c1", "eth0").vpc_link("a"));
        assert_ne!(l, w("c1", "eth1").vpc_link("a"));
        assert_ne!(l, w("c2", "eth0").vpc_link("a"));
        assert_eq!(w("c1", "eth0").key("a"), format!("a/{l}"));
        assert_eq!(netns_path("c1"), PathBuf::from("/run/netns/c1"));
        assert_eq!(
            netns_path("/proc/1/ns/net"),
            PathBuf::from("/proc/1/ns/net")
        );
    }
}
