//! Reconciler for the datapath program on each VPC's host-side link: a TCX (or XDP) link pinned
//! under `pin_dir/links`, so the program outlives the daemon.
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

/// One pinned link as found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    pub path: PathBuf,
    pub mode: DatapathMode,
    pub ifname: String,
    pub ifindex: u32,
    /// The program is still attached to the link's device.
    pub attached: bool,
    /// It runs this build's program (same tag).
    pub current: bool,
}

/// The pin file name of a link.
pub fn pin_name(mode: DatapathMode, ifname: &str, ifindex: u32) -> String {
    match mode {
        DatapathMode::Tc => format!("{ifname}-{ifindex}"),
        DatapathMode::Xdp => format!("xdp-{ifname}-{ifindex}"),
    }
}

fn parse_pin_name(name: &str) -> Option<(DatapathMode, String, u32)> {
    let (mode, rest) = match name.strip_prefix("xdp-") {
        Some(r) => (DatapathMode::Xdp, r),
        None => (DatapathMode::Tc, name),
    };
    let (ifname, idx) = rest.rsplit_once('-')?;
    Some((mode, ifname.to_owned(), idx.parse().ok()?))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Attach {
        ifname: String,
        ifindex: u32,
        mode: DatapathMode,
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
        let mode = |m: &DatapathMode| match m {
            DatapathMode::Tc => "tc",
            DatapathMode::Xdp => "xdp",
        };
        match self {
            Change::Attach {
                ifname,
                ifindex,
                mode: m,
            } => write!(f, "attached datapath ({}) to {ifname} ({ifindex})", mode(m)),
            Change::Repair(p) => write!(
                f,
                "re-attached datapath ({}) to {} (it had been detached)",
                mode(&p.mode),
                p.ifname
            ),
            Change::Replace(p) => write!(
                f,
                "replaced datapath program ({}) on {}",
                mode(&p.mode),
                p.ifname
            ),
            Change::Unpin(p) => write!(
                f,
                "removed datapath link ({}) of {} ({})",
                mode(&p.mode),
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
    let mine = |dp: &mut Datapath, mode| -> Option<u64> {
        let info = match mode {
            DatapathMode::Tc => dp.tc_program().info(),
            DatapathMode::Xdp => dp.xdp_program().info(),
        };
        info.ok().map(|i| i.tag())
    };
    let my_tags = [
        (DatapathMode::Tc, mine(dp, DatapathMode::Tc)),
        (DatapathMode::Xdp, mine(dp, DatapathMode::Xdp)),
    ];
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((mode, ifname, ifindex)) = parse_pin_name(&name) else {
            continue;
        };
        let prog_id = PinnedLink::from_pin(e.path())
            .ok()
            .map(FdLink::from)
            .and_then(|fd| fd.info().ok())
            .map(|i| i.program_id());
        let alive = nix::net::if_::if_nametoindex(ifname.as_str()).ok() == Some(ifindex);
        let attached = match (mode, prog_id) {
            (_, None) => false,
            (DatapathMode::Tc, Some(id)) => {
                alive
                    && SchedClassifier::query_tcx(ifname.as_str(), TcAttachType::Ingress)
                        .map(|(_, progs)| progs.iter().any(|p| p.id() == id))
                        .unwrap_or(false)
            }
            // An XDP link can only be detached through its pin (then gone) or with its device.
            (DatapathMode::Xdp, Some(_)) => alive,
        };
        let my_tag = my_tags
            .iter()
            .find(|(m, _)| *m == mode)
            .and_then(|(_, t)| *t);
        let current = prog_id
            .and_then(|id| tags.get(&id))
            .is_some_and(|t| Some(*t) == my_tag);
        out.push(Pin {
            path: e.path(),
            mode,
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
/// mode's program is (or is about to be) on the same link.
pub fn diff(have: &[Pin], want: &BTreeMap<String, u32>, mode: DatapathMode) -> Vec<Change> {
    let mut out = Vec::new();
    let mut covered: BTreeSet<(String, u32)> = BTreeSet::new();
    for (ifname, ifindex) in want {
        let pin = have
            .iter()
            .find(|p| p.mode == mode && &p.ifname == ifname && p.ifindex == *ifindex);
        match pin {
            None => out.push(Change::Attach {
                ifname: ifname.clone(),
                ifindex: *ifindex,
                mode,
            }),
            Some(p) if !p.attached => out.push(Change::Repair(p.clone())),
            Some(p) if !p.current => out.push(Change::Replace(p.clone())),
            Some(_) => {}
        }
        covered.insert((ifname.clone(), *ifindex));
    }
    for p in have {
        let wanted = p.mode == mode && want.get(&p.ifname) == Some(&p.ifindex);
        if !wanted {
            out.push(Change::Unpin(p.clone()));
        }
    }
    out
}

/// What the program links are after an apply: (name, ifindex) with this mode's program, and
/// the names that still have an XDP pin.
#[derive(Debug, Default)]
pub struct Attached {
    pub attached: BTreeSet<(String, u32)>,
    pub xdp_links: BTreeSet<String>,
}

/// Applies `changes`; an unpin of the other mode's link is skipped when this mode's attach on
/// the same link failed.
pub fn apply(dp: &mut Datapath, mode: DatapathMode, changes: Vec<Change>) -> (Report, Vec<String>) {
    let mut report = Report::default();
    let mut failed_links: BTreeSet<(String, u32)> = BTreeSet::new();
    let mut failed_ifnames = Vec::new();
    for c in changes {
        let line = c.to_string();
        let r = match &c {
            Change::Attach {
                ifname, ifindex, ..
            } => attach(dp, mode, ifname, *ifindex),
            Change::Repair(p) => {
                let _ = fs::remove_file(&p.path);
                attach(dp, mode, &p.ifname, p.ifindex)
            }
            Change::Replace(p) => replace(dp, p),
            Change::Unpin(p) => {
                if p.mode != mode && failed_links.contains(&(p.ifname.clone(), p.ifindex)) {
                    // The new mode's program is not on it: keep the old filter.
                    continue;
                }
                fs::remove_file(&p.path).map_err(|e| format!("unpinning {}: {e}", p.path.display()))
            }
        };
        match r {
            Ok(()) => report.actions.push(line),
            Err(e) => {
                if let Change::Attach {
                    ifname, ifindex, ..
                } = &c
                {
                    failed_links.insert((ifname.clone(), *ifindex));
                    failed_ifnames.push(ifname.clone());
                }
                if let Change::Repair(p) | Change::Replace(p) = &c {
                    failed_links.insert((p.ifname.clone(), p.ifindex));
                    failed_ifnames.push(p.ifname.clone());
                }
                report.errors.insert(
                    match &c {
                        Change::Attach { ifname, .. } => ifname.clone(),
                        Change::Repair(p) | Change::Replace(p) | Change::Unpin(p) => {
                            p.ifname.clone()
                        }
                    },
                    format!("{line}: {e}"),
                );
            }
        }
    }
    (report, failed_ifnames)
}

/// The program links as they are now.
pub fn attached(dp: &mut Datapath, mode: DatapathMode) -> Attached {
    let mut out = Attached::default();
    for p in observe(dp) {
        if p.mode == DatapathMode::Xdp {
            out.xdp_links.insert(p.ifname.clone());
        }
        if p.mode == mode && p.attached {
            out.attached.insert((p.ifname, p.ifindex));
        }
    }
    out
}

fn attach(dp: &mut Datapath, mode: DatapathMode, ifname: &str, ifindex: u32) -> Result<(), String> {
    let pin = dp.link_dir().join(pin_name(mode, ifname, ifindex));
    let fd: FdLink = match mode {
        DatapathMode::Tc => {
            let prog = dp.tc_program();
            let id = prog
                .attach_with_options(
                    ifname,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(|e| format!("attach: {e}"))?;
            prog.take_link(id)
                .map_err(|e| format!("take link: {e}"))?
                .try_into()
                .map_err(|e| format!("link: {e}"))?
        }
        DatapathMode::Xdp => {
            let prog = dp.xdp_program();
            let id = prog
                .attach_to_if_index(ifindex, XdpMode::Driver)
                .map_err(|e| format!("attach XDP: {e}"))?;
            prog.take_link(id)
                .map_err(|e| format!("take link: {e}"))?
                .try_into()
                .map_err(|e| format!("link: {e}"))?
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
    let _fd: FdLink = match p.mode {
        DatapathMode::Tc => {
            let link = SchedClassifierLink::try_from(fd).map_err(|e| format!("link: {e}"))?;
            let prog = dp.tc_program();
            let id = prog
                .attach_to_link(link)
                .map_err(|e| format!("replace on link: {e}"))?;
            prog.take_link(id)
                .map_err(|e| format!("take link: {e}"))?
                .try_into()
                .map_err(|e| format!("link: {e}"))?
        }
        DatapathMode::Xdp => {
            let link = XdpLink::try_from(fd).map_err(|e| format!("link: {e}"))?;
            let prog = dp.xdp_program();
            let id = prog
                .attach_to_link(link)
                .map_err(|e| format!("replace on link: {e}"))?;
            prog.take_link(id)
                .map_err(|e| format!("take link: {e}"))?
                .try_into()
                .map_err(|e| format!("link: {e}"))?
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

    fn pin(mode: DatapathMode, ifname: &str, ifindex: u32, attached: bool, current: bool) -> Pin {
        Pin {
            path: PathBuf::from(pin_name(mode, ifname, ifindex)),
            mode,
            ifname: ifname.into(),
            ifindex,
            attached,
            current,
        }
    }

    #[test]
    fn pin_names_round_trip() {
        assert_eq!(
            parse_pin_name(&pin_name(DatapathMode::Xdp, "pd12ab", 7)),
            Some((DatapathMode::Xdp, "pd12ab".into(), 7))
        );
        assert_eq!(
            parse_pin_name(&pin_name(DatapathMode::Tc, "pd12ab", 7)),
            Some((DatapathMode::Tc, "pd12ab".into(), 7))
        );
        assert_eq!(parse_pin_name("junk"), None);
    }

    #[test]
    fn attaches_repairs_replaces_and_unpins_only_what_is_not_wanted() {
        use DatapathMode::*;
        let have = vec![
            pin(Tc, "pda", 1, true, true),
            pin(Tc, "pdb", 2, false, true),
            pin(Tc, "pdc", 3, true, false),
            pin(Tc, "pdgone", 4, true, true),
            pin(Tc, "pdd", 5, true, true), // pdd was recreated as ifindex 6
        ];
        let want: BTreeMap<String, u32> = [
            ("pda".into(), 1),
            ("pdb".into(), 2),
            ("pdc".into(), 3),
            ("pdd".into(), 6),
        ]
        .into();
        let c: Vec<String> = diff(&have, &want, Tc)
            .iter()
            .map(|c| c.to_string())
            .collect();
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
        use DatapathMode::*;
        let have = vec![pin(Tc, "pda", 1, true, true)];
        let want: BTreeMap<String, u32> = [("pda".into(), 1)].into();
        let c = diff(&have, &want, Xdp);
        assert!(matches!(c[0], Change::Attach { mode: Xdp, .. }));
        assert!(matches!(&c[1], Change::Unpin(p) if p.mode == Tc));
    }
}
