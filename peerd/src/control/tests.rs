//! The control server against fake handlers: no daemon involved.
use std::{
    io::{Read as _, Write as _},
    net::IpAddr,
    os::unix::{fs::MetadataExt as _, net::UnixStream},
    sync::atomic::AtomicUsize,
    time::Instant,
};

use tokio::{runtime::Runtime, sync::Semaphore};

use super::*;
use crate::testing::{raise_fd_limit, wait_until};

/// Answers every request with the request itself, counting calls.
#[derive(Default)]
struct Echo {
    calls: AtomicUsize,
}

impl Handler for Echo {
    fn handle(&self, req: Request) -> BoxFuture<'static, Result<serde_json::Value, String>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { serde_json::to_value(req).map_err(|e| e.to_string()) })
    }
}

/// Holds every request until the test hands out permits.
struct Gate {
    running: Arc<AtomicUsize>,
    permits: Arc<Semaphore>,
}

impl Handler for Gate {
    fn handle(&self, _req: Request) -> BoxFuture<'static, Result<serde_json::Value, String>> {
        let (running, permits) = (self.running.clone(), self.permits.clone());
        Box::pin(async move {
            running.fetch_add(1, Ordering::SeqCst);
            permits.acquire().await.expect("open").forget();
            running.fetch_sub(1, Ordering::SeqCst);
            Ok(serde_json::json!("released"))
        })
    }
}

/// A control server on a socket in its own directory (marker `pdt`), removed on drop with the
/// runtime that serves it.
struct Server {
    path: PathBuf,
    stats: Arc<Stats>,
    // Dropped before the directory: the runtime's tasks end first.
    _rt: Runtime,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(policy: Policy, handler: Arc<dyn Handler>) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("pdt-control-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().join("peerd.sock");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let stats = Arc::new(Stats::default());
        let listener = {
            let _in_rt = rt.enter();
            bind(&path, policy.group).expect("bind")
        };
        rt.spawn(serve(listener, policy, handler, stats.clone()));
        Server {
            path,
            stats,
            _rt: rt,
            dir,
        }
    }

    fn count(&self, c: impl Fn(&Stats) -> &AtomicU64) -> u64 {
        c(&self.stats).load(Ordering::SeqCst)
    }

    /// Lets every user reach the socket file, so only the credential check decides.
    fn open_to_all(&self) {
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
}

fn policy() -> Policy {
    Policy::default()
}

/// Runs `f` on a thread of its own whose credentials are dropped to `uid`/`gid` (no
/// supplementary groups). The raw syscalls change only the calling thread (glibc's wrappers
/// would change every thread of the process); the thread ends with `f`.
fn as_user<T: Send>(uid: u32, gid: u32, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: plain syscalls on this thread's credentials.
            unsafe {
                assert_eq!(
                    libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
                    0
                );
                assert_eq!(libc::syscall(libc::SYS_setresgid, gid, gid, gid), 0);
                assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
            }
            f()
        })
        .join()
        .expect("thread")
    })
}

/// Sends `raw` as it is and returns everything the server wrote before closing.
fn raw_exchange(path: &Path, raw: &[u8]) -> String {
    let mut s = UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("reply then close");
    out
}

