//! Reading configuration files without trusting the file system they live on.
//!
//! Included files are written by tenants, so a path that matches an include pattern may be
//! anything: a symlink to `/etc/shadow` (whose first line a TOML error message would quote),
//! a fifo nobody writes to, `/proc/kmsg`, a huge file. Every file is therefore
//! - confined (includes only): it must resolve inside the including file's directory, checked
//!   on the canonical path and enforced at open time by `openat2(RESOLVE_BENEATH |
//!   RESOLVE_NO_SYMLINKS)` on that canonical path, so a symlink swapped in between is refused;
//! - opened `O_NONBLOCK | O_NOCTTY | O_CLOEXEC` (opening a fifo does not wait for a writer)
//!   and checked with `fstat` (a regular file) and `fstatfs` (not on proc, sysfs and other
//!   kernel file systems, whose "regular files" block or never end) before any byte is read;
//! - read up to [`MAX_FILE_BYTES`] + 1 bytes (a size that lies is still bounded);
//! - read on a helper thread that the caller waits for at most [`READ_TIMEOUT`] (a hung
//!   network or FUSE mount). A read that never returns leaves that thread blocked in the
//!   kernel; the caller has moved on with an error.
use std::{
    fs::{File, OpenOptions},
    io::Read,
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::mpsc,
    time::Duration,
};

use nix::{
    errno::Errno,
    fcntl::{openat2, OFlag, OpenHow, ResolveFlag},
    sys::statfs::{self, FsType},
};

/// Largest configuration file accepted.
pub(crate) const MAX_FILE_BYTES: u64 = 1 << 20;
/// Longest wait for one file to be opened and read.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a configuration file could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} resolves to {}, outside {} (an included file must stay inside the including file's directory)",
        path.display(),
        target.display(),
        dir.display()
    )]
    Outside {
        path: PathBuf,
        target: PathBuf,
        dir: PathBuf,
    },
    #[error("{} changed while it was opened (a symbolic link appeared on its path)", path.display())]
    Raced { path: PathBuf },
    #[error("{} is a {kind}, not a regular file", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{} is on a {fs} file system, not a configuration file", path.display())]
    KernelFs { path: PathBuf, fs: &'static str },
    #[error("{} is larger than {limit} bytes", path.display())]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("reading {} did not finish within {} ms", path.display(), timeout.as_millis())]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("{} is not a UTF-8 text file", path.display())]
    NotUtf8 { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Reads `path` as a configuration file. With `confine_to`, the file must resolve inside that
/// directory (an included file, confined to the including file's directory).
pub(crate) fn read_config_file(
    path: &Path,
    confine_to: Option<&Path>,
) -> Result<String, ReadError> {
    let (p, dir) = (path.to_owned(), confine_to.map(Path::to_owned));
    with_timeout(READ_TIMEOUT, move || read_now(&p, dir.as_deref())).unwrap_or_else(|| {
        Err(ReadError::Timeout {
            path: path.to_owned(),
            timeout: READ_TIMEOUT,
        })
    })
}

/// Runs `f` on a helper thread and waits for it at most `timeout`: `None` if it did not
/// finish (the thread is left to finish or block on its own) or could not be started.
pub(crate) fn with_timeout<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("peerd-config-read".into())
        .spawn(move || {
            // The receiver is gone when the caller stopped waiting: nothing to do then.
            let _ = tx.send(f());
        })
        .ok()?;
    rx.recv_timeout(timeout).ok()
}

fn read_now(path: &Path, confine_to: Option<&Path>) -> Result<String, ReadError> {
    let file = match confine_to {
        None => open_flags().open(path).map_err(|source| ReadError::Open {
            path: path.to_owned(),
            source,
        })?,
        Some(dir) => open_beneath(path, dir)?,
    };
    let meta = file.metadata().map_err(|source| ReadError::Read {
        path: path.to_owned(),
        source,
    })?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let kind = if ft.is_dir() {
            "directory"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "character device"
        } else if ft.is_block_device() {
            "block device"
        } else if ft.is_socket() {
            "socket"
        } else {
            "special file"
        };
        return Err(ReadError::NotRegular {
            path: path.to_owned(),
            kind,
        });
    }
    if let Ok(st) = statfs::fstatfs(&file) {
        if let Some(fs) = kernel_fs(st.filesystem_type()) {
            return Err(ReadError::KernelFs {
                path: path.to_owned(),
                fs,
            });
        }
    }
    let too_large = || ReadError::TooLarge {
        path: path.to_owned(),
        limit: MAX_FILE_BYTES,
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ReadError::Read {
            path: path.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|_| ReadError::NotUtf8 {
        path: path.to_owned(),
    })
}

fn open_flags() -> OpenOptions {
    let mut o = OpenOptions::new();
    // std adds O_CLOEXEC.
    o.read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    o
}

/// Opens `path`, which must resolve inside `dir`.
fn open_beneath(path: &Path, dir: &Path) -> Result<File, ReadError> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let open_err = |p: &Path| {
        let p = p.to_owned();
        move |source| ReadError::Open { path: p, source }
    };
    let dir_c = dir.canonicalize().map_err(open_err(dir))?;
    let target = path.canonicalize().map_err(open_err(path))?;
    let Ok(rel) = target.strip_prefix(&dir_c) else {
        return Err(ReadError::Outside {
            path: path.to_owned(),
            target,
            dir: dir_c,
        });
    };
    if rel.as_os_str().is_empty() {
        return Err(ReadError::NotRegular {
            path: path.to_owned(),
            kind: "directory",
        });
    }
    let dirfd = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(&dir_c)
        .map_err(open_err(&dir_c))?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    match openat2(&dirfd, rel, how) {
        Ok(fd) => Ok(File::from(fd)),
        // Kernels before 5.6: the canonical path, refusing a symlink in its last component.
        Err(Errno::ENOSYS) => open_flags()
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_NOFOLLOW)
            .open(&target)
            .map_err(open_err(path)),
        Err(Errno::ELOOP | Errno::EXDEV) => Err(ReadError::Raced {
            path: path.to_owned(),
        }),
        Err(e) => Err(ReadError::Open {
            path: path.to_owned(),
            source: e.into(),
        }),
    }
}

/// Kernel file systems whose files are not configuration: their "regular files" may block,
/// never end, or have side effects when read.
fn kernel_fs(t: FsType) -> Option<&'static str> {
    [
        (statfs::PROC_SUPER_MAGIC, "proc"),
        (statfs::SYSFS_MAGIC, "sysfs"),
        (statfs::DEBUGFS_MAGIC, "debugfs"),
        (statfs::TRACEFS_MAGIC, "tracefs"),
        (statfs::SECURITYFS_MAGIC, "securityfs"),
        (statfs::SELINUX_MAGIC, "selinuxfs"),
        (statfs::CGROUP_SUPER_MAGIC, "cgroup"),
        (statfs::CGROUP2_SUPER_MAGIC, "cgroup2"),
        (statfs::BPF_FS_MAGIC, "bpf"),
        (statfs::DEVPTS_SUPER_MAGIC, "devpts"),
        (statfs::NSFS_MAGIC, "nsfs"),
    ]
    .into_iter()
    .find(|(m, _)| *m == t)
    .map(|(_, n)| n)
}
