//! Reconciler for the datapath program on each VPC's host-side link: a TCX (or XDP) link pinned
//! under `pin_dir/links`, so the program outlives the daemon. In cluster mode, likewise the
//! receive program on the VXLAN device's ingress.
//!
//! An existing pinned link that runs other code is updated in place (atomic program
//! replacement, no gap); one that someone detached is replaced. Pins are removed only for links
//! that are gone or no longer configured, and a link's pin of the other datapath mode only once
//! this mode's program is attached to it: a configured link never loses its filter.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, fs,
    path::{Path, PathBuf},
};

use aya::programs::{
    links::{FdLink, LinkOrder, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
    xdp::XdpLink,
    SchedClassifier, TcAttachType, XdpMode,
};

use super::Report;
use crate::{config::DatapathMode, datapath::Datapath};

/// Which program a link runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// TCX ingress of a VPC's host-side link.
    Tc,
    /// XDP on a VPC's host-side link.
    Xdp,
    /// Cluster mode: TCX ingress of the VXLAN device.
    VxlanRx,
}

impl Kind {
    /// The kind for VPC links in datapath mode `mode`.
    pub fn of(mode: DatapathMode) -> Kind {
        match mode {
            DatapathMode::Tc => Kind::Tc,
            DatapathMode::Xdp => Kind::Xdp,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Tc => "tc",
            Kind::Xdp => "xdp",
            Kind::VxlanRx => "vxlan receive",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Kind::Tc => "",
            Kind::Xdp => "xdp-",
            Kind::VxlanRx => "vx-",
        }
    }
}

/// One pinned link as found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    pub path: PathBuf,
    pub kind: Kind,
    pub ifname: String,
    pub ifindex: u32,
    /// The program is still attached to the link's device.
    pub attached: bool,
    /// It runs this build's program (same tag).
    pub current: bool,
}

/// The pin file name of a link.
pub fn pin_name(kind: Kind, ifname: &str, ifindex: u32) -> String {
    format!("{}{ifname}-{ifindex}", kind.prefix())
}

fn parse_pin_name(name: &str) -> Option<(Kind, String, u32)> {
    let (kind, rest) = [Kind::Xdp, Kind::VxlanRx]
        .into_iter()
        .find_map(|k| name.strip_prefix(k.prefix()).map(|r| (k, r)))
        .unwrap_or((Kind::Tc, name));
    let (ifname, idx) = rest.rsplit_once('-')?;
    Some((kind, ifname.to_owned(), idx.parse().ok()?))
}

/// The links that must run a program: the VPC links (`links`, name -> ifindex) with this
/// mode's, and in cluster mode the VXLAN device (`vxlan`: its ifindex) with the receive one.
pub fn wanted(
    links: &BTreeMap<String, u32>,
    mode: DatapathMode,
    vxlan: Option<u32>,
) -> BTreeMap<String, (u32, Kind)> {
    let mut w: BTreeMap<String, (u32, Kind)> = links
        .iter()
        .map(|(n, i)| (n.clone(), (*i, Kind::of(mode))))
        .collect();
    if let Some(i) = vxlan {
        w.insert(super::vxlan::NAME.to_owned(), (i, Kind::VxlanRx));
    }
    w
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Attach {
        ifname: String,
        ifindex: u32,
        kind: Kind,
    },
    /// Someone detached it: a new link replaces the pin.
    Repair(Pin),
    /// Another build's program: replaced atomically on the same link.
    Replace(Pin),
    /// A link that is gone or not configured, or of the other mode once this one is attached.
    Unpin(Pin),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Attach {
                ifname,
                ifindex,
                kind,
            } => write!(
                f,
                "attached datapath ({}) to {ifname} ({ifindex})",
                kind.name()
            ),
            Change::Repair(p) => write!(
                f,
                "re-attached datapath ({}) to {} (it had been detached)",
                p.kind.name(),
                p.ifname
            ),
            Change::Replace(p) => write!(
                f,
                "replaced datapath program ({}) on {}",
                p.kind.name(),
                p.ifname
            ),
            Change::Unpin(p) => write!(
                f,
                "removed datapath link ({}) of {} ({})",
                p.kind.name(),
                p.ifname,
                p.ifindex
            ),
        }
    }
}

