//! The control socket: one JSON request line in, one JSON reply line out, then the connection
//! closes.
//!
//! The socket fails closed (issue "Fail closed", item 7):
//! - who: the peer's credentials (`SO_PEERCRED`) must be root, the daemon's own user, or carry
//!   the configured group as their gid; anyone else gets a refusal reply and the connection
//!   closes. The socket file is 0600, or 0660 and owned by that group when one is configured,
//!   so the file mode and the credential check say the same thing.
//! - how much: a request line longer than [`Policy::max_request_bytes`] is refused after reading
//!   at most that many bytes; the line must arrive within [`Policy::read_timeout`]; the reply
//!   must be taken within [`Policy::write_timeout`].
//! - how many: at most [`Policy::max_connections`] connections are held. When all are taken a
//!   new connection evicts the one that has waited longest for its request line (an idle
//!   connection costs nobody anything), and only when every held connection is running a request
//!   is the new one refused at once. A thousand idle connections therefore never stand between
//!   a real client and its answer.
//! - accept errors (EMFILE, ENFILE, ENOBUFS...) back off (see `AcceptBackoff`) instead of
//!   spinning on a listener that stays readable.
//!
//! The server knows nothing of the daemon: it hands each parsed [`Request`] to a [`Handler`].
use std::{
    collections::{BTreeMap, HashMap},
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    os::{
        fd::AsRawFd as _,
        unix::{fs::PermissionsExt as _, net::UnixStream},
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use futures::future::BoxFuture;
use nix::unistd::{Gid, Uid};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _},
    net::UnixListener,
    sync::Notify,
};
use tracing::{debug, warn};

/// How long a client waits for the daemon to take its connection (a full backlog).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client waits for its request to be taken.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client waits for the answer: a reload runs a whole reconcile first.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// The largest answer a client reads (a status of thousands of VPCs is a few MiB).
const MAX_REPLY_BYTES: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach peerd at {path}: {source} (is `peerd run` running?)")]
    Connect { path: PathBuf, source: io::Error },
    #[error("talking to peerd at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("peerd at {path} closed the connection without an answer")]
    NoAnswer { path: PathBuf },
    #[error("peerd at {path} answered something unreadable: {source}")]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("peerd: {0}")]
    Daemon(String),
    #[error("control socket {path}: {what}: {source}")]
    Bind {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    #[error("control socket {0}: exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("control socket group {name:?}: no such group")]
    UnknownGroup { name: String },
    #[error("control socket group {name:?}: {source}")]
    GroupLookup { name: String, source: nix::Error },
}

/// A control request: one JSON object on one line, tagged by `request`, e.g.
/// `{"request":"explain","from":"web","src":"10.1.0.5","dst":"10.2.0.5"}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "request", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// The daemon's state (`peerd status`).
    Status,
    /// Re-read the configuration and reconcile (`peerd reload`, same as SIGHUP).
    Reload,
    /// What applying `config` (default: the configuration in force) would change.
    Plan { config: Option<PathBuf> },
    /// What the datapath does with a packet from VPC `from`, and why.
    Explain {
        from: String,
        src: std::net::IpAddr,
        dst: std::net::IpAddr,
    },
    /// Attach a workload to a VPC, or change its addresses (`peerd attach`, the CNI plugin);
    /// with `check`, only verify that it is attached so (CNI CHECK).
    Attach {
        attachment: crate::attach::Attachment,
        #[serde(default)]
        check: bool,
    },
    /// Detach a workload (nothing to do when it is not attached); `id` (the CNI plugin's
    /// container id) finds it when its namespace is gone.
    Detach {
        vpc: String,
        workload: crate::attach::Workload,
        #[serde(default)]
        id: Option<String>,
    },
}

/// Answer envelope, one JSON object on one line.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub error: Option<String>,
    pub result: Option<serde_json::Value>,
}

impl Reply {
    fn failure(error: impl Into<String>) -> Self {
        Reply {
            ok: false,
            error: Some(error.into()),
            result: None,
        }
    }

    fn line(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).expect("a reply serializes");
        out.push(b'\n');
        out
    }
}

impl From<Result<serde_json::Value, String>> for Reply {
    fn from(r: Result<serde_json::Value, String>) -> Self {
        match r {
            Ok(v) => Reply {
                ok: true,
                error: None,
                result: Some(v),
            },
            Err(e) => Reply::failure(e),
        }
    }
}

