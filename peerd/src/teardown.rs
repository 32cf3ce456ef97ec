//! `peerd teardown`: removes what peerd created and nothing else — its VPC links, the
//! namespaces it created (recorded in the state), its VXLAN device (cluster mode), its
//! backstop table, the pins it made (its
//! maps by name, its program links) and its state files.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use crate::{
    config::Config,
    netlink::{self, Netlink},
    reconcile::{backstop, links, programs, vxlan},
    state::{self, Removal, State},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("pin_dir {0} is the root of a bpffs mount: peerd only removes a directory of its own")]
    PinDirIsRoot(PathBuf),
    #[error(transparent)]
    Netlink(#[from] netlink::Error),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

/// Is `dir` a mount point (the root of a filesystem)?
pub fn is_mount_point(dir: &Path) -> bool {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .any(|m| Path::new(m) == dir)
}

/// Removes everything peerd created; returns what it did, one line each.
pub async fn teardown(cfg: &Config, st: &State) -> Result<Vec<String>, Error> {
    let pin_dir = &cfg.daemon.pin_dir;
    if pin_dir == Path::new("/") || pin_dir == Path::new("/sys/fs/bpf") || is_mount_point(pin_dir) {
        return Err(Error::PinDirIsRoot(pin_dir.clone()));
    }
    let mut done = Vec::new();
    let prefix = &cfg.daemon.netns_prefix;
    // Every VPC the state knows, and those still being removed.
    let mut vpcs: BTreeMap<String, Removal> = st.removing.clone();
    for name in st.vpcs.keys() {
        let netns = format!("{prefix}{name}");
        let created = st.created_netns.as_ref().is_none_or(|c| c.contains(&netns));
        vpcs.insert(
            name.clone(),
            Removal {
                vpc: name.clone(),
                host_if: st
                    .links
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| state::link_name(&netns)),
                netns,
                created,
            },
        );
    }
    let nl = Netlink::new()?;
    let gone: Vec<Removal> = vpcs.into_values().collect();
    let report = links::apply(&nl, links::diff_gone(&gone)).await;
    done.extend(report.actions);
    if !report.errors.is_empty() {
        let errs: Vec<String> = report.errors.into_values().collect();
        return Err(Error::Failed(errs.join("; ")));
    }
    // Cluster mode: the VXLAN device, when it is peerd's (collect_md on the configured port).
    if let Some(c) = &cfg.daemon.cluster {
        let have = vxlan::observe(&nl, c.vxlan_port).await?;
        let r = vxlan::apply(&nl, vxlan::diff(&have, None, links::Pass::Build)).await;
        done.extend(r.actions);
        if let Some(e) = r.errors.into_values().next() {
            return Err(Error::Failed(e));
        }
    }
    let table = backstop::table_name(prefix);
    if backstop::observe(&table).is_ok_and(|h| h.complete || !h.links.is_empty()) {
        let r = backstop::apply(vec![backstop::Change::Delete { table }]);
        done.extend(r.actions);
    }
    // Pins: peerd's program links and maps by name, then the directories if empty.
    let link_dir = pin_dir.join("links");
    let map_dir = pin_dir.join("maps");
    let maps = peerd_common::maps::ALL
        .iter()
        .map(|n| map_dir.join(n))
        .filter(|p| p.exists());
    let mut removed = 0;
    for p in programs::own_pins(&link_dir).into_iter().chain(maps) {
        fs::remove_file(&p).map_err(|source| Error::Io {
            op: "unpinning",
            path: p.clone(),
            source,
        })?;
        removed += 1;
    }
    for d in [&link_dir, &map_dir, pin_dir] {
        // Only empty: anything else in there is not peerd's.
        let _ = fs::remove_dir(d);
    }
    if removed > 0 {
        done.push(format!(
            "removed {removed} pins under {} (datapath detached)",
            pin_dir.display()
        ));
    }
    for f in [state::FILE, "config-lastgood.json"] {
        let p = cfg.daemon.state_dir.join(f);
        if p.exists() {
            fs::remove_file(&p).map_err(|source| Error::Io {
                op: "removing",
                path: p.clone(),
                source,
            })?;
        }
    }
    Ok(done)
}
