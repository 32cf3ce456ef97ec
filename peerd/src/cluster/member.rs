//! This host's membership of the fleet: `hosts/<host>` and its `endpoints/<vpc>/<addr>/<host>`
//! keys, all under one lease that a background task keeps alive.
//!
//! The lease id is kept in `state_dir/lease`: a restart within the TTL finds it still alive
//! (etcd's TimeToLive > 0) and reuses it, so the host's keys never disappear and other hosts
//! keep forwarding to it. If the lease is lost (etcd unreachable for longer than the TTL, or
//! revoked), the task grants a new one when etcd is back and puts the host and every endpoint
//! again. The endpoint sets are kept in memory for that: [`Membership::set_endpoints`]
//! records the wanted set even when etcd is down, and it is written on reconnection.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    net::IpAddr,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd_client::{GetOptions, LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    keys::Key,
    view::{FleetHost, HostValue},
    Conn, Error, EtcdConfig,
};
use crate::config::ClusterConfig;

/// File in `state_dir` holding the lease id (decimal).
pub const LEASE_FILE: &str = "lease";

/// etcd's default `--max-txn-ops`: larger updates are split into several transactions.
const MAX_TXN_OPS: usize = 128;

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Registration state, as the task last knew it.
#[derive(Clone, Debug, Default)]
struct Status {
    connected: bool,
    /// Attempts made so far (join waits for the first).
    attempts: u64,
    error: Option<String>,
}

struct Inner {
    conn: Conn,
    ttl: Duration,
    state_dir: PathBuf,
    host: Mutex<FleetHost>,
    /// Wanted endpoint sets, by VPC.
    endpoints: Mutex<BTreeMap<String, BTreeSet<IpAddr>>>,
    /// The lease in use (0: none yet).
    lease: Mutex<i64>,
    /// Serializes writes of this host's keys (a set_endpoints and a re-registration).
    writing: tokio::sync::Mutex<()>,
    /// What a failed write left behind: retried by the keep-alive task.
    dirty: Mutex<Dirty>,
    status: watch::Sender<Status>,
}

