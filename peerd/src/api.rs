//! The daemon's answers to its clients (control socket and metrics), from the snapshot the
//! owner task publishes and the live counters; requests that change something (reload) or
//! need the reconcilers (plan) are messages to the owner task.
use std::sync::Arc;

use futures::{future::BoxFuture, FutureExt as _};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    control::{Handler, Request},
    daemon::Msg,
    datapath::Counters,
    status::{self, Snapshot},
};

#[derive(Clone)]
pub struct Api {
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub counters: Option<Arc<Counters>>,
    pub daemon: mpsc::Sender<Msg>,
}

impl Api {
    /// The status JSON: the latest snapshot and the counters read now (off the async threads).
    pub async fn status(&self) -> Result<serde_json::Value, String> {
        let snap = self.snapshot.borrow().clone();
        let counters = self.counters.clone();
        tokio::task::spawn_blocking(move || {
            serde_json::to_value(status::status(&snap, counters.as_deref()))
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// The metrics text.
    pub async fn metrics(&self) -> String {
        let snap = self.snapshot.borrow().clone();
        let counters = self.counters.clone();
        tokio::task::spawn_blocking(move || crate::metrics::render(&snap, counters.as_deref()))
            .await
            .unwrap_or_default()
    }

    async fn ask<T>(&self, msg: impl FnOnce(oneshot::Sender<T>) -> Msg) -> Result<T, String> {
        let (tx, rx) = oneshot::channel();
        self.daemon
            .send(msg(tx))
            .await
            .map_err(|_| "the daemon is stopping".to_owned())?;
        rx.await.map_err(|_| "the daemon is stopping".to_owned())
    }
}

impl Handler for Api {
    fn handle(&self, req: Request) -> BoxFuture<'static, Result<serde_json::Value, String>> {
        let api = self.clone();
        async move {
            match req {
                Request::Status => api.status().await,
                Request::Reload => {
                    api.ask(|tx| Msg::Reload(Some(tx))).await??;
                    Ok(serde_json::Value::Null)
                }
                Request::Plan { config } => {
                    let lines = api.ask(|tx| Msg::Plan(config, tx)).await??;
                    serde_json::to_value(lines).map_err(|e| e.to_string())
                }
                Request::Attach { attachment, check } => {
                    let op = match check {
                        false => crate::attach::Op::Attach(attachment),
                        true => crate::attach::Op::Check(attachment),
                    };
                    api.ask(|tx| Msg::Attach(op, tx)).await?
                }
                Request::Detach { vpc, workload, id } => {
                    let op = crate::attach::Op::Detach { vpc, workload, id };
                    api.ask(|tx| Msg::Attach(op, tx)).await?
                }
                Request::Explain { from, src, dst } => {
                    let snap = api.snapshot.borrow().clone();
                    let e = status::explain(&snap, &from, src, dst)?;
                    serde_json::to_value(e).map_err(|e| e.to_string())
                }
            }
        }
        .boxed()
    }
}
