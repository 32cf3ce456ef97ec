//! The .deb (`cargo xtask package`, issue 12 item 4): installed with dpkg into a scratch root,
//! it holds what an operator needs (binary, unit, commented sample configuration as a
//! conffile, man pages, completions, licenses), and the packaged binary alone (no Rust, no
//! LLVM: the eBPF object is inside it) runs the sample's example VPCs and forwards a ping
//! between the peered pair.
//!
//! `cargo xtask test` builds the package before the suite and names it in PEERD_TEST_DEB;
//! without it the newest target/debian/peerd_*.deb is used (`cargo xtask package` makes one).
mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::env::{sh, Env};

/// The package under test.
fn deb() -> PathBuf {
    if let Some(p) = std::env::var_os("PEERD_TEST_DEB") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "PEERD_TEST_DEB: no package at {}", p.display());
        return p;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    let prefix = format!("peerd_{}-", env!("CARGO_PKG_VERSION"));
    let newest = std::fs::read_dir(&dir).ok().and_then(|entries| {
        entries
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with(&prefix) && n.ends_with(".deb")
            })
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
            .map(|e| e.path())
    });
    newest.unwrap_or_else(|| {
        panic!(
            "no {prefix}*.deb in {}: run `cargo xtask package` (`cargo xtask test` builds it)",
            dir.display()
        )
    })
}

/// A scratch root with an initialised dpkg database; removed on drop.
struct Root {
    dir: tempfile::TempDir,
}

