//! `peerd apply` and cluster-mode `peerd plan` on the command line: where etcd is, and what
//! is printed.
use std::path::{Path, PathBuf};

use super::{valid_key_prefix, EtcdConfig};
use crate::{
    config::{ClusterConfig, Config, DaemonConfig},
    state,
};

/// Where the fleet store is and which quotas apply.
pub struct Target {
    pub etcd: EtcdConfig,
    pub quotas: DaemonConfig,
}

/// With `--etcd` (one or more URLs): those endpoints, `--key-prefix` (default `/peerd/`) and
/// the default quotas. Otherwise the host file `config`: its `[cluster]` and `[daemon]`.
pub fn target(config: &Path, etcd: &[String], key_prefix: Option<&str>) -> Result<Target, String> {
    let (mut e, quotas) = if etcd.is_empty() {
        let cfg = Config::load(config).map_err(|e| e.to_string())?;
        let Some(c) = &cfg.daemon.cluster else {
            return Err(format!(
                "{} has no [cluster] section: give the host file of a cluster host with --config, or etcd with --etcd URL",
                config.display()
            ));
        };
        (EtcdConfig::from(c), cfg.daemon.clone())
    } else {
        for u in etcd {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(format!("--etcd {u:?} is not an http:// or https:// URL"));
            }
        }
        (
            EtcdConfig::new(etcd.to_vec(), ClusterConfig::DEFAULT_KEY_PREFIX),
            DaemonConfig::default(),
        )
    };
    if let Some(p) = key_prefix {
        if !valid_key_prefix(p) {
            return Err(format!(
                "--key-prefix {p:?} must start and end with / (at most 128 printable characters)"
            ));
        }
        e.key_prefix = p.to_owned();
    }
    Ok(Target { etcd: e, quotas })
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting runtime: {e}"))
}

fn now() -> u64 {
    state::unix(std::time::SystemTime::now())
}

/// `peerd apply FILE... [--delete VPC]...`: prints one line per change, then the revision.
pub fn apply_command(t: &Target, files: &[PathBuf], delete: &[String]) -> Result<(), String> {
    let r = runtime()?
        .block_on(super::apply(&t.etcd, files, delete, &t.quotas, now()))
        .map_err(|e| e.to_string())?;
    for l in &r.lines {
        println!("{l}");
    }
    if r.written {
        println!("applied at etcd revision {}", r.revision);
    } else {
        println!("no changes (etcd revision {})", r.revision);
    }
    Ok(())
}

/// `peerd plan FILE... [--delete VPC]...` in cluster mode: what apply would change.
pub fn plan_command(t: &Target, files: &[PathBuf], delete: &[String]) -> Result<(), String> {
    let lines = runtime()?
        .block_on(super::plan(&t.etcd, files, delete, &t.quotas, now()))
        .map_err(|e| e.to_string())?;
    if lines.is_empty() {
        println!("no changes");
    }
    for l in lines {
        println!("{l}");
    }
    Ok(())
}