/// Answers requests. The server calls it once per request, concurrently for concurrent clients.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request) -> BoxFuture<'static, Result<serde_json::Value, String>>;
}

/// Who may connect, and the bounds on each connection.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Members of this group (the peer's primary gid at connect time) may use the socket too.
    pub group: Option<Gid>,
    /// The longest request line accepted, newline excluded.
    pub max_request_bytes: usize,
    /// The whole request line must arrive within this.
    pub read_timeout: Duration,
    /// The whole reply must be taken within this.
    pub write_timeout: Duration,
    /// Connections held at once (see the module doc for what happens beyond).
    pub max_connections: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            group: None,
            max_request_bytes: 64 << 10,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            max_connections: 64,
        }
    }
}

/// What the server turned away, and why; cheap to share with a metrics exporter.
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub refused_credentials: AtomicU64,
    /// Refused because every held connection was running a request.
    pub refused_busy: AtomicU64,
    /// Idle connections closed to make room for a new one.
    pub evicted_idle: AtomicU64,
    pub read_timeouts: AtomicU64,
    pub oversize_requests: AtomicU64,
    pub bad_requests: AtomicU64,
    pub accept_errors: AtomicU64,
}

impl Stats {
    fn bump(counter: &AtomicU64) -> u64 {
        counter.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// The numeric id of the group `name` (a name from the group database, or a number).
pub fn group_id(name: &str) -> Result<Gid, Error> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(Gid::from_raw(n));
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => Err(Error::UnknownGroup { name: name.into() }),
        Err(source) => Err(Error::GroupLookup {
            name: name.into(),
            source,
        }),
    }
}

/// Binds the control socket at `path`: creates its directory, replaces a stale socket (the
/// caller has made sure no daemon answers there), then sets the file's group and mode: 0660
/// owned by `group`, else 0600. Must run inside a Tokio runtime.
///
/// Between `bind` and `chmod` the file carries the umask's mode; the credential check in
/// [`serve`] is what decides, so that window lets nobody in.
pub fn bind(path: &Path, group: Option<Gid>) -> Result<UnixListener, Error> {
    let err = |what, source| Error::Bind {
        path: path.into(),
        what,
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err("creating its directory", e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            std::fs::remove_file(path).map_err(|e| err("removing the stale socket", e))?
        }
        Ok(_) => return Err(Error::NotASocket(path.into())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("inspecting the path", e)),
    }
    let std_listener =
        std::os::unix::net::UnixListener::bind(path).map_err(|e| err("binding", e))?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| err("setting non-blocking", e))?;
    let mode = match group {
        Some(g) => {
            nix::unistd::chown(path, None, Some(g))
                .map_err(|e| err("setting its group", io::Error::from(e)))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| err("setting its mode", e))?;
    UnixListener::from_std(std_listener).map_err(|e| err("registering with the runtime", e))
}

/// Does a peer with these credentials get to talk to the daemon?
fn authorized(uid: u32, gid: u32, group: Option<Gid>, own: Uid) -> bool {
    uid == 0 || uid == own.as_raw() || group.is_some_and(|g| g.as_raw() == gid)
}

fn refusal(uid: u32, gid: u32, group: Option<Gid>) -> String {
    match group {
        Some(g) => format!(
            "permission denied: peer uid {uid} gid {gid} is neither root nor in the control group (gid {g})"
        ),
        None => format!(
            "permission denied: peer uid {uid} gid {gid} is not root (no socket_group is configured)"
        ),
    }
}

/// Parses one request line; the error is the message the client gets.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
        format!(
            "not a JSON request ({e}); send one object such as {{\"request\":\"status\"}} per line"
        )
    })?;
    let kind = value
        .get("request")
        .ok_or("request has no \"request\" field")?;
    let kind = kind
        .as_str()
        .ok_or("\"request\" must be a string")?
        .to_owned();
    let req: Request = serde_json::from_value(value.clone()).map_err(|e| {
        let e = e.to_string();
        // serde lists the known tags itself, so the message cannot fall out of date.
        match e.strip_prefix(&format!("unknown variant `{kind}`, ")) {
            Some(known) => format!("unknown request type {kind:?} ({known})"),
            None => format!("bad {kind} request: {e}"),
        }
    })?;
    // serde's `deny_unknown_fields` skips unit variants: compare with the request's own fields,
    // so a misspelt field is an error rather than silently ignored.
    let known = serde_json::to_value(&req).expect("a request serializes");
    if let (Some(given), Some(known)) = (value.as_object(), known.as_object()) {
        if let Some(extra) = given.keys().find(|k| !known.contains_key(*k)) {
            return Err(format!("bad {kind} request: unknown field `{extra}`"));
        }
    }
    Ok(req)
}