/// This host in the fleet. Dropping it stops the keep-alive (the keys stay until the lease
/// expires, so a restart within the TTL keeps them); [`Membership::leave`] removes them now.
pub struct Membership {
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Membership {
    /// Registers `host` (reusing the lease kept in `state_dir` if it is still alive) and keeps
    /// it registered. Fails if the first registration fails (etcd unreachable, bad TLS files):
    /// use [`Membership::start`] to keep trying in the background instead.
    pub async fn join(
        c: &ClusterConfig,
        state_dir: &Path,
        host: FleetHost,
    ) -> Result<Membership, Error> {
        let m = Self::start(c, state_dir, host).await?;
        let mut rx = m.inner.status.subscribe();
        let st = rx
            .wait_for(|s| s.attempts > 0)
            .await
            .map(|s| s.clone())
            .unwrap_or_default();
        if st.connected {
            Ok(m)
        } else {
            Err(Error::Registration {
                host: c.host.clone(),
                message: st
                    .error
                    .unwrap_or_else(|| "registration did not complete".into()),
            })
        }
    }

    /// Starts the membership task without waiting: it registers as soon as etcd answers and
    /// keeps trying with a bounded backoff. Fails only on a configuration that cannot work.
    pub async fn start(
        c: &ClusterConfig,
        state_dir: &Path,
        host: FleetHost,
    ) -> Result<Membership, Error> {
        let conn = Conn::connect(&EtcdConfig::from(c)).await?;
        let lease = read_lease(state_dir);
        let (status, _) = watch::channel(Status::default());
        let inner = Arc::new(Inner {
            conn,
            ttl: c.lease_ttl,
            state_dir: state_dir.to_owned(),
            host: Mutex::new(host),
            endpoints: Mutex::new(BTreeMap::new()),
            lease: Mutex::new(lease.unwrap_or(0)),
            writing: tokio::sync::Mutex::new(()),
            dirty: Mutex::new(Dirty::default()),
            status,
        });
        let task = tokio::spawn(run(inner.clone()));
        Ok(Membership { inner, task })
    }

    /// Whether the host is registered and its lease kept alive right now.
    pub fn connected(&self) -> bool {
        self.inner.status.borrow().connected
    }

    /// The last registration or keep-alive error, if not connected.
    pub fn last_error(&self) -> Option<String> {
        self.inner.status.borrow().error.clone()
    }

    /// The lease id in use (0 before the first registration).
    pub fn lease(&self) -> i64 {
        *lock(&self.inner.lease)
    }

    /// Makes this host's endpoint keys of `vpc` exactly `addrs` (puts the missing ones,
    /// deletes the others) in one transaction (several past etcd's 128 operations). The set is
    /// remembered: when it cannot be written now (etcd unreachable, not registered yet), the
    /// error says so and the background task writes it as soon as it can.
    pub async fn set_endpoints(&self, vpc: &str, addrs: &BTreeSet<IpAddr>) -> Result<(), Error> {
        lock(&self.inner.endpoints).insert(vpc.to_owned(), addrs.clone());
        let _w = self.inner.writing.lock().await;
        let lease = *lock(&self.inner.lease);
        // Not registered: the next registration writes every set.
        if lease == 0 || !self.connected() {
            return Err(self.not_registered());
        }
        let r = sync_endpoints(&self.inner, vpc, lease).await;
        let mut d = lock(&self.inner.dirty);
        if r.is_ok() {
            d.vpcs.remove(vpc);
        } else {
            d.vpcs.insert(vpc.to_owned());
        }
        r
    }

    /// Updates the host's own key (its VPCs changed, an upgrade); written later like
    /// [`Membership::set_endpoints`] when it cannot be now. The caller empties the endpoint
    /// sets of VPCs it no longer places.
    pub async fn update_host(&self, host: FleetHost) -> Result<(), Error> {
        *lock(&self.inner.host) = host;
        let _w = self.inner.writing.lock().await;
        let lease = *lock(&self.inner.lease);
        if lease == 0 || !self.connected() {
            return Err(self.not_registered());
        }
        let r = put_host(&self.inner, lease).await;
        lock(&self.inner.dirty).host = r.is_err();
        r
    }

    /// Leaves the fleet now: revokes the lease (its keys go at once) and forgets it.
    pub async fn leave(self) -> Result<(), Error> {
        self.task.abort();
        let lease = *lock(&self.inner.lease);
        if lease != 0 {
            let c = &self.inner.conn;
            let mut l = c.client.lease_client();
            c.call(|| format!("revoke lease {lease:x}"), l.revoke(lease))
                .await?;
        }
        let path = self.inner.state_dir.join(LEASE_FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Io {
                op: "removing the lease file",
                path,
                source,
            }),
        }
    }

    fn not_registered(&self) -> Error {
        Error::Registration {
            host: lock(&self.inner.host).name.clone(),
            message: format!(
                "not registered ({}); the endpoints are written when etcd is back",
                self.last_error().unwrap_or_else(|| "not yet".into())
            ),
        }
    }
}

