//! The command line: without a daemon and without root, exit codes (0 ok, 1 invalid, 2 usage,
//! 3 not running), `check --json` and `plan --json` on an invalid configuration, `--version`;
//! with a daemon (root), `plan --json` per resource.
mod common;

use std::{os::unix::net::UnixListener, path::Path, process::Command};

use common::env::Env;

use serde_json::Value;

const PEERD: &str = env!("CARGO_BIN_EXE_peerd");

/// Runs peerd with `args`: (exit code, stdout, stderr).
fn peerd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(PEERD)
        .args(args)
        .env_remove("JOURNAL_STREAM")
        .output()
        .expect("run peerd");
    (
        out.status.code().expect("exited"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const BAD: &str = r#"[daemon]
netns_prefix = "t-"

[[vpc]]
name = "a"
cidrs = ["10.1.0.0/16"]

[[vpc]]
name = "b"
cidrs = ["10.2.0.0/33"]
"#;

const GOOD: &str = r#"[daemon]
netns_prefix = "t-"

[[vpc]]
name = "a"
cidrs = ["10.1.0.0/16"]
  [[vpc.peering]]
  id = "pcx-ab"
  peer = "b"

[[vpc]]
name = "b"
cidrs = ["10.2.0.0/16"]
"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

/// `text` as peerd.toml in a new temporary directory (removed when the guard drops).
fn config_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "peerd.toml", text);
    (dir, path)
}

/// The errors of an invalid configuration as JSON: file, line, column and message each.
fn assert_invalid_json(out: &str, file: &str) {
    let v: Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["ok"], false, "{v}");
    let errors = v["errors"].as_array().expect("errors");
    let e = errors
        .iter()
        .find(|e| e["message"].as_str().unwrap_or("").contains("10.2.0.0/33"))
        .unwrap_or_else(|| panic!("no error names the bad CIDR: {v}"));
    assert_eq!(e["file"], file, "{v}");
    assert_eq!(e["line"], 10, "{v}");
    assert!(e["column"].as_u64().is_some_and(|c| c > 0), "{v}");
}

#[test]
fn check_json_reports_each_error_with_its_place_and_exits_1() {
    let (_dir, bad) = config_file(BAD);
    let (code, out, _) = peerd(&["check", "--json", "--config", &bad]);
    assert_eq!(code, 1, "{out}");
    assert_invalid_json(&out, &bad);
    // Without --json: file:line:col message on stderr, same exit code.
    let (code, out, err) = peerd(&["check", "--config", &bad]);
    assert_eq!(code, 1);
    assert!(out.is_empty(), "{out}");
    assert!(err.contains(&format!("{bad}:10:")), "{err}");
}

#[test]
fn check_json_of_a_valid_configuration_lists_vpcs_and_peerings() {
    let (_dir, good) = config_file(GOOD);
    let (code, out, err) = peerd(&["check", "--json", "--config", &good]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["errors"], serde_json::json!([]));
    assert_eq!(v["vpcs"], serde_json::json!(["a", "b"]));
    assert_eq!(v["peerings"][0]["id"], "pcx-ab");
    assert_eq!(v["peerings"][0]["state"], "pending-acceptance");
}