/// Serves the control socket until the task is dropped.
pub async fn serve(
    listener: UnixListener,
    policy: Policy,
    handler: Arc<dyn Handler>,
    stats: Arc<Stats>,
) {
    let slots = Arc::new(Slots::new(policy.max_connections));
    let policy = Arc::new(policy);
    let own = nix::unistd::geteuid();
    let mut backoff = AcceptBackoff::default();
    let mut last_refusal_log = None::<tokio::time::Instant>;
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => {
                backoff.reset();
                s
            }
            Err(e) => {
                Stats::bump(&stats.accept_errors);
                backoff.wait("control socket", &e).await;
                continue;
            }
        };
        Stats::bump(&stats.accepted);
        let cred = match stream.peer_cred() {
            Ok(c) => c,
            Err(e) => {
                Stats::bump(&stats.refused_credentials);
                warn!(error = %e, "control socket: cannot read the peer's credentials; refused");
                continue;
            }
        };
        if !authorized(cred.uid(), cred.gid(), policy.group, own) {
            let n = Stats::bump(&stats.refused_credentials);
            // A local user can connect in a loop: say it at most once a second.
            let now = tokio::time::Instant::now();
            if last_refusal_log.is_none_or(|t| now - t >= Duration::from_secs(1)) {
                last_refusal_log = Some(now);
                warn!(
                    uid = cred.uid(),
                    gid = cred.gid(),
                    pid = cred.pid(),
                    refused_so_far = n,
                    "control socket: peer refused"
                );
            }
            reply_now(
                &stream,
                &Reply::failure(refusal(cred.uid(), cred.gid(), policy.group)),
            );
            continue;
        }
        let slot = match slots.admit() {
            Admit::Free(s) => s,
            Admit::Evicted(s) => {
                Stats::bump(&stats.evicted_idle);
                s
            }
            Admit::Full => {
                Stats::bump(&stats.refused_busy);
                debug!("control socket: every connection is running a request; refused");
                reply_now(
                    &stream,
                    &Reply::failure(format!(
                        "busy: {} requests are running; try again",
                        policy.max_connections
                    )),
                );
                continue;
            }
        };
        tokio::spawn(connection(
            stream,
            slot,
            policy.clone(),
            handler.clone(),
            stats.clone(),
        ));
    }
}

/// Writes `reply` if the socket takes it right now, never waiting: for refusals, which must
/// cost the server nothing. The stream closes when the caller drops it.
fn reply_now(stream: &tokio::net::UnixStream, reply: &Reply) {
    let _ = stream.try_write(&reply.line());
}

enum Line {
    Complete(Vec<u8>),
    TooLong,
    Eof,
}

/// Reads up to the first newline, holding at most `max` bytes of it.
async fn read_line(r: &mut (impl AsyncRead + Unpin), max: usize) -> io::Result<Line> {
    let mut line = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            // A client that half-closes after its line without a newline is still served.
            return Ok(if line.is_empty() {
                Line::Eof
            } else {
                Line::Complete(line)
            });
        }
        let (take, done) = match chunk[..n].iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (n, false),
        };
        if line.len() + take > max {
            return Ok(Line::TooLong);
        }
        line.extend_from_slice(&chunk[..take]);
        if done {
            return Ok(Line::Complete(line));
        }
    }
}

