//! Cluster mode's fleet store (SPEC §7): etcd, v3 API.
//!
//! Everything peerd keeps in etcd lives under `<key_prefix>v1/` ([`Keys`]; the layout, value
//! formats and writers are documented in `docs/cluster.md`):
//!
//! - [`apply`] / [`plan`] (`peerd apply`, `peerd plan FILE...`): VPC declarations, their
//!   fleet-wide VNIs and the peering lifecycle records, validated with the same rules and
//!   messages as `peerd check` and written in one transaction guarded by the revision read;
//! - [`Store`] and [`watch`]: a consistent [`FleetView`] of one revision, and a task that keeps
//!   sending a fresh one after every change (resyncing after a compaction or an outage);
//! - [`Membership`]: this host's `hosts/` and `endpoints/` keys, under a lease kept alive in
//!   the background and reused across restarts (its id is kept in `state_dir`).
//!
//! Every etcd call is bounded by a timeout ([`EtcdConfig::timeout`]): when etcd is down,
//! calls fail instead of hanging, and the callers carry on with what they last knew.
mod apply;
pub mod cli;
mod keys;
mod member;
mod store;
mod view;

use std::{future::Future, path::PathBuf, time::Duration};

pub use apply::{apply, plan, prepare, ApplyError, ApplyReport, Prepared};
pub use keys::Keys;
pub use member::Membership;
pub use store::{watch, watch_behind, FleetEvent, Store};
pub use view::{Endpoint, FleetHost, FleetPeering, FleetView, FleetVpc};

use crate::config::{ClusterConfig, Tls};

/// Where the fleet store is: what `peerd apply` needs (from a host file's `[cluster]`, or from
/// `--etcd` and `--key-prefix`) and what every host uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// Ends with `/`; the keys are under `<key_prefix>v1/`.
    pub key_prefix: String,
    pub tls: Option<Tls>,
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Bound on every request (a get, a transaction, a lease call).
    pub timeout: Duration,
}

impl EtcdConfig {
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    /// Endpoints and a key prefix, with the default timeouts and no TLS.
    pub fn new(endpoints: Vec<String>, key_prefix: impl Into<String>) -> Self {
        Self {
            endpoints,
            key_prefix: key_prefix.into(),
            tls: None,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }

    pub fn keys(&self) -> Keys {
        Keys::new(&self.key_prefix)
    }

    /// The endpoints, for messages.
    pub fn endpoint_list(&self) -> String {
        self.endpoints.join(",")
    }
}

impl From<&ClusterConfig> for EtcdConfig {
    fn from(c: &ClusterConfig) -> Self {
        Self {
            tls: c.tls.clone(),
            ..Self::new(c.etcd.clone(), c.key_prefix.clone())
        }
    }
}

/// A key prefix as `[cluster] key_prefix` accepts it: starts and ends with `/`, at most 128
/// printable characters.
pub fn valid_key_prefix(p: &str) -> bool {
    p.starts_with('/')
        && p.ends_with('/')
        && p.len() <= 128
        && p.chars().all(|c| c.is_ascii_graphic())
}

/// What went wrong talking to etcd, with the operation, the key and the endpoints.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("etcd {endpoints}: {op}: {source}")]
    Etcd {
        op: String,
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd {endpoints}: {op}: no answer within {timeout:?}")]
    Timeout {
        op: String,
        endpoints: String,
        timeout: Duration,
    },
    #[error("{path}: {op}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd {endpoints}: {key}: {message}")]
    Corrupt {
        endpoints: String,
        key: String,
        message: String,
    },
    #[error("{0}")]
    Config(String),
    #[error("host {host}: {message}")]
    Registration { host: String, message: String },
    #[error("etcd {endpoints}: lease {lease:x} expired or was revoked")]
    LeaseLost { lease: i64, endpoints: String },
}

impl Error {
    /// The error says etcd could not be reached (rather than that it refused something).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::Registration { .. } => true,
            Error::Etcd { source, .. } => matches!(
                source,
                etcd_client::Error::TransportError(_)
                    | etcd_client::Error::IoError(_)
                    | etcd_client::Error::GRpcStatus(_)
                    | etcd_client::Error::WatchError(_)
                    | etcd_client::Error::LeaseKeepAliveError(_)
            ),
            _ => false,
        }
    }
}

/// A connected client and the settings it was made with. Cheap to clone (the connection is
/// shared).
#[derive(Clone)]
pub(crate) struct Conn {
    pub client: etcd_client::Client,
    pub cfg: EtcdConfig,
    pub keys: Keys,
}

impl Conn {
    /// Connects (the connection itself is made lazily by the first request, which is bounded
    /// like every other).
    pub async fn connect(cfg: &EtcdConfig) -> Result<Conn, Error> {
        if !valid_key_prefix(&cfg.key_prefix) {
            return Err(Error::Config(format!(
                "key prefix {:?} must start and end with / (at most 128 printable characters)",
                cfg.key_prefix
            )));
        }
        if cfg.endpoints.is_empty() {
            return Err(Error::Config("no etcd endpoint given".into()));
        }
        let mut opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(cfg.connect_timeout)
            .with_timeout(cfg.timeout)
            // A peer that vanishes without a reset (a partition) is noticed by HTTP/2 pings.
            .with_keep_alive(Duration::from_secs(5), cfg.timeout)
            .with_keep_alive_while_idle(true);
        if let Some(tls) = &cfg.tls {
            opts = opts.with_tls(tls_options(tls)?);
        }
        let endpoints = cfg.endpoint_list();
        let client = bounded(
            &endpoints,
            "connect",
            cfg.connect_timeout,
            etcd_client::Client::connect(cfg.endpoints.clone(), Some(opts)),
        )
        .await?;
        Ok(Conn {
            client,
            keys: cfg.keys(),
            cfg: cfg.clone(),
        })
    }

    pub fn endpoints(&self) -> String {
        self.cfg.endpoint_list()
    }

    /// Runs one request with the request timeout; `op` names it in errors.
    pub async fn call<T>(
        &self,
        op: impl FnOnce() -> String,
        f: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.cfg.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(Error::Etcd {
                op: op(),
                endpoints: self.endpoints(),
                source,
            }),
            Err(_) => Err(Error::Timeout {
                op: op(),
                endpoints: self.endpoints(),
                timeout: self.cfg.timeout,
            }),
        }
    }

    pub fn corrupt(&self, key: &str, message: impl Into<String>) -> Error {
        Error::Corrupt {
            endpoints: self.endpoints(),
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

async fn bounded<T>(
    endpoints: &str,
    op: &str,
    limit: Duration,
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(Error::Etcd {
            op: op.to_owned(),
            endpoints: endpoints.to_owned(),
            source,
        }),
        Err(_) => Err(Error::Timeout {
            op: op.to_owned(),
            endpoints: endpoints.to_owned(),
            timeout: limit,
        }),
    }
}

fn tls_options(tls: &Tls) -> Result<etcd_client::TlsOptions, Error> {
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|source| Error::Io {
            op: "reading a [cluster.tls] file",
            path: p.clone(),
            source,
        })
    };
    let mut o = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)?));
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        o = o.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(o)
}