/// Every pin under `link_dir`, with whether it is attached and current.
pub fn observe(dp: &mut Datapath) -> Vec<Pin> {
    let Ok(entries) = fs::read_dir(dp.link_dir()) else {
        return Vec::new();
    };
    // Program id -> tag, read once.
    let tags: BTreeMap<u32, u64> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| (p.id(), p.tag()))
        .collect();
    let my_tags: Vec<(Kind, Option<u64>)> = [Kind::Tc, Kind::Xdp, Kind::VxlanRx]
        .into_iter()
        .map(|k| {
            let info = match k {
                Kind::Tc => dp.tc_program().info(),
                Kind::Xdp => dp.xdp_program().info(),
                Kind::VxlanRx => dp.vxlan_rx_program().info(),
            };
            (k, info.ok().map(|i| i.tag()))
        })
        .collect();
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((kind, ifname, ifindex)) = parse_pin_name(&name) else {
            continue;
        };
        let prog_id = PinnedLink::from_pin(e.path())
            .ok()
            .map(FdLink::from)
            .and_then(|fd| fd.info().ok())
            .map(|i| i.program_id());
        let alive = nix::net::if_::if_nametoindex(ifname.as_str()).ok() == Some(ifindex);
        let attached = match (kind, prog_id) {
            (_, None) => false,
            (Kind::Tc | Kind::VxlanRx, Some(id)) => {
                alive
                    && SchedClassifier::query_tcx(ifname.as_str(), TcAttachType::Ingress)
                        .map(|(_, progs)| progs.iter().any(|p| p.id() == id))
                        .unwrap_or(false)
            }
            // An XDP link can only be detached through its pin (then gone) or with its device.
            (Kind::Xdp, Some(_)) => alive,
        };
        let my_tag = my_tags
            .iter()
            .find(|(k, _)| *k == kind)
            .and_then(|(_, t)| *t);
        let current = prog_id
            .and_then(|id| tags.get(&id))
            .is_some_and(|t| Some(*t) == my_tag);
        out.push(Pin {
            path: e.path(),
            kind,
            ifname,
            ifindex,
            attached,
            current,
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Attaches and repairs first; pins to remove last, and a pin of the other mode only when this
/// mode's program is (or is about to be) on the same link. `want`: link name -> (ifindex,
/// program), from [`wanted`].
pub fn diff(have: &[Pin], want: &BTreeMap<String, (u32, Kind)>) -> Vec<Change> {
    let mut out = Vec::new();
    for (ifname, &(ifindex, kind)) in want {
        let pin = have
            .iter()
            .find(|p| p.kind == kind && &p.ifname == ifname && p.ifindex == ifindex);
        match pin {
            None => out.push(Change::Attach {
                ifname: ifname.clone(),
                ifindex,
                kind,
            }),
            Some(p) if !p.attached => out.push(Change::Repair(p.clone())),
            Some(p) if !p.current => out.push(Change::Replace(p.clone())),
            Some(_) => {}
        }
    }
    for p in have {
        if want.get(&p.ifname) != Some(&(p.ifindex, p.kind)) {
            out.push(Change::Unpin(p.clone()));
        }
    }
    out
}

/// What the program links are after an apply: (name, ifindex) with this mode's program, the
/// names that still have an XDP pin, and the VXLAN device's ifindex when its receive program is
/// attached.
#[derive(Debug, Default)]
pub struct Attached {
    pub attached: BTreeSet<(String, u32)>,
    pub xdp_links: BTreeSet<String>,
    pub vxlan_rx: Option<u32>,
}

/// Applies `changes`; the unpin of a link whose replacement (the other mode's program on the
/// same link) failed to attach is skipped: a configured link never loses its filter.
pub fn apply(dp: &mut Datapath, changes: Vec<Change>) -> Report {
    let mut report = Report::default();
    let mut failed_links: BTreeSet<(String, u32)> = BTreeSet::new();
    for c in changes {
        let line = c.to_string();
        let r = match &c {
            Change::Attach {
                ifname,
                ifindex,
                kind,
            } => attach(dp, *kind, ifname, *ifindex),
            Change::Repair(p) => {
                let _ = fs::remove_file(&p.path);
                attach(dp, p.kind, &p.ifname, p.ifindex)
            }
            Change::Replace(p) => replace(dp, p),
            Change::Unpin(p) => {
                if failed_links.contains(&(p.ifname.clone(), p.ifindex)) {
                    continue;
                }
                fs::remove_file(&p.path).map_err(|e| format!("unpinning {}: {e}", p.path.display()))
            }
        };
        if let Err(e) = r {
            let (ifname, ifindex) = match &c {
                Change::Attach {
                    ifname, ifindex, ..
                } => (ifname.clone(), *ifindex),
                Change::Repair(p) | Change::Replace(p) | Change::Unpin(p) => {
                    (p.ifname.clone(), p.ifindex)
                }
            };
            if !matches!(c, Change::Unpin(_)) {
                failed_links.insert((ifname.clone(), ifindex));
            }
            report.errors.insert(ifname, format!("{line}: {e}"));
        } else {
            report.actions.push(line);
        }
    }
    report
}

/// The program links as they are now.
pub fn attached(dp: &mut Datapath, mode: DatapathMode) -> Attached {
    attached_of(observe(dp), mode)
}

/// What `pins` (as `observe` found them) say is attached.
pub fn attached_of(pins: Vec<Pin>, mode: DatapathMode) -> Attached {
    let mut out = Attached::default();
    for p in pins {
        match p.kind {
            Kind::VxlanRx if p.attached => out.vxlan_rx = Some(p.ifindex),
            Kind::VxlanRx => {}
            Kind::Xdp | Kind::Tc => {
                if p.kind == Kind::Xdp {
                    out.xdp_links.insert(p.ifname.clone());
                }
                if p.kind == Kind::of(mode) && p.attached {
                    out.attached.insert((p.ifname, p.ifindex));
                }
            }
        }
    }
    out
}

/// The TC program of `kind` (`Tc` or `VxlanRx`).
fn classifier(dp: &mut Datapath, kind: Kind) -> &mut SchedClassifier {
    match kind {
        Kind::VxlanRx => dp.vxlan_rx_program(),
        _ => dp.tc_program(),
    }
}

/// A program's link taken out of aya's bookkeeping, as a plain link fd (dropping it does not
/// detach).
fn into_fd<L>(link: Result<L, aya::programs::ProgramError>) -> Result<FdLink, String>
where
    L: TryInto<FdLink>,
    L::Error: fmt::Display,
{
    link.map_err(|e| format!("take link: {e}"))?
        .try_into()
        .map_err(|e| format!("link: {e}"))
}

fn attach(dp: &mut Datapath, kind: Kind, ifname: &str, ifindex: u32) -> Result<(), String> {
    let pin = dp.link_dir().join(pin_name(kind, ifname, ifindex));
    let fd: FdLink = match kind {
        Kind::Tc | Kind::VxlanRx => {
            let prog = classifier(dp, kind);
            let id = prog
                .attach_with_options(
                    ifname,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(|e| format!("attach: {e}"))?;
            into_fd(prog.take_link(id))?
        }
        Kind::Xdp => {
            let prog = dp.xdp_program();
            let id = prog
                .attach_to_if_index(ifindex, XdpMode::Driver)
                .map_err(|e| format!("attach XDP: {e}"))?;
            into_fd(prog.take_link(id))?
        }
    };
    fd.pin(&pin)
        .map_err(|e| format!("pinning {}: {e}", pin.display()))?;
    Ok(())
}

fn replace(dp: &mut Datapath, p: &Pin) -> Result<(), String> {
    let pinned = PinnedLink::from_pin(&p.path).map_err(|e| format!("opening pin: {e}"))?;
    let fd: FdLink = pinned.into();
    // The returned link is dropped without detaching (an FdLink only closes its fd).
    let _fd: FdLink = match p.kind {
        Kind::Tc | Kind::VxlanRx => {
            let link = SchedClassifierLink::try_from(fd).map_err(|e| format!("link: {e}"))?;
            let prog = classifier(dp, p.kind);
            let id = prog
                .attach_to_link(link)
                .map_err(|e| format!("replace on link: {e}"))?;
            into_fd(prog.take_link(id))?
        }
        Kind::Xdp => {
            let link = XdpLink::try_from(fd).map_err(|e| format!("link: {e}"))?;
            let prog = dp.xdp_program();
            let id = prog
                .attach_to_link(link)
                .map_err(|e| format!("replace on link: {e}"))?;
            into_fd(prog.take_link(id))?
        }
    };
    Ok(())
}

/// The pins of `link_dir` that `teardown` may remove: those named like peerd's links.
pub fn own_pins(link_dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(link_dir)
        .map(|d| {
            d.flatten()
                .filter(|e| parse_pin_name(&e.file_name().to_string_lossy()).is_some())
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(kind: Kind, ifname: &str, ifindex: u32, attached: bool, current: bool) -> Pin {
        Pin {
            path: PathBuf::from(pin_name(kind, ifname, ifindex)),
            kind,
            ifname: ifname.into(),
            ifindex,
            attached,
            current,
        }
    }

    #[test]
    fn pin_names_round_trip() {
        for (kind, ifname) in [
            (Kind::Xdp, "pd12ab"),
            (Kind::Tc, "pd12ab"),
            (Kind::VxlanRx, "peerd-vx"),
        ] {
            assert_eq!(
                parse_pin_name(&pin_name(kind, ifname, 7)),
                Some((kind, ifname.into(), 7))
            );
        }
        assert_eq!(parse_pin_name("junk"), None);
    }

    #[test]
    fn attaches_repairs_replaces_and_unpins_only_what_is_not_wanted() {
        use Kind::*;
        let have = vec![
            pin(Tc, "pda", 1, true, true),
            pin(Tc, "pdb", 2, false, true),
            pin(Tc, "pdc", 3, true, false),
            pin(Tc, "pdgone", 4, true, true),
            pin(Tc, "pdd", 5, true, true), // pdd was recreated as ifindex 6
        ];
        let links: BTreeMap<String, u32> = [
            ("pda".into(), 1),
            ("pdb".into(), 2),
            ("pdc".into(), 3),
            ("pdd".into(), 6),
        ]
        .into();
        let want = wanted(&links, DatapathMode::Tc, None);
        let c: Vec<String> = diff(&have, &want).iter().map(|c| c.to_string()).collect();
        assert_eq!(
            c,
            [
                "re-attached datapath (tc) to pdb (it had been detached)",
                "replaced datapath program (tc) on pdc",
                "attached datapath (tc) to pdd (6)",
                "removed datapath link (tc) of pdgone (4)",
                "removed datapath link (tc) of pdd (5)",
            ]
        );
    }

    #[test]
    fn switching_modes_attaches_the_new_one_before_removing_the_old() {
        let have = vec![pin(Kind::Tc, "pda", 1, true, true)];
        let links: BTreeMap<String, u32> = [("pda".into(), 1)].into();
        let c = diff(&have, &wanted(&links, DatapathMode::Xdp, None));
        assert!(matches!(
            c[0],
            Change::Attach {
                kind: Kind::Xdp,
                ..
            }
        ));
        assert!(matches!(&c[1], Change::Unpin(p) if p.kind == Kind::Tc));
    }

    #[test]
    fn the_vxlan_device_gets_the_receive_program_and_loses_it_with_cluster_mode() {
        let links: BTreeMap<String, u32> = [("pda".into(), 1)].into();
        let have = vec![pin(Kind::Tc, "pda", 1, true, true)];
        let c = diff(&have, &wanted(&links, DatapathMode::Tc, Some(9)));
        assert_eq!(
            c,
            [Change::Attach {
                ifname: "peerd-vx".into(),
                ifindex: 9,
                kind: Kind::VxlanRx
            }]
        );
        let have = vec![
            pin(Kind::Tc, "pda", 1, true, true),
            pin(Kind::VxlanRx, "peerd-vx", 9, true, true),
        ];
        assert!(diff(&have, &wanted(&links, DatapathMode::Tc, Some(9))).is_empty());
        let c = diff(&have, &wanted(&links, DatapathMode::Tc, None));
        assert!(matches!(&c[..], [Change::Unpin(p)] if p.kind == Kind::VxlanRx));
    }
}
