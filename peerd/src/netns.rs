//! Named network namespaces (`/run/netns/NAME`, as `ip netns` makes them) and the few things
//! that must run on a thread inside one: creating it, sysctls under `/proc/sys/net` (they are
//! per namespace, resolved when the file is opened), and ethtool ioctls.
//!
//! `setns` moves only the calling thread, so everything here that enters a namespace does so on
//! a short-lived thread of its own; no long-lived thread (and no tokio worker) ever changes
//! namespace. Netlink sockets are opened the same way and then used from anywhere
//! (`crate::netlink`).
use std::{
    fs,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use nix::{
    mount::{mount, umount2, MntFlags, MsFlags},
    sched::{setns, unshare, CloneFlags},
};

/// The VPC-side end of the veth pair, inside the namespace.
pub const NS_IFNAME: &str = "peerd0";
pub const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {target}: {source}")]
    Sys {
        op: &'static str,
        target: String,
        source: nix::Error,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("thread for namespace {0} panicked")]
    Thread(String),
}

fn sys(op: &'static str, target: impl Into<String>) -> impl FnOnce(nix::Error) -> Error {
    let target = target.into();
    move |source| Error::Sys { op, target, source }
}

pub fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { op, path, source }
}

pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// The inode of a named namespace's file: a namespace deleted and created again under the
/// same name has another one.
pub fn inode(name: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    // The bind mount's metadata is the namespace's (nsfs inode), not the placeholder file's.
    fs::metadata(path(name)).ok().map(|m| m.ino())
}

/// Named namespaces whose name starts with `prefix`, sorted.
pub fn list(prefix: &str) -> Vec<String> {
    let Ok(entries) = fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    out.sort();
    out
}

/// Runs `f` on a new thread inside namespace `name` and returns its result.
pub fn run_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    run_at(&path(name), f)
}

/// Runs `f` on a new thread inside the namespace whose file is `p` (a `/run/netns/NAME` or a
/// `/proc/PID/ns/net`) and returns its result.
pub fn run_at<T: Send + 'static>(
    p: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    let p = p.to_owned();
    let label = p.display().to_string();
    std::thread::spawn(move || -> Result<T, Error> {
        let file = fs::File::open(&p).map_err(io("opening", &p))?;
        setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(sys("entering namespace", p.display().to_string()))?;
        Ok(f())
    })
    .join()
    .map_err(|_| Error::Thread(label))?
}

/// /run/netns as iproute2 makes it: a shared mount point, so namespaces mounted there are
/// seen from every mount namespace.
fn prepare_dir() -> Result<(), Error> {
    // VPCs are created side by side: one thread at a time checks and fixes the mount.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(NETNS_DIR);
    fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    if mount(None::<&str>, dir, None::<&str>, shared, None::<&str>).is_err() {
        mount(
            Some(dir),
            dir,
            Some("none"),
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(sys("bind-mounting", NETNS_DIR))?;
        mount(None::<&str>, dir, None::<&str>, shared, None::<&str>)
            .map_err(sys("sharing", NETNS_DIR))?;
    }
    Ok(())
}

/// Creates named namespace `name` (blocking: run it off the async threads).
pub fn create(name: &str) -> Result<(), Error> {
    prepare_dir()?;
    let p = path(name);
    fs::File::create(&p).map_err(io("creating", &p))?;
    let label = name.to_owned();
    let target = p.clone();
    let r = std::thread::spawn(move || -> Result<(), Error> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(sys("creating namespace", &label))?;
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) };
        let src = format!("/proc/self/task/{tid}/ns/net");
        mount(
            Some(src.as_str()),
            &target,
            Some("none"),
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys("mounting namespace", &label))
    })
    .join()
    .map_err(|_| Error::Thread(name.to_owned()))?;
    if r.is_err() {
        let _ = fs::remove_file(&p);
    }
    r
}

/// Deletes named namespace `name`; `Ok(false)` when it did not exist.
pub fn delete(name: &str) -> Result<bool, Error> {
    let p = path(name);
    if !p.exists() {
        return Ok(false);
    }
    let _ = umount2(&p, MntFlags::MNT_DETACH);
    fs::remove_file(&p).map_err(io("removing", &p))?;
    Ok(true)
}

/// Sets a sysctl under /proc/sys of the calling thread's namespace; `Ok(true)` when it changed.
pub fn write_sysctl(path: &str, value: &str) -> std::io::Result<bool> {
    let cur = fs::read_to_string(path)?;
    if cur.trim() == value {
        return Ok(false);
    }
    fs::write(path, value)?;
    Ok(true)
}

/// One offload of a link, as the features `ethtool -k` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offload {
    /// Generic receive offload: on, veth runs NAPI and can receive XDP redirects.
    Gro,
    /// TX checksum offload: an XDP redirect loses the skb's partial-checksum state.
    TxChecksum,
    /// VLAN tag insertion: off, a tagged frame carries its tag in the data, where the XDP
    /// program sees it and drops it; offloaded, the tag would ride in skb metadata that XDP
    /// cannot see, and the redirect would deliver the frame untagged. (TC sees it either way.)
    VlanInsert,
}

impl Offload {
    pub fn name(self) -> &'static str {
        match self {
            Offload::Gro => "gro",
            Offload::TxChecksum => "tx-checksumming",
            Offload::VlanInsert => "tx-vlan-offload",
        }
    }

    fn features(self) -> &'static [&'static str] {
        match self {
            Offload::Gro => &["rx-gro"],
            Offload::TxChecksum => &["tx-checksum-ip-generic"],
            Offload::VlanInsert => &["tx-vlan-hw-insert", "tx-vlan-stag-hw-insert"],
        }
    }
}

/// Reads (`set = None`) or sets an offload of `ifname` in the calling thread's namespace;
/// returns whether it was on before (all of its features).
pub fn offload(ifname: &str, which: Offload, set: Option<bool>) -> std::io::Result<bool> {
    let before = crate::ethtool::get_features(ifname, which.features())?
        .into_iter()
        .all(|on| on);
    if let Some(on) = set {
        crate::ethtool::set_features(ifname, which.features(), on)?;
    }
    Ok(before)
}
