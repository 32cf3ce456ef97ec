//! What wakes the daemon besides signals and the control socket: changes to the configuration
//! files (inotify on their directories, so edits in place and files renamed over them are both
//! seen), namespaces removed from /run/netns, and links deleted in the root namespace
//! (rtnetlink multicast). Each watcher is a plain thread that sends an [`Event`]; the daemon
//! debounces them.
use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, warn};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A configuration directory changed: reload.
    Config,
    /// Something peerd created may have been removed: reconcile.
    Drift,
}

/// Watches configuration directories. `set_dirs` replaces the watched set after a reload.
#[derive(Clone)]
pub struct ConfigWatcher {
    inner: Arc<Mutex<(Inotify, BTreeMap<PathBuf, WatchDescriptor>)>>,
    /// File names that matter: those of the files read, plus anything ending in `.toml`.
    names: Arc<Mutex<BTreeSet<OsString>>>,
}

fn relevant(names: &BTreeSet<OsString>, name: Option<&std::ffi::OsStr>) -> bool {
    name.is_some_and(|n| names.contains(n) || n.to_string_lossy().ends_with(".toml"))
}

const CONFIG_MASK: AddWatchFlags = AddWatchFlags::IN_CLOSE_WRITE
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_CREATE)
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MODIFY);

impl ConfigWatcher {
    pub fn start(events: UnboundedSender<Event>) -> nix::Result<Self> {
        let ino = Inotify::init(InitFlags::IN_CLOEXEC)?;
        let w = Self {
            inner: Arc::new(Mutex::new((ino, BTreeMap::new()))),
            names: Arc::default(),
        };
        let names = w.names.clone();
        // The reader borrows the same inotify fd through a duplicate.
        let fd = {
            let g = w.inner.lock().expect("watch lock");
            std::os::fd::AsFd::as_fd(&g.0)
                .try_clone_to_owned()
                .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(0)))?
        };
        // SAFETY: `fd` is a fresh duplicate of an inotify descriptor, owned by this reader.
        let reader = unsafe { Inotify::from_owned_fd(fd) };
        std::thread::Builder::new()
            .name("peerd-config-watch".into())
            .spawn(move || loop {
                match reader.read_events() {
                    Ok(evs)
                        if evs.iter().any(|e| {
                            relevant(&names.lock().expect("names"), e.name.as_deref())
                        }) =>
                    {
                        debug!(events = evs.len(), "configuration file changed");
                        if events.send(Event::Config).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(nix::Error::EINTR) => {}
                    Err(e) => {
                        warn!(error = %e, "configuration watcher stopped");
                        return;
                    }
                }
            })
            .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(0)))?;
        Ok(w)
    }

    pub fn set(&self, dirs: &[PathBuf], files: &[PathBuf]) {
        *self.names.lock().expect("names") = files
            .iter()
            .filter_map(|f| f.file_name().map(Into::into))
            .collect();
        let mut g = self.inner.lock().expect("watch lock");
        let (ino, watched) = &mut *g;
        watched.retain(|d, wd| {
            let keep = dirs.contains(d);
            if !keep {
                let _ = ino.rm_watch(*wd);
            }
            keep
        });
        for d in dirs {
            if watched.contains_key(d) {
                continue;
            }
            match ino.add_watch(d.as_path(), CONFIG_MASK) {
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
    let dir = Path::new("/run/netns");
    let _ = std::fs::create_dir_all(dir);
    let Ok(ino) = Inotify::init(InitFlags::IN_CLOEXEC) else {
        return;
    };
    if let Err(e) = ino.add_watch(dir, AddWatchFlags::IN_DELETE) {
        warn!(error = %e, "cannot watch /run/netns; drift is found by the periodic resync");
        return;
    }
    let _ = std::thread::Builder::new()
        .name("peerd-netns-watch".into())
        .spawn(move || loop {
            match ino.read_events() {
                Ok(_) => {
                    if events.send(Event::Drift).is_err() {
                        return;
                    }
                }
                Err(nix::Error::EINTR) => {}
                Err(_) => return,
            }
        });
}

/// Watches root-namespace link deletions (RTM_DELLINK on the RTNLGRP_LINK group).
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
                // Walk the netlink messages: length (u32), type (u16), ...
                let mut off = 0;
                let mut deleted = false;
                while off + 16 <= n {
                    let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
                    let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
                    deleted |= ty == RTM_DELLINK;
                    if len < 16 {
                        break;
                    }
                    off += (len + 3) & !3;
                }
                if deleted && events.send(Event::Drift).is_err() {
                    return;
                }
            }
        });
}