#[test]
fn plan_json_of_an_invalid_configuration_reports_it_as_check_does() {
    let (dir, bad) = config_file(BAD);
    let socket = dir.path().join("none.sock");
    let (code, out, _) = peerd(&[
        "plan",
        "--json",
        "--config",
        &bad,
        "--socket",
        socket.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert_invalid_json(&out, &bad);
}

#[test]
fn client_commands_exit_3_when_nothing_answers_on_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.toml", GOOD);
    // A socket file nobody listens on (its listener is gone), and a path with no file at all.
    let dead = dir.path().join("dead.sock");
    drop(UnixListener::bind(&dead).unwrap());
    assert!(dead.exists());
    let missing = dir.path().join("missing.sock");
    for socket in [&dead, &missing] {
        let s = socket.to_str().unwrap();
        for args in [
            vec!["status"],
            vec!["status", "--json"],
            vec!["reload"],
            vec!["plan"],
            vec![
                "explain", "--from", "a", "--src", "10.1.0.1", "--dst", "10.2.0.1",
            ],
        ] {
            let mut args = args.clone();
            args.extend(["--config", &good, "--socket", s]);
            let (code, out, err) = peerd(&args);
            assert_eq!(code, 3, "{args:?}: {out}{err}");
            assert_eq!(
                err.trim(),
                format!("peerd is not running (no answer on {s})"),
                "{args:?}"
            );
            assert!(out.is_empty(), "{args:?}: {out}");
        }
    }
    // The socket from the configuration when --socket is not given.
    let with_socket = write(
        dir.path(),
        "s.toml",
        &GOOD.replace(
            "netns_prefix = \"t-\"",
            &format!("netns_prefix = \"t-\"\nsocket = \"{}\"", dead.display()),
        ),
    );
    let (code, _, err) = peerd(&["status", "--config", &with_socket]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(dead.to_str().unwrap()), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["frobnicate"],
        vec!["status", "--no-such-flag"],
        vec![
            "explain",
            "--from",
            "a",
            "--src",
            "not-an-address",
            "--dst",
            "10.0.0.1",
        ],
        vec!["status", "--json", "--dot"],
        vec!["run", "--log-format", "xml"],
    ] {
        let (code, _, err) = peerd(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
    }
}

#[test]
fn version_names_the_git_commit_it_was_built_from() {
    let (code, out, _) = peerd(&["--version"]);
    assert_eq!(code, 0);
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let commit = head.unwrap_or_else(|| "unknown".into());
    assert_eq!(
        out.trim(),
        format!("peerd {} (commit {commit})", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_documents_the_exit_codes_and_the_readme_the_same() {
    let (code, out, _) = peerd(&["--help"]);
    assert_eq!(code, 0);
    let table = peerd::cli::exit_codes();
    assert!(out.contains(table), "{out}");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    for line in table.lines().skip(1) {
        let (code, _) = line.trim().split_once("  ").unwrap();
        assert!(
            readme.contains(&format!("| {code} |")),
            "README's exit code table lacks {code}"
        );
    }
}

#[test]
#[ignore = "needs root"]
fn plan_json_lists_each_change_with_its_action_resource_and_name() {
    common::can_run();
    let ab = GOOD.split_once("\n\n").unwrap().1; // the VPCs, without the test's [daemon]
    let mut env = Env::new();
    env.write_config(ab);
    env.start();
    let socket = env.socket.to_str().unwrap().to_owned();
    let plan = |config: &str| {
        let (code, out, err) = peerd(&["plan", "--json", "--config", config, "--socket", &socket]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Value>(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let v = plan(env.config.to_str().unwrap());
    assert_eq!(v, serde_json::json!({"ok": true, "changes": []}));
    // Staged (not *.toml: the daemon's watcher ignores it): b accepts the peering, c is new.
    let staged = env.config.with_extension("toml.new");
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        "cidrs = [\"10.2.0.0/16\"]\n",
        "cidrs = [\"10.2.0.0/16\"]\n  [[vpc.peering]]\n  id = \"pcx-ab\"\n  peer = \"a\"\n\n[[vpc]]\nname = \"c\"\ncidrs = [\"10.3.0.0/16\"]\n",
    );
    std::fs::write(&staged, text).unwrap();
    let v = plan(staged.to_str().unwrap());
    let changes = v["changes"].as_array().unwrap();
    let has = |action: &str, resource: &str, name: &str| {
        changes
            .iter()
            .any(|c| c["action"] == action && c["resource"] == resource && c["name"] == name)
    };
    assert!(has("create", "vpc", "c"), "{v:#}");
    assert!(has("update", "peering", "pcx-ab"), "{v:#}");
    let p = changes.iter().find(|c| c["name"] == "pcx-ab").unwrap();
    assert_eq!(p["detail"], "pending-acceptance -> active", "{v:#}");
    assert!(changes
        .iter()
        .all(|c| c["line"].as_str().is_some_and(|l| !l.is_empty())));
    assert!(
        !common::env::netns_ok(&env.netns("c")),
        "plan applied something"
    );
}
