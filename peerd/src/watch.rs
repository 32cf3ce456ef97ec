//! What wakes the daemon besides signals and the control socket: changes to the configuration
//! files (inotify on their directories, so edits in place and files renamed over them are both
//! seen), namespaces removed from /run/netns, and links deleted in the host namespace
//! (rtnetlink multicast). Each watcher is a plain thread that sends an [`Event`]; the daemon's
//! owner task debounces them.
use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use inotify::{Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, warn};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A configuration directory changed: reload.
    Config,
    /// Something peerd created may have been removed: reconcile.
    Drift,
}

/// Watches configuration directories. `set` replaces the watched set after a reload.
#[derive(Clone)]
pub struct ConfigWatcher {
    watches: Arc<Mutex<(Watches, BTreeMap<PathBuf, WatchDescriptor>)>>,
    /// File names that matter: those of the files read, plus anything ending in `.toml`.
    names: Arc<Mutex<BTreeSet<OsString>>>,
}

fn relevant(names: &BTreeSet<OsString>, name: Option<&std::ffi::OsStr>) -> bool {
    name.is_some_and(|n| names.contains(n) || n.to_string_lossy().ends_with(".toml"))
}

const CONFIG_MASK: WatchMask = WatchMask::CLOSE_WRITE
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::CREATE)
    .union(WatchMask::DELETE)
    .union(WatchMask::MODIFY);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ConfigWatcher {
    pub fn start(events: UnboundedSender<Event>) -> std::io::Result<Self> {
        let mut ino = Inotify::init()?;
        let w = Self {
            watches: Arc::new(Mutex::new((ino.watches(), BTreeMap::new()))),
            names: Arc::default(),
        };
        let names = w.names.clone();
        std::thread::Builder::new()
            .name("peerd-config-watch".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match ino.read_events_blocking(&mut buf) {
                        Ok(evs) => {
                            let hit = {
                                let names = lock(&names);
                                evs.into_iter().any(|e| relevant(&names, e.name))
                            };
                            if hit {
                                debug!("configuration file changed");
                                if events.send(Event::Config).is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            warn!(error = %e, "configuration watcher stopped");
                            return;
                        }
                    }
                }
            })?;
        Ok(w)
    }

    pub fn set(&self, dirs: &[PathBuf], files: &[PathBuf]) {
        *lock(&self.names) = files
            .iter()
            .filter_map(|f| f.file_name().map(Into::into))
            .collect();
        let mut g = lock(&self.watches);
        let (watches, watched) = &mut *g;
        watched.retain(|d, wd| {
            let keep = dirs.contains(d);
            if !keep {
                let _ = watches.remove(wd.clone());
            }
            keep
        });
        for d in dirs {
            if watched.contains_key(d) {
                continue;
            }
            match watches.add(d, CONFIG_MASK) {
                Ok(wd) => {
                    watched.insert(d.clone(), wd);
                }
                Err(e) => {
                    warn!(dir = %d.display(), error = %e, "cannot watch configuration directory")
                }
            }
        }
    }
}

/// Watches /run/netns for removed namespaces.
pub fn watch_netns(events: UnboundedSender<Event>) {
    let dir = Path::new(crate::netns::NETNS_DIR);
    let _ = std::fs::create_dir_all(dir);
    let Ok(mut ino) = Inotify::init() else {
        return;
    };
    if let Err(e) = ino.watches().add(dir, WatchMask::DELETE) {
        warn!(error = %e, "cannot watch /run/netns; drift is found by the periodic resync");
        return;
    }
    let _ = std::thread::Builder::new()
        .name("peerd-netns-watch".into())
        .spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match ino.read_events_blocking(&mut buf) {
                    Ok(_) => {
                        if events.send(Event::Drift).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        });
}

/// Watches host-namespace link deletions (RTM_DELLINK on the RTNLGRP_LINK group).
pub fn watch_links(events: UnboundedSender<Event>) {
    use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
    const RTMGRP_LINK: u32 = 1;
    const RTM_DELLINK: u16 = 17;
    let Ok(mut sock) = Socket::new(NETLINK_ROUTE) else {
        return;
    };
    if sock.bind(&SocketAddr::new(0, RTMGRP_LINK)).is_err() {
        warn!("cannot subscribe to link events; drift is found by the periodic resync");
        return;
    }
    let _ = std::thread::Builder::new()
        .name("peerd-link-watch".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match sock.recv(&mut &mut buf[..], 0) {
                    Ok(n) => n,
                    Err(_) => return,
                };
                if has_dellink(&buf[..n.min(buf.len())], RTM_DELLINK)
                    && events.send(Event::Drift).is_err()
                {
                    return;
                }
            }
        });
}

/// Does a buffer of netlink messages (length u32, type u16, ...) hold one of type `ty`?
fn has_dellink(buf: &[u8], ty: u16) -> bool {
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        let t = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if t == ty {
            return true;
        }
        if len < 16 {
            break;
        }
        off += (len + 3) & !3;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_dellink_in_a_batch_and_survives_garbage() {
        let mut msg = vec![0u8; 32];
        msg[0..4].copy_from_slice(&32u32.to_ne_bytes());
        msg[4..6].copy_from_slice(&16u16.to_ne_bytes());
        let mut del = msg.clone();
        del[4..6].copy_from_slice(&17u16.to_ne_bytes());
        assert!(!has_dellink(&msg, 17));
        assert!(has_dellink(&[msg.clone(), del].concat(), 17));
        assert!(!has_dellink(&[0xff; 7], 17));
        let mut zero = msg.clone();
        zero[0..4].copy_from_slice(&0u32.to_ne_bytes());
        assert!(!has_dellink(&zero, 17));
    }
}