async fn connection(
    mut stream: tokio::net::UnixStream,
    slot: Slot,
    policy: Arc<Policy>,
    handler: Arc<dyn Handler>,
    stats: Arc<Stats>,
) {
    let read = tokio::select! {
        _ = slot.evicted() => {
            debug!("control socket: idle connection evicted for a new one");
            reply_now(&stream, &Reply::failure("closed: idle while the server was full"));
            return;
        }
        r = tokio::time::timeout(
            policy.read_timeout,
            read_line(&mut stream, policy.max_request_bytes),
        ) => r,
    };
    let line = match read {
        Err(_) => {
            Stats::bump(&stats.read_timeouts);
            debug!("control socket: no request line within the read timeout");
            reply_now(
                &stream,
                &Reply::failure(format!(
                    "no complete request line within {:?}",
                    policy.read_timeout
                )),
            );
            return;
        }
        Ok(Err(e)) => {
            debug!(error = %e, "control socket: reading the request");
            return;
        }
        Ok(Ok(Line::Eof)) => return,
        Ok(Ok(Line::TooLong)) => {
            Stats::bump(&stats.oversize_requests);
            debug!("control socket: request line too long");
            reply_now(
                &stream,
                &Reply::failure(format!(
                    "request longer than {} bytes",
                    policy.max_request_bytes
                )),
            );
            return;
        }
        Ok(Ok(Line::Complete(l))) => l,
    };
    if !slot.busy() {
        // Evicted between the last byte of the line and here.
        reply_now(&stream, &Reply::failure("closed: the server was full"));
        return;
    }
    let reply = match parse_request(&line) {
        Ok(req) => {
            debug!(?req, "control request");
            Reply::from(handler.handle(req).await)
        }
        Err(e) => {
            Stats::bump(&stats.bad_requests);
            Reply::failure(e)
        }
    };
    let write = async {
        stream.write_all(&reply.line()).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(policy.write_timeout, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "control socket: writing the reply"),
        Err(_) => debug!("control socket: the client did not take its reply in time"),
    }
}

/// Connection slots shared by a server's accept loop and its connections: at most `max` are
/// held; a connection is *idle* while it waits for a request (evictable, oldest first) and
/// *busy* while one runs.
pub(crate) struct Slots {
    max: usize,
    inner: Mutex<SlotsInner>,
}

#[derive(Default)]
struct SlotsInner {
    /// Slots held (idle + busy).
    held: usize,
    /// Sequence number of the moment each idle connection became idle -> its id.
    idle: BTreeMap<u64, u64>,
    conns: HashMap<u64, Held>,
    seq: u64,
}

struct Held {
    idle_since: Option<u64>,
    evict: Arc<Notify>,
}

pub(crate) enum Admit {
    Free(Slot),
    /// The slot of the longest-idle connection, which has been told to close.
    Evicted(Slot),
    /// Every slot is running a request.
    Full,
}