/// Writes that failed while registered, to retry.
#[derive(Default)]
struct Dirty {
    host: bool,
    vpcs: BTreeSet<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_lease(state_dir: &Path) -> Option<i64> {
    std::fs::read_to_string(state_dir.join(LEASE_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&id: &i64| id != 0)
}

/// Writes `state_dir/lease` atomically.
fn save_lease(state_dir: &Path, id: i64) -> Result<(), Error> {
    let path = state_dir.join(LEASE_FILE);
    let io = |op, source| Error::Io {
        op,
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(|e| io("creating the state directory", e))?;
    let tmp = state_dir.join(format!(".{LEASE_FILE}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("writing the lease file", e))?;
    f.write_all(format!("{id}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| io("writing the lease file", e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io("renaming the lease file", e))
}

/// Registers, keeps alive, and registers again after any loss, forever.
async fn run(inner: Arc<Inner>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let result = {
            // The status changes before writers may go: a set_endpoints waiting for this
            // registration then writes its set itself.
            let _w = inner.writing.lock().await;
            let result = register(&inner).await;
            if result.is_ok() {
                *lock(&inner.dirty) = Dirty::default();
            }
            inner.status.send_modify(|s| {
                s.attempts += 1;
                s.connected = result.is_ok();
                s.error = result.as_ref().err().map(ToString::to_string);
            });
            result
        };
        match result {
            Ok(lease) => {
                info!(lease = format!("{lease:x}"), "registered in the fleet");
                backoff = BACKOFF_MIN;
                let why = keep_alive(&inner, lease).await;
                warn!(error = %why, "fleet membership lost; registering again when etcd answers");
                inner.status.send_modify(|s| {
                    s.connected = false;
                    s.error = Some(why.to_string());
                });
            }
            Err(e) => warn!(error = %e, "cannot register in the fleet; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Makes sure a live lease exists (the known one if etcd says it is alive with the wanted TTL,
/// else a new one, saved to `state_dir`), then puts the host key and brings every endpoint
/// set up to date. Endpoint keys of this host in VPCs it no longer places are deleted. The
/// caller holds `writing`.
async fn register(inner: &Inner) -> Result<i64, Error> {
    let c = &inner.conn;
    let known = *lock(&inner.lease);
    let ttl = inner.ttl.as_secs().max(1) as i64;
    let mut lease = 0;
    if known != 0 {
        let mut l = c.client.lease_client();
        let r = c
            .call(
                || format!("time to live of lease {known:x}"),
                l.time_to_live(known, Some(LeaseTimeToLiveOptions::new())),
            )
            .await?;
        if r.ttl() > 0 && r.granted_ttl() == ttl {
            lease = known;
        }
    }
    if lease == 0 {
        let mut l = c.client.lease_client();
        let r = c
            .call(|| format!("grant a lease of {ttl}s"), l.grant(ttl, None))
            .await?;
        lease = r.id();
        save_lease(&inner.state_dir, lease)?;
        *lock(&inner.lease) = lease;
    }
    put_host(inner, lease).await?;
    // Endpoints: every VPC with a wanted set, and those of VPCs not placed here any more.
    let me = lock(&inner.host).clone();
    let resp = keys_under(c, format!("{}endpoints/", c.keys.root())).await?;
    let mut stale = Vec::new();
    for item in resp.kvs() {
        if let Ok(key) = item.key_str() {
            if let Key::Endpoint { vpc, host, .. } = c.keys.parse(key) {
                if host == me.name && !me.vpcs.contains(&vpc) {
                    stale.push(key.to_owned());
                }
            }
        }
    }
    write_ops(
        c,
        stale.into_iter().map(|k| TxnOp::delete(k, None)).collect(),
        "delete endpoints of VPCs not placed here",
    )
    .await?;
    let vpcs: Vec<String> = lock(&inner.endpoints).keys().cloned().collect();
    for vpc in vpcs {
        sync_endpoints(inner, &vpc, lease).await?;
    }
    Ok(lease)
}

async fn put_host(inner: &Inner, lease: i64) -> Result<(), Error> {
    let c = &inner.conn;
    let host = lock(&inner.host).clone();
    let key = c.keys.host(&host.name);
    let value = serde_json::to_string(&HostValue::from(&host)).expect("a host serializes");
    let mut kv = c.client.kv_client();
    c.call(
        || format!("put {key}"),
        kv.put(
            key.clone(),
            value,
            Some(PutOptions::new().with_lease(lease)),
        ),
    )
    .await
    .map(|_| ())
}

/// Makes this host's endpoint keys of `vpc` the wanted set: puts those missing or under
/// another lease, deletes the others.
async fn sync_endpoints(inner: &Inner, vpc: &str, lease: i64) -> Result<(), Error> {
    let c = &inner.conn;
    let me = lock(&inner.host).name.clone();
    let want = lock(&inner.endpoints).get(vpc).cloned().unwrap_or_default();
    let resp = keys_under(c, c.keys.endpoints_of(vpc)).await?;
    let mut have: BTreeMap<IpAddr, i64> = BTreeMap::new();
    let mut ops = Vec::new();
    for item in resp.kvs() {
        let Ok(key) = item.key_str() else { continue };
        if let Key::Endpoint { vpc: v, addr, host } = c.keys.parse(key) {
            if v == vpc && host == me {
                if want.contains(&addr) {
                    have.insert(addr, item.lease());
                } else {
                    ops.push(TxnOp::delete(key, None));
                }
            }
        }
    }
    for a in &want {
        if have.get(a) != Some(&lease) {
            ops.push(TxnOp::put(
                c.keys.endpoint(vpc, *a, &me),
                "",
                Some(PutOptions::new().with_lease(lease)),
            ));
        }
    }
    write_ops(c, ops, &format!("set endpoints of {vpc} on {me}")).await
}

/// Runs `ops` in transactions of at most [`MAX_TXN_OPS`].
/// The keys (without values) under `prefix`.
async fn keys_under(c: &Conn, prefix: String) -> Result<etcd_client::GetResponse, Error> {
    let mut kv = c.client.kv_client();
    c.call(
        || format!("get {prefix}*"),
        kv.get(
            prefix.clone(),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        ),
    )
    .await
}

async fn write_ops(c: &Conn, ops: Vec<TxnOp>, what: &str) -> Result<(), Error> {
    let n = ops.len();
    let mut ops = ops.into_iter().peekable();
    while ops.peek().is_some() {
        let chunk: Vec<TxnOp> = ops.by_ref().take(MAX_TXN_OPS).collect();
        let mut kv = c.client.kv_client();
        c.call(
            || format!("{what} ({n} operations)"),
            kv.txn(Txn::new().and_then(chunk)),
        )
        .await?;
    }
    Ok(())
}

/// Keeps `lease` alive until that fails; returns why.
async fn keep_alive(inner: &Inner, lease: i64) -> Error {
    let c = &inner.conn;
    let lost = || {
        // Expired (etcd was away longer than the TTL) or revoked: a new lease is needed.
        *lock(&inner.lease) = 0;
        Error::LeaseLost {
            lease,
            endpoints: c.endpoints(),
        }
    };
    let mut l = c.client.lease_client();
    let op = || format!("keep lease {lease:x} alive");
    // The first request and its answer are part of opening the stream.
    let (mut keeper, mut stream) = match c.call(op, l.keep_alive(lease)).await {
        Ok(v) => v,
        Err(Error::Etcd {
            source: etcd_client::Error::LeaseKeepAliveError(_),
            ..
        }) => return lost(),
        Err(e) => return e,
    };
    let every = (inner.ttl / 3).max(Duration::from_millis(300));
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = c.call(op, keeper.keep_alive()).await {
            return e;
        }
        match c.call(op, stream.message()).await {
            Ok(Some(r)) if r.ttl() > 0 => retry_dirty(inner, lease).await,
            Ok(Some(_)) => return lost(),
            Ok(None) => {
                return Error::Registration {
                    host: lock(&inner.host).name.clone(),
                    message: "the keep-alive stream ended".into(),
                }
            }
            Err(e) => return e,
        }
    }
}

/// Writes again what failed while registered (a timeout on a live connection).
async fn retry_dirty(inner: &Inner, lease: i64) {
    let (host, vpcs) = {
        let d = lock(&inner.dirty);
        if !d.host && d.vpcs.is_empty() {
            return;
        }
        (d.host, d.vpcs.clone())
    };
    let _w = inner.writing.lock().await;
    if host {
        match put_host(inner, lease).await {
            Ok(()) => lock(&inner.dirty).host = false,
            Err(e) => warn!(error = %e, "updating this host's key failed; will retry"),
        }
    }
    for vpc in vpcs {
        match sync_endpoints(inner, &vpc, lease).await {
            Ok(()) => {
                lock(&inner.dirty).vpcs.remove(&vpc);
            }
            Err(e) => warn!(error = %e, vpc, "publishing endpoints failed; will retry"),
        }
    }
}
