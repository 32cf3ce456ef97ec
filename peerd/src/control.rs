//! The control socket (a Unix stream socket): one JSON request per line, one JSON reply per
//! line, then the connection closes. Requests are a serde-tagged enum; the server answers
//! through a [`Handler`], so it knows nothing of the daemon behind it.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _},
    net::UnixListener,
};
use tracing::{debug, warn};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach peerd at {path}: {source} (is `peerd run` running?)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to peerd at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("peerd at {path} answered something unreadable: {source}")]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("peerd: {0}")]
    Daemon(String),
}

/// A request.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    Status,
    Reload,
    Plan {
        config: Option<PathBuf>,
    },
    Explain {
        from: String,
        src: IpAddr,
        dst: IpAddr,
    },
}

/// Answer envelope.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub error: Option<String>,
    pub result: Option<serde_json::Value>,
}

/// What answers requests.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request) -> BoxFuture<'static, Result<serde_json::Value, String>>;
}

/// Sends one request and returns the result value.
pub fn request(socket: &Path, req: &Request) -> Result<serde_json::Value, Error> {
    let mut s = UnixStream::connect(socket).map_err(|source| Error::Connect {
        path: socket.into(),
        source,
    })?;
    let io = |source| Error::Io {
        path: socket.into(),
        source,
    };
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(io)?;
    let mut line = serde_json::to_vec(req).expect("requests serialize");
    line.push(b'\n');
    s.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&s).read_line(&mut answer).map_err(io)?;
    let reply: Reply = serde_json::from_str(&answer).map_err(|source| Error::Decode {
        path: socket.into(),
        source,
    })?;
    if reply.ok {
        Ok(reply.result.unwrap_or(serde_json::Value::Null))
    } else {
        Err(Error::Daemon(reply.error.unwrap_or_default()))
    }
}

/// Is a daemon answering on `socket`?
pub fn daemon_alive(socket: &Path) -> bool {
    UnixStream::connect(socket).is_ok()
}

pub async fn serve(listener: UnixListener, handler: Arc<dyn Handler>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "control socket accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut r = tokio::io::BufReader::new(r);
            if r.read_line(&mut line).await.is_err() {
                return;
            }
            debug!(request = line.trim(), "control request");
            let reply = match serde_json::from_str::<Request>(line.trim()) {
                Ok(req) => match handler.handle(req).await {
                    Ok(v) => Reply {
                        ok: true,
                        error: None,
                        result: Some(v),
                    },
                    Err(e) => Reply {
                        ok: false,
                        error: Some(e),
                        result: None,
                    },
                },
                Err(e) => Reply {
                    ok: false,
                    error: Some(format!("bad request: {e}")),
                    result: None,
                },
            };
            let mut out = serde_json::to_vec(&reply).expect("reply serializes");
            out.push(b'\n');
            let _ = w.write_all(&out).await;
        });
    }
}