impl Slots {
    pub(crate) fn new(max: usize) -> Self {
        Slots {
            max: max.max(1),
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotsInner> {
        // The critical sections only move numbers around: a panic cannot leave them half done.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new connection, which starts idle.
    pub(crate) fn admit(self: &Arc<Self>) -> Admit {
        let mut s = self.lock();
        let evicted = if s.held < self.max {
            s.held += 1;
            false
        } else if let Some((_, victim)) = s.idle.pop_first() {
            // The victim's slot passes to the newcomer: `held` is unchanged, and the victim,
            // gone from `conns`, gives nothing back when it drops.
            if let Some(v) = s.conns.remove(&victim) {
                v.evict.notify_one();
            }
            true
        } else {
            return Admit::Full;
        };
        s.seq += 1;
        let (id, evict) = (s.seq, Arc::new(Notify::new()));
        s.idle.insert(id, id);
        s.conns.insert(
            id,
            Held {
                idle_since: Some(id),
                evict: evict.clone(),
            },
        );
        let slot = Slot {
            slots: self.clone(),
            id,
            evict,
        };
        if evicted {
            Admit::Evicted(slot)
        } else {
            Admit::Free(slot)
        }
    }
}

pub(crate) struct Slot {
    slots: Arc<Slots>,
    id: u64,
    evict: Arc<Notify>,
}

impl Slot {
    /// Resolves when the connection has been evicted and must close.
    pub(crate) async fn evicted(&self) {
        self.evict.notified().await
    }

    /// A request is running: not evictable. False if it was evicted already.
    pub(crate) fn busy(&self) -> bool {
        let mut guard = self.slots.lock();
        let s = &mut *guard;
        let Some(h) = s.conns.get_mut(&self.id) else {
            return false;
        };
        if let Some(seq) = h.idle_since.take() {
            s.idle.remove(&seq);
        }
        true
    }

    /// Waiting for the next request: evictable, after every connection idle for longer.
    /// False if it was evicted already.
    pub(crate) fn idle(&self) -> bool {
        let mut guard = self.slots.lock();
        let s = &mut *guard;
        let Some(h) = s.conns.get_mut(&self.id) else {
            return false;
        };
        if h.idle_since.is_none() {
            s.seq += 1;
            h.idle_since = Some(s.seq);
            s.idle.insert(s.seq, self.id);
        }
        true
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock();
        if let Some(h) = s.conns.remove(&self.id) {
            if let Some(seq) = h.idle_since {
                s.idle.remove(&seq);
            }
            s.held -= 1;
        }
    }
}

/// Sleeps after a failed `accept`. Errors such as EMFILE leave the listener readable, so
/// retrying at once would spin a CPU until a descriptor frees up; the wait doubles from
/// [`Self::MIN`] to [`Self::MAX`] and resets after the next success. Errors that belong to one
/// aborted connection are retried at once: the next accept takes another connection.
#[derive(Debug, Default)]
pub(crate) struct AcceptBackoff {
    next: Option<Duration>,
}

impl AcceptBackoff {
    pub(crate) const MIN: Duration = Duration::from_millis(10);
    pub(crate) const MAX: Duration = Duration::from_secs(1);

    pub(crate) fn reset(&mut self) {
        self.next = None;
    }

    /// How long to wait after `e`.
    pub(crate) fn delay(&mut self, e: &io::Error) -> Duration {
        use io::ErrorKind::*;
        if matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted) {
            return Duration::ZERO;
        }
        let d = self.next.unwrap_or(Self::MIN);
        self.next = Some((d * 2).min(Self::MAX));
        d
    }

    pub(crate) async fn wait(&mut self, what: &str, e: &io::Error) {
        let d = self.delay(e);
        if d.is_zero() {
            debug!(error = %e, "{what}: accept");
            return;
        }
        // At most one line per wait, so at most one a second once the wait is at its maximum.
        warn!(error = %e, retry_in = ?d, "{what}: accept failed; backing off");
        tokio::time::sleep(d).await;
    }
}

/// Sends one request and returns the result value. Every step is bounded: connecting (a full
/// backlog), sending, and waiting for the answer (a reload runs a whole reconcile first).
pub fn request(socket: &Path, req: &Request) -> Result<serde_json::Value, Error> {
    let io = |source| Error::Io {
        path: socket.into(),
        source,
    };
    let s = connect(socket, CONNECT_TIMEOUT).map_err(|source| Error::Connect {
        path: socket.into(),
        source,
    })?;
    s.set_write_timeout(Some(SEND_TIMEOUT)).map_err(io)?;
    s.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_vec(req).expect("a request serializes");
    line.push(b'\n');
    match (&s).write_all(&line) {
        Ok(()) => {}
        // The server refused us before reading (credentials, busy): its reply is waiting.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) => {}
        Err(e) => return Err(io(e)),
    }
    let mut answer = Vec::new();
    BufReader::new((&s).take(MAX_REPLY_BYTES))
        .read_until(b'\n', &mut answer)
        .map_err(io)?;
    if answer.is_empty() {
        return Err(Error::NoAnswer {
            path: socket.into(),
        });
    }
    let reply: Reply = serde_json::from_slice(&answer).map_err(|source| Error::Decode {
        path: socket.into(),
        source,
    })?;
    if reply.ok {
        Ok(reply.result.unwrap_or(serde_json::Value::Null))
    } else {
        Err(Error::Daemon(reply.error.unwrap_or_default()))
    }
}

/// `connect(2)` on a Unix stream socket blocks while the listener's backlog is full; the send
/// timeout, set before connecting, bounds that wait.
fn connect(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    use nix::sys::{
        socket::{self, sockopt, AddressFamily, SockFlag, SockType, UnixAddr},
        time::{TimeVal, TimeValLike as _},
    };
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
    socket::setsockopt(&fd, sockopt::SendTimeout, &TimeVal::milliseconds(ms))?;
    socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(UnixStream::from(fd))
}

/// Is a daemon answering on `socket`?
pub fn daemon_alive(socket: &Path) -> bool {
    connect(socket, CONNECT_TIMEOUT).is_ok()
}

#[cfg(test)]
mod tests;
