//! Reading the fleet: one consistent snapshot ([`Store::snapshot`]), and a task that follows
//! every change ([`watch`]).
use std::{sync::Arc, time::Duration};

use etcd_client::{EventType, GetOptions, WatchOptions};
use futures::FutureExt as _;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{
    view::{FleetView, Kv, Raw},
    Conn, Error, EtcdConfig,
};

/// A connection to the fleet store.
#[derive(Clone)]
pub struct Store {
    pub(crate) conn: Conn,
}

impl Store {
    pub async fn connect(c: &EtcdConfig) -> Result<Store, Error> {
        Ok(Store {
            conn: Conn::connect(c).await?,
        })
    }

    /// Every key under the root, at one revision.
    pub(crate) async fn raw(&self) -> Result<Raw, Error> {
        let c = &self.conn;
        let root = c.keys.root().to_owned();
        let mut kv = c.client.kv_client();
        let resp = c
            .call(
                || format!("get {root}*"),
                kv.get(root.clone(), Some(GetOptions::new().with_prefix())),
            )
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        let mut kvs = std::collections::BTreeMap::new();
        for item in resp.kvs() {
            let key = item
                .key_str()
                .map_err(|e| c.corrupt(&String::from_utf8_lossy(item.key()), e.to_string()))?;
            kvs.insert(key.to_owned(), Kv::from(item));
        }
        Ok(Raw { revision, kvs })
    }

    /// The fleet at the current revision.
    pub async fn snapshot(&self) -> Result<FleetView, Error> {
        Ok(FleetView::decode(&self.conn.keys, &self.raw().await?))
    }

    /// Compacts etcd's history up to `revision` (tests, and operators' tooling).
    pub async fn compact(&self, revision: i64) -> Result<(), Error> {
        let mut kv = self.conn.client.kv_client();
        self.conn
            .call(|| format!("compact {revision}"), kv.compact(revision, None))
            .await
            .map(|_| ())
    }
}

/// What [`watch`] reports.
#[derive(Clone, Debug)]
pub enum FleetEvent {
    /// The fleet at a new revision (after every batch of changes; the first after a start or
    /// a reconnection is a fresh snapshot).
    View(Arc<FleetView>),
    /// etcd cannot be reached (sent once per outage): keep forwarding as last known.
    Disconnected(String),
}

/// Backoff between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Follows the fleet forever: a snapshot, then a watch from the revision after it; a new full
/// [`FleetView`] after each batch of events (events that arrive together are coalesced into
/// one view). On a compaction of the revision watched from, or a lost watch, it resyncs from a
/// fresh snapshot; when etcd cannot be reached it sends [`FleetEvent::Disconnected`] once and
/// reconnects with a bounded backoff. Ends when `tx` is closed.
pub fn watch(c: EtcdConfig, tx: mpsc::Sender<FleetEvent>) -> tokio::task::JoinHandle<()> {
    watch_behind(c, tx, 0)
}

/// [`watch`], with the first watch started `behind` revisions before the first snapshot's
/// (its events are applied again, which changes nothing). Tests use it to meet a compacted
/// revision, which otherwise happens only when a compaction lands between the snapshot and
/// the start of the watch.
#[doc(hidden)]
pub fn watch_behind(
    c: EtcdConfig,
    tx: mpsc::Sender<FleetEvent>,
    mut behind: i64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = BACKOFF_MIN;
        let mut connected = true; // until told otherwise: the first failure is reported
        loop {
            if tx.is_closed() {
                return;
            }
            let why = match follow(
                &c,
                &tx,
                &mut connected,
                &mut backoff,
                std::mem::take(&mut behind),
            )
            .await
            {
                Follow::Closed => return,
                Follow::Resync(why) => {
                    // etcd answered (a compaction, a cancelled watch): snapshot again now.
                    info!("fleet watch: {why}; resyncing from a fresh snapshot");
                    continue;
                }
                Follow::Lost(why) => why,
            };
            if connected {
                warn!(error = %why, "fleet store unreachable; forwarding continues as last known");
                connected = false;
                if tx.send(FleetEvent::Disconnected(why)).await.is_err() {
                    return;
                }
            } else {
                debug!(error = %why, "fleet store still unreachable");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    })
}

enum Follow {
    Closed,
    /// etcd is there but the watch cannot go on from where it is.
    Resync(String),
    /// etcd cannot be reached.
    Lost(String),
}

async fn follow(
    c: &EtcdConfig,
    tx: &mpsc::Sender<FleetEvent>,
    connected: &mut bool,
    backoff: &mut Duration,
    behind: i64,
) -> Follow {
    let store = match Store::connect(c).await {
        Ok(s) => s,
        Err(e) => return Follow::Lost(e.to_string()),
    };
    let conn = &store.conn;
    let mut raw = match store.raw().await {
        Ok(r) => r,
        Err(e) => return Follow::Lost(e.to_string()),
    };
    let root = conn.keys.root().to_owned();
    let mut wc = conn.client.watch_client();
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision((raw.revision + 1 - behind).max(1))
        .with_progress_notify();
    let mut stream = match conn
        .call(
            || format!("watch {root}*"),
            wc.watch(root.clone(), Some(opts)),
        )
        .await
    {
        Ok(s) => s,
        Err(e) => return Follow::Lost(e.to_string()),
    };
    if !*connected {
        info!(revision = raw.revision, "fleet store reachable again");
    }
    *connected = true;
    *backoff = BACKOFF_MIN;
    if tx
        .send(FleetEvent::View(Arc::new(FleetView::decode(
            &conn.keys, &raw,
        ))))
        .await
        .is_err()
    {
        return Follow::Closed;
    }
    loop {
        // Wait for a message, then take every other one already there: one view per batch.
        let first = tokio::select! {
            m = stream.message() => m,
            _ = tx.closed() => return Follow::Closed,
        };
        let mut batch = vec![first];
        while let Some(m) = stream.message().now_or_never() {
            let end = !matches!(m, Ok(Some(_)));
            batch.push(m);
            if end {
                break;
            }
        }
        let mut changed = false;
        for m in batch {
            let resp = match m {
                Ok(Some(r)) => r,
                Ok(None) => {
                    return Follow::Lost(format!(
                        "etcd {}: watch {root}*: the stream ended",
                        conn.endpoints()
                    ))
                }
                Err(e) => {
                    return Follow::Lost(
                        Error::Etcd {
                            op: format!("watch {root}*"),
                            endpoints: conn.endpoints(),
                            source: e,
                        }
                        .to_string(),
                    )
                }
            };
            if resp.compact_revision() > 0 {
                return Follow::Resync(format!(
                    "the revision watched from was compacted (etcd keeps revisions from {})",
                    resp.compact_revision()
                ));
            }
            if resp.canceled() {
                return Follow::Resync(format!("watch cancelled: {}", resp.cancel_reason()));
            }
            if let Some(h) = resp.header() {
                raw.revision = raw.revision.max(h.revision());
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let Ok(key) = kv.key_str() else { continue };
                changed = true;
                raw.revision = raw.revision.max(kv.mod_revision());
                match ev.event_type() {
                    EventType::Put => {
                        raw.kvs.insert(key.to_owned(), Kv::from(kv));
                    }
                    EventType::Delete => {
                        raw.kvs.remove(key);
                    }
                }
            }
        }
        if changed
            && tx
                .send(FleetEvent::View(Arc::new(FleetView::decode(
                    &conn.keys, &raw,
                ))))
                .await
                .is_err()
        {
            return Follow::Closed;
        }
    }
}
