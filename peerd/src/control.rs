//! The control socket: one request line, one JSON answer, then the connection closes.
//! Requests: `status`, `reload`.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _},
    net::UnixListener,
    sync::mpsc,
};
use tracing::{debug, warn};

use crate::daemon::Shared;

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

/// Answer envelope.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub error: Option<String>,
    pub result: Option<serde_json::Value>,
}

/// The arguments of `peerd explain`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExplainRequest {
    pub from: String,
    pub src: std::net::IpAddr,
    pub dst: std::net::IpAddr,
}

/// Requests the daemon's loop must act on (they need the reconcile path).
#[derive(Debug)]
pub enum Command {
    Reload(tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// Sends one request and returns the result value.
pub fn request(socket: &Path, line: &str) -> Result<serde_json::Value, Error> {
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
    s.write_all(format!("{line}\n").as_bytes()).map_err(io)?;
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

pub async fn serve(listener: UnixListener, daemon: Shared, commands: mpsc::Sender<Command>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "control socket accept");
                continue;
            }
        };
        let daemon = daemon.clone();
        let commands = commands.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut r = tokio::io::BufReader::new(r);
            if r.read_line(&mut line).await.is_err() {
                return;
            }
            let req = line.trim();
            debug!(request = req, "control request");
            let reply = match req {
                "status" => {
                    let d = daemon.clone();
                    match tokio::task::spawn_blocking(move || {
                        serde_json::to_value(d.lock().expect("daemon lock").status())
                    })
                    .await
                    {
                        Ok(Ok(v)) => Reply {
                            ok: true,
                            error: None,
                            result: Some(v),
                        },
                        Ok(Err(e)) => Reply {
                            ok: false,
                            error: Some(e.to_string()),
                            result: None,
                        },
                        Err(e) => Reply {
                            ok: false,
                            error: Some(e.to_string()),
                            result: None,
                        },
                    }
                }
                "reload" => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let _ = commands.send(Command::Reload(tx)).await;
                    match rx.await {
                        Ok(Ok(())) => Reply {
                            ok: true,
                            error: None,
                            result: None,
                        },
                        Ok(Err(e)) => Reply {
                            ok: false,
                            error: Some(e),
                            result: None,
                        },
                        Err(_) => Reply {
                            ok: false,
                            error: Some("daemon is stopping".into()),
                            result: None,
                        },
                    }
                }
                other if other == "plan" || other.starts_with("plan ") => {
                    let d = daemon.clone();
                    let path = other.strip_prefix("plan ").map(PathBuf::from);
                    match tokio::task::spawn_blocking(move || {
                        d.lock().expect("daemon lock").plan_reload(path.as_deref())
                    })
                    .await
                    {
                        Ok(Ok(lines)) => Reply {
                            ok: true,
                            error: None,
                            result: serde_json::to_value(lines).ok(),
                        },
                        Ok(Err(e)) => Reply {
                            ok: false,
                            error: Some(e.to_string()),
                            result: None,
                        },
                        Err(e) => Reply {
                            ok: false,
                            error: Some(e.to_string()),
                            result: None,
                        },
                    }
                }
                other if other.starts_with("explain ") => {
                    let q: Result<ExplainRequest, _> =
                        serde_json::from_str(&other["explain ".len()..]);
                    match q {
                        Ok(q) => {
                            let d = daemon.clone();
                            let r = tokio::task::spawn_blocking(move || {
                                d.lock()
                                    .expect("daemon lock")
                                    .explain(&q.from, q.src, q.dst)
                            })
                            .await
                            .map_err(|e| e.to_string())
                            .and_then(|r| r);
                            match r {
                                Ok(e) => Reply {
                                    ok: true,
                                    error: None,
                                    result: serde_json::to_value(e).ok(),
                                },
                                Err(e) => Reply {
                                    ok: false,
                                    error: Some(e),
                                    result: None,
                                },
                            }
                        }
                        Err(e) => Reply {
                            ok: false,
                            error: Some(format!("bad explain request: {e}")),
                            result: None,
                        },
                    }
                }
                other => Reply {
                    ok: false,
                    error: Some(format!("unknown request {other:?}")),
                    result: None,
                },
            };
            let mut out = serde_json::to_vec(&reply).expect("reply serializes");
            out.push(b'\n');
            let _ = w.write_all(&out).await;
        });
    }
}