/// The names of the packages the package depends on.
fn depends_names() -> Vec<String> {
    field("Depends")
        .split(',')
        .filter_map(|d| d.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

impl Root {
    /// An empty root whose dpkg database knows `packages` as this machine has them (their
    /// status stanzas), and nothing else.
    fn new(packages: &[String]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&common::unique("root"))
            .tempdir()
            .unwrap();
        let admin = dir.path().join("var/lib/dpkg");
        std::fs::create_dir_all(admin.join("info")).unwrap();
        std::fs::create_dir_all(admin.join("updates")).unwrap();
        let status: String = packages
            .iter()
            .map(|p| format!("{}\n", sh(&["dpkg-query", "--status", p]).trim_end()))
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(admin.join("status"), status).unwrap();
        Self { dir }
    }

    /// `dpkg -i` of the package into a root that knows what it depends on (so dpkg itself
    /// checks the versions this machine has against the package's Depends).
    fn install() -> Self {
        let root = Self::new(&depends_names());
        root.dpkg(&["--install", deb().to_str().unwrap()]);
        root
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p.trim_start_matches('/'))
    }

    fn peerd(&self) -> String {
        self.path("/usr/sbin/peerd").to_str().unwrap().to_owned()
    }

    /// dpkg on this root and its database.
    fn dpkg_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("dpkg");
        cmd.arg(format!("--root={}", self.dir.path().display()))
            .arg(format!(
                "--admindir={}",
                self.path("/var/lib/dpkg").display()
            ))
            .args(args);
        cmd
    }

    fn dpkg(&self, args: &[&str]) -> String {
        let out = self.dpkg_command(args).output().expect("dpkg");
        assert!(
            out.status.success(),
            "dpkg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The packaged peerd with `args`: its stdout (panics when it fails).
    fn run(&self, args: &[&str]) -> String {
        sh_with(&[&self.peerd()], args)
    }

    fn read(&self, p: &str) -> String {
        std::fs::read_to_string(self.path(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
    }
}

/// `sh` of `command` followed by `args`.
fn sh_with(command: &[&str], args: &[&str]) -> String {
    let mut all = command.to_vec();
    all.extend_from_slice(args);
    sh(&all)
}

/// `dpkg-deb --field` of the package.
fn field(name: &str) -> String {
    sh(&["dpkg-deb", "--field", deb().to_str().unwrap(), name])
        .trim()
        .to_owned()
}

/// The sample's commented example (between its markers), uncommented.
fn sample_example(sample: &str) -> String {
    let start = sample
        .find("# ---- example ----\n")
        .expect("example start marker");
    let end = sample
        .find("# ---- end of example ----")
        .expect("example end marker");
    sample[start..end]
        .lines()
        .skip(1)
        .map(|l| l.strip_prefix("# ").unwrap_or(l.trim_start_matches('#')))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The sample with every `[daemon]` key it documents (before its example) set to the value
/// it shows.
fn sample_daemon_keys(sample: &str) -> String {
    let end = sample.find("# ---- example ----").expect("example marker");
    sample[..end]
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest.split_once('=').is_some_and(|(k, _)| {
                    k.trim().chars().all(|c| c.is_ascii_lowercase() || c == '_')
                }) =>
            {
                rest
            }
            _ => l,
        })
        .filter(|l| !l.starts_with("include"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
#[ignore = "needs root"]
fn the_package_installs_the_binary_unit_and_a_conffile_sample_that_checks() {
    common::can_run();
    let root = Root::install();
    let status = root.dpkg(&["--status", "peerd"]);
    assert!(status.contains("Status: install ok installed"), "{status}");
    let conffiles = root.read("/var/lib/dpkg/info/peerd.conffiles");
    assert_eq!(conffiles.trim(), "/etc/peerd/peerd.toml");

    let peerd = root.peerd();
    let version = root.run(&["--version"]);
    assert!(
        version.starts_with(&format!("peerd {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    // The CNI plugin answers a runtime's VERSION.
    let cni = root.path("/usr/lib/cni/peerd-cni");
    let mut child = Command::new(&cni)
        .env("CNI_COMMAND", "VERSION")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", cni.display()));
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        br#"{"cniVersion":"1.0.0"}"#,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && answer.contains(r#""supportedVersions":["1.0.0"]"#),
        "{answer}"
    );

    // The sample as shipped, every [daemon] key it documents, and its example.
    let sample_path = root.path("/etc/peerd/peerd.toml");
    let sample = root.read("/etc/peerd/peerd.toml");
    let out = root.run(&["check", "--config", sample_path.to_str().unwrap()]);
    assert!(out.contains("ok, 0 VPCs"), "{out}");
    // "The values shown are the defaults": those of the keys an unset value turns off aside.
    let mut shown = peerd::config::Config::from_str(&sample_daemon_keys(&sample), &sample_path)
        .expect("the sample's [daemon] keys")
        .daemon;
    assert!(shown.socket_group.is_some() && shown.metrics.is_some() && shown.flow_log.is_some());
    (shown.socket_group, shown.metrics, shown.flow_log) = (None, None, None);
    assert_eq!(shown, peerd::config::DaemonConfig::default());
    for (what, text) in [
        ("daemon keys", sample_daemon_keys(&sample)),
        ("example", format!("{sample}\n{}", sample_example(&sample))),
    ] {
        let p = root.path(&format!("/tmp-{}.toml", what.replace(' ', "-")));
        std::fs::write(&p, &text).unwrap();
        let out = root.run(&["check", "--config", p.to_str().unwrap()]);
        assert!(out.contains(": ok"), "{what}: {out}");
        if what == "example" {
            assert!(out.contains("2 VPCs, 1 peerings"), "{out}");
            assert!(out.contains("active"), "{out}");
        }
    }

    // The unit runs the packaged binary on the packaged configuration, and systemd accepts it.
    let unit = root.read("/usr/lib/systemd/system/peerd.service");
    assert!(
        unit.contains("ExecStart=/usr/sbin/peerd run --config /etc/peerd/peerd.toml"),
        "{unit}"
    );
    assert!(!unit.contains("/usr/local"), "{unit}");
    common::verify_unit(&unit.replace("/usr/sbin/peerd", &peerd));

    // Removing keeps the operator's configuration; purging removes it.
    root.dpkg(&["--remove", "peerd"]);
    assert!(!root.path("/usr/sbin/peerd").exists());
    assert!(sample_path.exists(), "a conffile survives remove");
    root.dpkg(&["--purge", "peerd"]);
    assert!(!sample_path.exists(), "purge removes the conffile");
}

#[test]
#[ignore = "needs root"]
fn the_package_depends_on_what_this_machine_has_and_not_on_rust_or_llvm() {
    common::can_run();
    let depends = field("Depends");
    assert!(depends.contains("iproute2"), "{depends}");
    // The backstop (reconcile/backstop.rs) runs `nft`.
    assert!(depends.contains("nftables"), "{depends}");
    assert!(depends.contains("libc6"), "{depends}");
    // Without them dpkg refuses to configure it.
    let out = Root::new(&[])
        .dpkg_command(&["--install", deb().to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("dependency problems"),
        "{stderr}"
    );
    // Every library the packaged binary links comes from a package it depends on, directly
    // or through that package's own dependencies (libgcc_s through libc6).
    let mut allowed: Vec<String> = Vec::new();
    for name in depends_names() {
        let theirs = sh(&["dpkg-query", "-W", "-f=${Depends},${Pre-Depends}", &name]);
        allowed.extend(
            theirs
                .split(',')
                .filter_map(|d| d.split_whitespace().next())
                .map(|d| d.split(':').next().unwrap_or(d).to_owned()),
        );
        allowed.push(name);
    }
    let root = Root::install();
    let ldd = sh(&["ldd", &root.peerd()]);
    for line in ldd.lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next().unwrap_or(""),
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if !path.starts_with('/') {
            continue; // linux-vdso: the kernel's
        }
        let real = std::fs::canonicalize(path).unwrap();
        let owner = [Path::new(path), real.as_path()]
            .iter()
            .find_map(|p| {
                let out = Command::new("dpkg").arg("-S").arg(p).output().ok()?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                out.status
                    .success()
                    .then(|| text.split(':').next().unwrap_or("").to_owned())
            })
            .unwrap_or_else(|| panic!("no package owns {path}"));
        assert!(
            allowed.contains(&owner),
            "the packaged binary links {path} of {owner}, which Depends ({depends}) does not \
             bring:\n{ldd}"
        );
    }
}

#[test]
#[ignore = "needs root"]
fn the_package_has_a_man_page_per_command_completions_and_licenses() {
    common::can_run();
    let root = Root::install();
    // The pages the packaged binary generates are the pages the package installed.
    let fresh = tempfile::tempdir().unwrap();
    root.run(&["generate-man", fresh.path().to_str().unwrap()]);
    let mut pages: Vec<String> = std::fs::read_dir(fresh.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for must in [
        "peerd.8",
        "peerd-run.8",
        "peerd-check.8",
        "peerd-status.8",
        "peerd-completions.8",
    ] {
        assert!(pages.iter().any(|p| p == must), "{must} in {pages:?}");
    }
    assert!(
        !pages.iter().any(|p| p.contains("generate-man")),
        "the hidden command has no page: {pages:?}"
    );
    for page in &pages {
        let installed = root.path(&format!("/usr/share/man/man8/{page}.gz"));
        let text = sh(&["gzip", "-dc", installed.to_str().unwrap()]);
        let name = page.trim_end_matches(".8");
        assert!(text.contains(&format!(".TH {name} 8")), "{page}: {text}");
        assert_eq!(
            text,
            std::fs::read_to_string(fresh.path().join(page)).unwrap(),
            "{page}"
        );
    }
    let top = sh(&[
        "gzip",
        "-dc",
        root.path("/usr/share/man/man8/peerd.8.gz")
            .to_str()
            .unwrap(),
    ]);
    assert!(top.contains("/etc/peerd/peerd.toml"), "{top}");

    // Completions where each shell looks for them; bash registers one for peerd.
    let bash = root.path("/usr/share/bash-completion/completions/peerd");
    let registered = sh(&[
        "bash",
        "-c",
        &format!("source {} && complete -p peerd", bash.display()),
    ]);
    assert!(registered.contains("peerd"), "{registered}");
    assert!(root
        .read("/usr/share/zsh/vendor-completions/_peerd")
        .starts_with("#compdef peerd"));
    let fish = root.read("/usr/share/fish/vendor_completions.d/peerd.fish");
    assert!(fish.contains("complete -c peerd"), "{fish}");
    for shell in ["bash", "zsh", "fish"] {
        let out = root.run(&["completions", shell]);
        assert!(!out.is_empty(), "{shell}");
    }

    // Licenses: MIT OR Apache-2.0, and the GPL of the embedded eBPF object.
    let copyright = root.read("/usr/share/doc/peerd/copyright");
    assert!(copyright.contains("MIT or Apache-2.0"), "{copyright}");
    assert!(copyright.contains("GPL"), "{copyright}");
    assert!(root
        .read("/usr/share/doc/peerd/LICENSE-MIT")
        .contains("MIT License"));
    assert!(root
        .read("/usr/share/doc/peerd/LICENSE-APACHE")
        .contains("Apache License"));
}

#[test]
#[ignore = "needs root"]
fn the_packaged_binary_runs_the_sample_example_and_forwards_between_peered_vpcs() {
    common::can_run();
    let root = Root::install();
    let sample = root.read("/etc/peerd/peerd.toml");
    let mut env = Env::with_peerd(&root.peerd());
    // The sample's example (web <-> db peered), plus a VPC nobody peers with.
    env.write_config(&format!(
        "{}\n[[vpc]]\nname = \"ops\"\ncidrs = [\"10.30.0.0/16\"]\n",
        sample_example(&sample)
    ));
    env.start();
    env.wait_status("pcx-webdb active", Duration::from_secs(30), |st| {
        st["peerings"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["id"] == "pcx-webdb" && p["state"] == "active")
        })
    });
    for (vpc, addr) in [
        ("web", "10.10.0.1"),
        ("web", "2001:db8:10::1"),
        ("db", "10.20.0.1"),
        ("db", "2001:db8:20::1"),
        ("ops", "10.30.0.1"),
    ] {
        env.add_addr(vpc, addr);
    }
    for (from, src, dst) in [
        ("web", "10.10.0.1", "10.20.0.1"),
        ("db", "10.20.0.1", "10.10.0.1"),
        ("web", "2001:db8:10::1", "2001:db8:20::1"),
    ] {
        assert!(
            env.ping(from, src, dst, 3),
            "{src} -> {dst} (peered)\n{}",
            env.log()
        );
    }
    assert!(
        !env.ping("web", "10.10.0.1", "10.30.0.1", 2),
        "web -> ops is not peered"
    );
    // The packaged binary's client commands talk to it too.
    let status = root.run(&["status", "--config", env.config.to_str().unwrap()]);
    assert!(status.contains("pcx-webdb"), "{status}");
    env.stop();
}