#[test]
fn requests_are_tagged_json_objects() {
    let src: IpAddr = "10.1.0.5".parse().unwrap();
    let dst: IpAddr = "10.2.0.5".parse().unwrap();
    let cases = [
        (Request::Status, r#"{"request":"status"}"#),
        (Request::Reload, r#"{"request":"reload"}"#),
        (
            Request::Plan { config: None },
            r#"{"request":"plan","config":null}"#,
        ),
        (
            Request::Plan {
                config: Some("/etc/peerd/peerd.toml.new".into()),
            },
            r#"{"request":"plan","config":"/etc/peerd/peerd.toml.new"}"#,
        ),
        (
            Request::Explain {
                from: "web".into(),
                src,
                dst,
            },
            r#"{"request":"explain","from":"web","src":"10.1.0.5","dst":"10.2.0.5"}"#,
        ),
    ];
    for (req, wire) in cases {
        assert_eq!(serde_json::to_string(&req).unwrap(), wire);
        assert_eq!(parse_request(wire.as_bytes()), Ok(req));
    }
    // `plan` without a config means the configuration in force.
    assert_eq!(
        parse_request(br#"{"request":"plan"}"#),
        Ok(Request::Plan { config: None })
    );
}

#[test]
fn bad_requests_get_clear_errors() {
    let e = parse_request(br#"{"request":"frobnicate"}"#).unwrap_err();
    assert!(
        e.contains("unknown request type \"frobnicate\"")
            && e.contains("expected one of `status`, `reload`, `plan`, `explain`"),
        "{e}"
    );
    let e = parse_request(b"status").unwrap_err();
    assert!(e.starts_with("not a JSON request"), "{e}");
    let e = parse_request(br#"{"from":"web"}"#).unwrap_err();
    assert!(e.contains("no \"request\" field"), "{e}");
    let e = parse_request(br#"{"request":7}"#).unwrap_err();
    assert!(e.contains("must be a string"), "{e}");
    let e = parse_request(br#"{"request":"explain","from":"web","src":"nope","dst":"10.0.0.1"}"#)
        .unwrap_err();
    assert!(e.starts_with("bad explain request"), "{e}");
    let e = parse_request(br#"{"request":"status","force":true}"#).unwrap_err();
    assert_eq!(e, "bad status request: unknown field `force`");
    let e = parse_request(br#"{"request":"plan","confg":"/etc/peerd/new.toml"}"#).unwrap_err();
    assert!(
        e.starts_with("bad plan request") && e.contains("confg"),
        "{e}"
    );
}

#[test]
fn who_may_connect() {
    let own = Uid::from_raw(1000);
    let group = Some(Gid::from_raw(990));
    assert!(authorized(0, 0, None, own), "root");
    assert!(authorized(0, 12, group, own), "root in any group");
    assert!(authorized(1000, 1000, None, own), "the daemon's own user");
    assert!(authorized(4242, 990, group, own), "the configured group");
    assert!(!authorized(4242, 990, None, own), "no group configured");
    assert!(!authorized(4242, 991, group, own), "another group");
    assert!(!authorized(65534, 65534, group, own), "nobody");
}

#[test]
fn answers_requests_and_unknown_ones_clearly() {
    let echo = Arc::new(Echo::default());
    let srv = Server::start(policy(), echo.clone());
    assert_eq!(
        std::fs::metadata(&srv.path).unwrap().mode() & 0o777,
        0o600,
        "no group configured: owner only"
    );
    assert!(daemon_alive(&srv.path));

    let v = request(&srv.path, &Request::Status).expect("status");
    assert_eq!(v, serde_json::json!({"request": "status"}));
    let req = Request::Explain {
        from: "web".into(),
        src: "10.1.0.5".parse().unwrap(),
        dst: "fd00::5".parse().unwrap(),
    };
    let v = request(&srv.path, &req).expect("explain");
    assert_eq!(serde_json::from_value::<Request>(v).unwrap(), req);

    let out = raw_exchange(&srv.path, b"{\"request\":\"frobnicate\"}\n");
    let reply: Reply = serde_json::from_str(&out).expect(&out);
    assert!(!reply.ok);
    assert!(
        reply
            .error
            .unwrap()
            .contains("unknown request type \"frobnicate\""),
        "{out}"
    );
    // The old string protocol is refused, not guessed at.
    let out = raw_exchange(&srv.path, b"status\n");
    assert!(out.contains("not a JSON request"), "{out}");
    // A request without a newline, then a half-close, is still a request.
    let out = {
        let mut s = UnixStream::connect(&srv.path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(br#"{"request":"reload"}"#).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert_eq!(
        out,
        "{\"ok\":true,\"error\":null,\"result\":{\"request\":\"reload\"}}\n"
    );

    assert_eq!(echo.calls.load(Ordering::SeqCst), 3);
    assert_eq!(srv.count(|s| &s.bad_requests), 2);
}

#[test]
fn a_handler_error_reaches_the_client() {
    struct Fails;
    impl Handler for Fails {
        fn handle(&self, _: Request) -> BoxFuture<'static, Result<serde_json::Value, String>> {
            Box::pin(async { Err("config rejected: line 3".to_owned()) })
        }
    }
    let srv = Server::start(policy(), Arc::new(Fails));
    match request(&srv.path, &Request::Reload) {
        Err(Error::Daemon(m)) => assert_eq!(m, "config rejected: line 3"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bind_replaces_a_stale_socket_but_not_a_file() {
    let dir = tempfile::Builder::new()
        .prefix("pdt-control-")
        .tempdir()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _in_rt = rt.enter();
    let path = dir.path().join("sub/peerd.sock");
    drop(bind(&path, None).expect("first bind creates the directory"));
    // The listener is gone, its file is not: a restart replaces it.
    assert!(path.exists());
    assert!(!daemon_alive(&path));
    drop(bind(&path, None).expect("stale socket replaced"));

    let file = dir.path().join("precious");
    std::fs::write(&file, "data").unwrap();
    assert!(matches!(bind(&file, None), Err(Error::NotASocket(_))));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");
}

#[test]
fn client_errors_name_the_socket() {
    let dir = tempfile::Builder::new()
        .prefix("pdt-control-")
        .tempdir()
        .unwrap();
    let path = dir.path().join("absent.sock");
    assert!(!daemon_alive(&path));
    let e = request(&path, &Request::Status).unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
    assert!(e.to_string().contains("absent.sock"), "{e}");
}

#[test]
#[ignore = "needs root"]
fn a_non_root_peer_is_refused() {
    let echo = Arc::new(Echo::default());
    let srv = Server::start(policy(), echo.clone());
    // The file mode keeps others out already...
    let e = as_user(65534, 65534, || request(&srv.path, &Request::Status)).unwrap_err();
    assert!(
        matches!(&e, Error::Connect { source, .. } if source.kind() == io::ErrorKind::PermissionDenied),
        "{e:?}"
    );
    // ...and with the file opened to everyone, the credential check still does.
    srv.open_to_all();
    let e = as_user(65534, 65534, || request(&srv.path, &Request::Status)).unwrap_err();
    match &e {
        Error::Daemon(m) => assert!(
            m.starts_with("permission denied") && m.contains("uid 65534"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        echo.calls.load(Ordering::SeqCst),
        0,
        "the handler never ran"
    );
    assert_eq!(srv.count(|s| &s.refused_credentials), 1);
    // Root still gets in.
    request(&srv.path, &Request::Status).expect("root");
}

#[test]
#[ignore = "needs root"]
fn a_peer_in_the_configured_group_is_accepted() {
    // Numeric ids that need no entry in the group database: chown and SO_PEERCRED take numbers.
    let group = Gid::from_raw(65533);
    let echo = Arc::new(Echo::default());
    let srv = Server::start(
        Policy {
            group: Some(group),
            ..policy()
        },
        echo.clone(),
    );
    let meta = std::fs::metadata(&srv.path).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), group.as_raw());
    std::fs::set_permissions(srv.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    let v = as_user(65534, group.as_raw(), || {
        request(&srv.path, &Request::Status)
    })
    .expect("a member of the group");
    assert_eq!(v, serde_json::json!({"request": "status"}));
    // Outside the group: the file mode says no.
    let e = as_user(65534, 65534, || request(&srv.path, &Request::Status)).unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
    assert_eq!(echo.calls.load(Ordering::SeqCst), 1);
}

#[test]
fn an_oversize_line_is_refused_after_reading_at_most_the_limit() {
    let echo = Arc::new(Echo::default());
    let max = 64 << 10;
    let srv = Server::start(
        Policy {
            max_request_bytes: max,
            ..policy()
        },
        echo.clone(),
    );
    let mut s = UnixStream::connect(&srv.path).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // 64 MiB without a newline: a server that buffered it all would take every byte.
    let chunk = vec![b'x'; 64 << 10];
    let mut sent = 0usize;
    let err = loop {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) => break e,
        }
        assert!(sent < 64 << 20, "the server read 64 MiB of one line");
    };
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        ),
        "{err}"
    );
    // What went out is the limit plus the socket's buffers, far below what was offered.
    assert!(sent < 4 << 20, "sent {sent} bytes before the server closed");
    // The server closed with our bytes unread: after its answer, a read may report the reset
    // instead of the end of the stream (which one depends on whether the write saw it first).
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the answer: {e}"),
        }
    }
    let out = String::from_utf8_lossy(&buf);
    assert!(
        out.contains(&format!("request longer than {max} bytes")),
        "{out}"
    );
    assert_eq!(srv.count(|s| &s.oversize_requests), 1);
    assert_eq!(echo.calls.load(Ordering::SeqCst), 0);

    // A line of exactly the limit is fine (it is bad JSON, and says so).
    let mut line = vec![b' '; max];
    line.push(b'\n');
    let out = raw_exchange(&srv.path, &line);
    assert!(out.contains("not a JSON request"), "{out}");
}

/// A server whose read timeout is `timeout`, and a client connected to it (which waits up to
/// 10 s for answers).
fn with_read_timeout(timeout: Duration) -> (Server, UnixStream) {
    let srv = Server::start(
        Policy {
            read_timeout: timeout,
            ..policy()
        },
        Arc::new(Echo::default()),
    );
    let s = UnixStream::connect(&srv.path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (srv, s)
}

#[test]
fn an_idle_connection_is_closed_after_the_read_timeout() {
    let timeout = Duration::from_millis(300);
    let (srv, mut s) = with_read_timeout(timeout);
    let start = Instant::now();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("closed by the server");
    let took = start.elapsed();
    assert!(
        took >= timeout && took < timeout * 10,
        "closed after {took:?}"
    );
    assert!(
        out.contains("no complete request line within 300ms"),
        "{out}"
    );
    assert_eq!(srv.count(|s| &s.read_timeouts), 1);
}

#[test]
fn a_dribbling_client_is_cut_at_the_read_timeout() {
    let timeout = Duration::from_millis(300);
    let (_srv, mut s) = with_read_timeout(timeout);
    let start = Instant::now();
    // One byte every 20 ms never completes a line; the timeout is for the whole line.
    let cut = loop {
        if s.write_all(b" ").is_err() {
            break start.elapsed();
        }
        assert!(
            start.elapsed() < timeout * 10,
            "still reading after {:?}",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(cut >= timeout, "cut after {cut:?}");
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.contains("no complete request line"), "{out}");
}

#[test]
fn a_thousand_idle_connections_do_not_delay_a_client() {
    raise_fd_limit(2300);
    let echo = Arc::new(Echo::default());
    let max = 64;
    let srv = Server::start(
        Policy {
            max_connections: max,
            // Long enough that no idle connection times out during the test.
            read_timeout: Duration::from_secs(120),
            ..policy()
        },
        echo.clone(),
    );
    let idle: Vec<UnixStream> = (0..1000)
        .map(|_| UnixStream::connect(&srv.path).expect("idle connection"))
        .collect();
    wait_until(
        "the server to take every idle connection",
        Duration::from_secs(20),
        || srv.count(|s| &s.accepted) == 1000,
    );

    let path = srv.path.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || tx.send(request(&path, &Request::Status)));
    let answer = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("an answer within 5 s");
    assert_eq!(
        answer.expect("status"),
        serde_json::json!({"request": "status"})
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );

    // The server held at most `max`: the oldest idle connections were closed to make room.
    let evicted = srv.count(|s| &s.evicted_idle);
    assert!(evicted >= (1001 - max) as u64, "evicted {evicted}");
    // The counter moves when a connection is chosen; its socket closes just after: wait for
    // the closes to show on the client side (bounded).
    for s in &idle {
        s.set_nonblocking(true).unwrap();
    }
    let closed = || {
        idle.iter()
            .filter(|s| {
                let mut b = [0u8; 256];
                (&**s).read(&mut b).is_ok()
            })
            .count()
    };
    wait_until(
        "the evicted connections to be closed",
        Duration::from_secs(10),
        || closed() >= 1001 - max,
    );
    assert_eq!(srv.count(|s| &s.refused_busy), 0);
    assert_eq!(echo.calls.load(Ordering::SeqCst), 1);
}

#[test]
fn beyond_the_cap_a_connection_is_refused_at_once_when_all_are_running() {
    let max = 4;
    let gate = Gate {
        running: Arc::new(AtomicUsize::new(0)),
        permits: Arc::new(Semaphore::new(0)),
    };
    let (running, permits) = (gate.running.clone(), gate.permits.clone());
    let srv = Server::start(
        Policy {
            max_connections: max,
            ..policy()
        },
        Arc::new(gate),
    );
    let held: Vec<_> = (0..max)
        .map(|_| {
            let path = srv.path.clone();
            std::thread::spawn(move || request(&path, &Request::Status))
        })
        .collect();
    wait_until(
        "every slot to run a request",
        Duration::from_secs(10),
        || running.load(Ordering::SeqCst) == max,
    );

    let start = Instant::now();
    match request(&srv.path, &Request::Status) {
        Err(Error::Daemon(m)) => assert!(m.starts_with("busy"), "{m}"),
        other => panic!("expected a busy refusal, got {other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(srv.count(|s| &s.refused_busy), 1);
    assert_eq!(
        srv.count(|s| &s.evicted_idle),
        0,
        "running requests are never evicted"
    );

    permits.add_permits(max + 1);
    for h in held {
        assert_eq!(
            h.join().unwrap().expect("released"),
            serde_json::json!("released")
        );
    }
    // The slots came back.
    request(&srv.path, &Request::Status).expect("after the others finished");
}

#[test]
fn slots_transfer_on_eviction_and_come_back_on_drop() {
    let slots = Arc::new(Slots::new(2));
    let Admit::Free(a) = slots.admit() else {
        panic!("first")
    };
    let Admit::Free(b) = slots.admit() else {
        panic!("second")
    };
    assert!(b.busy());
    // Full: the idle one (a) goes.
    let Admit::Evicted(c) = slots.admit() else {
        panic!("third evicts")
    };
    assert!(!a.busy(), "an evicted slot cannot start a request");
    drop(a);
    assert!(c.busy());
    assert!(matches!(slots.admit(), Admit::Full), "both running");
    // Idle again: evictable again, after anything idle for longer.
    assert!(b.idle());
    let Admit::Evicted(d) = slots.admit() else {
        panic!("b evicted")
    };
    assert!(!b.idle());
    drop(b);
    drop(c);
    drop(d);
    assert_eq!(slots.lock().held, 0);
    assert!(matches!(slots.admit(), Admit::Free(_)));
}

#[test]
fn accept_backoff_doubles_to_a_bound_and_resets() {
    let mut b = AcceptBackoff::default();
    let emfile = io::Error::from_raw_os_error(libc::EMFILE);
    let waits: Vec<_> = (0..10).map(|_| b.delay(&emfile)).collect();
    assert_eq!(waits[0], AcceptBackoff::MIN);
    assert_eq!(waits[1], AcceptBackoff::MIN * 2);
    assert!(waits.windows(2).all(|w| w[1] >= w[0]));
    assert_eq!(*waits.last().unwrap(), AcceptBackoff::MAX);
    // One aborted connection is not a reason to wait.
    assert_eq!(
        b.delay(&io::Error::from(io::ErrorKind::ConnectionAborted)),
        Duration::ZERO
    );
    b.reset();
    assert_eq!(b.delay(&emfile), AcceptBackoff::MIN);
}

/// Runs in a child process of its own (the file descriptor limit is per process).
#[test]
fn accept_errors_back_off_instead_of_spinning() {
    const CHILD: &str = "PEERD_TEST_EMFILE_CHILD";
    const NAME: &str = "control::tests::accept_errors_back_off_instead_of_spinning";
    if std::env::var_os(CHILD).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .expect("run the child");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "child failed:\n{text}");
        assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
        return;
    }

    let srv = Server::start(policy(), Arc::new(Echo::default()));
    // Use up every descriptor under a low limit, then connect with the last one: the server's
    // accept fails with EMFILE while the connection waits in the backlog.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = 256;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    let mut fillers = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => fillers.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(fillers.len() < 256, "never reached EMFILE");
    }
    fillers.pop();
    let mut client = UnixStream::connect(&srv.path).expect("connect with the last descriptor");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.write_all(b"{\"request\":\"status\"}\n").unwrap();

    let window = Duration::from_secs(1);
    std::thread::sleep(window);
    let errors = srv.count(|s| &s.accept_errors);
    // 10 ms doubling: attempts at 0, 10, 30, 70, 150, 310, 630 ms. A hot loop makes thousands.
    assert!(
        (2..=12).contains(&errors),
        "{errors} accept errors in {window:?}"
    );

    drop(fillers);
    let start = Instant::now();
    let mut out = String::new();
    client
        .read_to_string(&mut out)
        .expect("answered once descriptors are free");
    assert!(out.contains("\"ok\":true"), "{out}");
    assert!(
        start.elapsed() <= AcceptBackoff::MAX + Duration::from_millis(500),
        "took {:?}",
        start.elapsed()
    );
}
