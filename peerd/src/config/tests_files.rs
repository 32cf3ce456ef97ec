//! Reading files and includes (confinement, special files, limits) and the resilient loader.
use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::*;

/// A config directory: `peerd.toml` and `vpcs.d/` in a fresh temporary directory.
struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("vpcs.d")).unwrap();
        Self { tmp }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn main(&self) -> PathBuf {
        self.path("peerd.toml")
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        fs::write(&p, text).unwrap();
        p
    }

    fn remove(&self, rel: &str) {
        fs::remove_file(self.path(rel)).unwrap();
    }

    /// Strict load of the main file: the error text (it must fail, and not hang: within a
    /// bound far above what it takes, so a loaded machine does not fail it).
    fn err(&self) -> String {
        let t = Instant::now();
        let e = Config::load(&self.main())
            .expect_err("config should be rejected")
            .to_string();
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "took {:?}",
            t.elapsed()
        );
        e
    }

    fn names(&self) -> Vec<String> {
        names(&Config::load(&self.main()).unwrap())
    }
}

fn names(cfg: &Config) -> Vec<String> {
    cfg.vpcs.iter().map(|v| v.name.clone()).collect()
}

fn vpc(name: &str, cidr: &str) -> String {
    format!("[[vpc]]\nname = \"{name}\"\ncidrs = [\"{cidr}\"]\n")
}

fn vpc_peer(name: &str, cidr: &str, id: &str, peer: &str) -> String {
    format!(
        "{}[[vpc.peering]]\nid = \"{id}\"\npeer = \"{peer}\"\n",
        vpc(name, cidr)
    )
}

const INCLUDE_ALL: &str = "include = [\"vpcs.d/*.toml\"]\n";

#[test]
fn absolute_and_parent_patterns_are_refused() {
    let d = Dir::new();
    d.write("peerd.toml", "include = [\"/proc/kmsg\"]\n");
    let e = d.err();
    assert!(
        e.contains("peerd.toml:1:12: include \"/proc/kmsg\" is an absolute path"),
        "{e}"
    );
    d.write("peerd.toml", "include = [\"vpcs.d/../../etc/x.toml\"]\n");
    let e = d.err();
    assert!(
        e.contains("peerd.toml:1:12:") && e.contains("\"..\" component"),
        "{e}"
    );
    d.write("peerd.toml", "include = [\"\"]\n");
    assert!(d.err().contains("is empty"));
    d.write("peerd.toml", "include = [\"vpcs.d/[*.toml\"]\n");
    assert!(d.err().contains("not a valid pattern"));
}

#[test]
fn symlinks_must_stay_in_the_including_directory() {
    let d = Dir::new();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("x.toml"), vpc("x", "10.9.0.0/16")).unwrap();
    d.write("peerd.toml", INCLUDE_ALL);
    d.write("vpcs.d/a.toml", &vpc("a", "10.0.0.0/16"));
    symlink(outside.path().join("x.toml"), d.path("vpcs.d/x.toml")).unwrap();
    let e = d.err();
    assert!(
        e.contains("peerd.toml:1:12:")
            && e.contains("vpcs.d/x.toml resolves to")
            && e.contains("outside"),
        "{e}"
    );
    fs::remove_file(d.path("vpcs.d/x.toml")).unwrap();
    // A link to a file elsewhere inside the including file's directory is fine, absolute or
    // relative, and so is a link inside vpcs.d itself.
    d.write("shared.toml", &vpc("s", "10.5.0.0/16"));
    symlink(d.path("shared.toml"), d.path("vpcs.d/s.toml")).unwrap();
    fs::create_dir(d.path("vpcs.d/real")).unwrap();
    d.write("vpcs.d/real/r.toml", &vpc("r", "10.6.0.0/16"));
    symlink("real/r.toml", d.path("vpcs.d/r.toml")).unwrap();
    assert_eq!(d.names(), ["a", "r", "s"]);
    // vpcs.d's own includes are confined to vpcs.d: shared.toml is outside it.
    d.write(
        "vpcs.d/a.toml",
        &format!("include = [\"*.lnk\"]\n{}", vpc("a", "10.0.0.0/16")),
    );
    symlink(d.path("shared.toml"), d.path("vpcs.d/s.lnk")).unwrap();
    fs::remove_file(d.path("vpcs.d/s.toml")).unwrap();
    let e = d.err();
    assert!(e.contains("a.toml:1:12:") && e.contains("outside"), "{e}");
}

#[test]
fn special_files_are_refused_promptly() {
    let d = Dir::new();
    d.write("peerd.toml", INCLUDE_ALL);
    nix::unistd::mkfifo(&d.path("vpcs.d/f.toml"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let e = d.err();
    assert!(
        e.contains("peerd.toml:1:12:") && e.contains("f.toml is a fifo, not a regular file"),
        "{e}"
    );
    d.remove("vpcs.d/f.toml");
    fs::create_dir(d.path("vpcs.d/dir.toml")).unwrap();
    let e = d.err();
    assert!(e.contains("dir.toml is a directory"), "{e}");
    fs::remove_dir(d.path("vpcs.d/dir.toml")).unwrap();
    // A link to /proc/kmsg (which blocks when read) leaves the directory.
    symlink("/proc/kmsg", d.path("vpcs.d/k.toml")).unwrap();
    let e = d.err();
    assert!(e.contains("k.toml resolves to /proc/kmsg, outside"), "{e}");
    d.remove("vpcs.d/k.toml");
    symlink("/dev/zero", d.path("vpcs.d/z.toml")).unwrap();
    assert!(d.err().contains("outside"));
}

#[test]
fn the_main_file_gets_the_same_checks() {
    let t = Instant::now();
    let e = Config::load(Path::new("/proc/kmsg"))
        .unwrap_err()
        .to_string();
    // As root: refused as a proc file; otherwise opening it is not permitted. Never a hang.
    assert!(
        e.contains("/proc/kmsg is on a proc file system") || e.contains("cannot open /proc/kmsg"),
        "{e}"
    );
    let e = Config::load(Path::new("/proc/self/status"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("on a proc file system"), "{e}");
    let e = Config::load(Path::new("/dev/zero"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/dev/zero is a character device"), "{e}");
    let d = Dir::new();
    let e = Config::load(&d.path("vpcs.d")).unwrap_err().to_string();
    assert!(e.contains("is a directory"), "{e}");
    nix::unistd::mkfifo(&d.main(), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let e = Config::load(&d.main()).unwrap_err().to_string();
    assert!(e.contains("is a fifo"), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    // The main file may itself be a symlink anywhere (e.g. into a config management tree).
    let other = tempfile::tempdir().unwrap();
    fs::write(other.path().join("real.toml"), vpc("a", "10.0.0.0/16")).unwrap();
    let link = d.path("link.toml");
    symlink(other.path().join("real.toml"), &link).unwrap();
    assert_eq!(names(&Config::load(&link).unwrap()), ["a"]);
}

#[test]
fn size_limit() {
    let d = Dir::new();
    d.write("peerd.toml", INCLUDE_ALL);
    // Comments pad a valid file to exactly the limit: accepted; one byte more: refused.
    let body = vpc("a", "10.0.0.0/16");
    let limit = read::MAX_FILE_BYTES as usize;
    let pad = |n: usize| format!("{body}#{}\n", "x".repeat(n - body.len() - 2));
    d.write("vpcs.d/a.toml", &pad(limit));
    assert_eq!(d.names(), ["a"]);
    d.write("vpcs.d/a.toml", &pad(limit + 1));
    let e = d.err();
    assert!(e.contains("a.toml is larger than 1048576 bytes"), "{e}");
    // The main file too.
    d.write("peerd.toml", &pad(limit + 1));
    assert!(d.err().contains("peerd.toml is larger than"));
}

#[test]
fn file_count_limit() {
    let d = Dir::new();
    d.write("peerd.toml", INCLUDE_ALL);
    // The main file plus 1023 included files: the limit.
    for i in 0..load::MAX_FILES - 1 {
        d.write(&format!("vpcs.d/{i:04}.toml"), "");
    }
    let cfg = Config::load(&d.main()).unwrap();
    assert_eq!(cfg.files.len(), load::MAX_FILES);
    d.write("vpcs.d/9999.toml", "");
    let e = d.err();
    assert!(
        e.contains("peerd.toml:1:12: more than 1024 configuration files:")
            && e.contains("9999.toml is not read"),
        "{e}"
    );
}

#[test]
fn include_depth_cycles_and_shared_files() {
    let d = Dir::new();
    // A chain main -> 1 -> 2 -> ... -> 8 is as deep as allowed; one more level is not.
    d.write("peerd.toml", "include = [\"vpcs.d/1.toml\"]\n");
    for i in 1..=load::MAX_INCLUDE_DEPTH {
        d.write(
            &format!("vpcs.d/{i}.toml"),
            &format!("include = [\"{}.toml\"]\n", i + 1),
        );
    }
    d.write(&format!("vpcs.d/{}.toml", load::MAX_INCLUDE_DEPTH + 1), "");
    let e = d.err();
    assert!(
        e.contains("8.toml:1:12: includes nested deeper than 8 levels"),
        "{e}"
    );
    d.write("vpcs.d/8.toml", "");
    assert!(Config::load(&d.main()).is_ok());
    // A file that includes its includer.
    d.write("vpcs.d/2.toml", "include = [\"1.toml\"]\n");
    let e = d.err();
    assert!(e.contains("2.toml:1:12: include cycle"), "{e}");
    // A file matched by two patterns is read once (no duplicate VPC).
    d.write(
        "peerd.toml",
        "include = [\"vpcs.d/a.toml\", \"vpcs.d/*.toml\"]\n",
    );
    for i in 1..=load::MAX_INCLUDE_DEPTH + 1 {
        d.remove(&format!("vpcs.d/{i}.toml"));
    }
    d.write("vpcs.d/a.toml", &vpc("a", "10.0.0.0/16"));
    d.write("vpcs.d/b.toml", &vpc("b", "10.1.0.0/16"));
    assert_eq!(d.names(), ["a", "b"]);
    // Hidden files (editors' lock files) do not match a glob.
    d.write("vpcs.d/.#b.toml", "garbage");
    assert_eq!(d.names(), ["a", "b"]);
}

#[test]
fn a_stuck_read_times_out() {
    let t = Instant::now();
    let r = read::with_timeout(Duration::from_millis(100), || {
        std::thread::sleep(Duration::from_secs(3));
        1
    });
    assert_eq!(r, None);
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(read::with_timeout(Duration::from_secs(5), || 7), Some(7));
}

// ---- resilient loading ----

/// Resilient load with `lg`; panics if the main file is unusable.
fn resilient(main: &Path, lg: &LastGood) -> Loaded {
    load_resilient(main, lg).expect("main file usable")
}

fn broken(l: &Loaded) -> Vec<(String, Fallback)> {
    l.broken
        .iter()
        .map(|b| {
            (
                b.file.file_name().unwrap().to_string_lossy().into_owned(),
                b.fallback,
            )
        })
        .collect()
}

fn cidr_of(cfg: &Config, vpc: &str) -> String {
    cfg.vpc(vpc).unwrap().cidrs[0].to_string()
}

/// Two tenants in vpcs.d, peered; loaded once so every file has a last good version.
fn two_tenants() -> (Dir, LastGood) {
    let d = Dir::new();
    d.write("peerd.toml", INCLUDE_ALL);
    d.write(
        "vpcs.d/a.toml",
        &vpc_peer("a", "10.0.0.0/16", "pcx-ab", "b"),
    );
    d.write(
        "vpcs.d/b.toml",
        &vpc_peer("b", "10.1.0.0/16", "pcx-ab", "a"),
    );
    let l = resilient(&d.main(), &LastGood::default());
    assert!(l.broken.is_empty());
    assert_eq!(names(&l.config), ["a", "b"]);
    assert_eq!(l.last_good.len(), 3);
    (d, l.last_good)
}

#[test]
fn a_broken_file_keeps_its_last_good_while_others_apply() {
    let (d, lg) = two_tenants();
    // a breaks (bad CIDR), b changes its CIDR.
    d.write(
        "vpcs.d/a.toml",
        &vpc_peer("a", "10.0.0.0/99", "pcx-ab", "b"),
    );
    d.write(
        "vpcs.d/b.toml",
        &vpc_peer("b", "10.2.0.0/16", "pcx-ab", "a"),
    );
    let l = resilient(&d.main(), &lg);
    assert_eq!(cidr_of(&l.config, "a"), "10.0.0.0/16");
    assert_eq!(cidr_of(&l.config, "b"), "10.2.0.0/16");
    assert_eq!(broken(&l), [("a.toml".into(), Fallback::LastGood)]);
    let msg = l.broken[0].errors.to_string();
    assert!(
        msg.contains("vpcs.d/a.toml:3:10: CIDR \"10.0.0.0/99\" is not a CIDR"),
        "{msg}"
    );
    let report = l.error_report().unwrap();
    assert!(
        report.contains("a.toml: its last good version stays in force"),
        "{report}"
    );
    // The new last good: a's old text, b's new one.
    assert_eq!(
        l.last_good.get(&d.path("vpcs.d/a.toml")),
        lg.get(&d.path("vpcs.d/a.toml"))
    );
    assert!(l
        .last_good
        .get(&d.path("vpcs.d/b.toml"))
        .unwrap()
        .contains("10.2.0.0/16"));
    // The strict loader rejects the same set.
    assert!(d.err().contains("a.toml:3:10"));
    // Unreadable and deleted files keep their last good too.
    d.write(
        "vpcs.d/a.toml",
        &vpc_peer("a", "10.0.0.0/16", "pcx-ab", "b"),
    );
    fs::remove_file(d.path("vpcs.d/b.toml")).unwrap();
    nix::unistd::mkfifo(&d.path("vpcs.d/b.toml"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let l = resilient(&d.main(), &lg);
    assert_eq!(broken(&l), [("b.toml".into(), Fallback::LastGood)]);
    assert!(l.broken[0].errors.to_string().contains("is a fifo"));
    assert_eq!(cidr_of(&l.config, "b"), "10.1.0.0/16");
    d.remove("vpcs.d/b.toml");
    d.write(
        "peerd.toml",
        "include = [\"vpcs.d/a.toml\", \"vpcs.d/b.toml\"]\n",
    );
    let l = resilient(&d.main(), &lg);
    assert_eq!(broken(&l), [("b.toml".into(), Fallback::LastGood)]);
    assert!(l.broken[0]
        .errors
        .to_string()
        .contains("include \"vpcs.d/b.toml\" matches no file"));
    assert_eq!(names(&l.config), ["a", "b"]);
}

#[test]
fn a_new_broken_file_is_dropped_and_a_removed_one_forgotten() {
    let (d, lg) = two_tenants();
    d.write(
        "vpcs.d/c.toml",
        "[[vpc]]\nname = \"c\"\ncidrs = [\"nope\"]\n",
    );
    let l = resilient(&d.main(), &lg);
    assert_eq!(broken(&l), [("c.toml".into(), Fallback::Dropped)]);
    assert_eq!(names(&l.config), ["a", "b"]);
    assert!(l.last_good.get(&d.path("vpcs.d/c.toml")).is_none());
    assert!(l.error_report().unwrap().contains("c.toml: left out"));
    // A file no longer included leaves the last good set.
    d.remove("vpcs.d/c.toml");
    d.remove("vpcs.d/b.toml");
    let l = resilient(&d.main(), &lg);
    assert!(l.broken.is_empty());
    assert_eq!(names(&l.config), ["a"]);
    assert_eq!(l.last_good.len(), 2);
    assert!(l.last_good.get(&d.path("vpcs.d/b.toml")).is_none());
}

#[test]
fn a_cross_file_conflict_reverts_only_the_edited_file() {
    let (d, lg) = two_tenants();
    // b, edited, now claims VPC name "a" as well: a duplicate across files. Only b (edited)
    // goes back; a (unchanged) stays.
    d.write(
        "vpcs.d/b.toml",
        &format!(
            "{}{}",
            vpc_peer("b", "10.1.0.0/16", "pcx-ab", "a"),
            vpc("a", "10.7.0.0/16")
        ),
    );
    let l = resilient(&d.main(), &lg);
    assert_eq!(broken(&l), [("b.toml".into(), Fallback::LastGood)]);
    let msg = l.broken[0].errors.to_string();
    assert!(
        msg.contains("b.toml:8:8: VPC \"a\" is already defined at") && msg.contains("a.toml:2:8"),
        "{msg}"
    );
    assert_eq!(names(&l.config), ["a", "b"]);
    assert_eq!(cidr_of(&l.config, "a"), "10.0.0.0/16");
    // The same when the edited file sorts first: a, edited, now disagrees with b on pcx-ab.
    d.write(
        "vpcs.d/b.toml",
        &vpc_peer("b", "10.1.0.0/16", "pcx-ab", "a"),
    );
    d.write(
        "vpcs.d/a.toml",
        &format!(
            "{}{}",
            vpc_peer("a", "10.0.0.0/16", "pcx-ab", "c"),
            vpc("c", "10.3.0.0/16")
        ),
    );
    let l = resilient(&d.main(), &lg);
    assert_eq!(broken(&l), [("a.toml".into(), Fallback::LastGood)]);
    assert!(l.broken[0]
        .errors
        .to_string()
        .contains("the two ends of peering pcx-ab disagree"));
    assert_eq!(names(&l.config), ["a", "b"]);
    assert_eq!(l.config.vpc("a").unwrap().peerings[0].peer, "b");
    // A new file that conflicts is dropped; the others' edits apply.
    d.write(
        "vpcs.d/a.toml",
        &vpc_peer("a", "10.4.0.0/16", "pcx-ab", "b"),
    );
    d.write(
        "vpcs.d/c.toml",
        &vpc_peer("c", "10.3.0.0/16", "pcx-ab", "a"),
    );
    let l = resilient(&d.main(), &lg);
    assert_eq!(broken(&l), [("c.toml".into(), Fallback::Dropped)]);
    assert!(l.broken[0]
        .errors
        .to_string()
        .contains("more than two VPCs"));
    assert_eq!(cidr_of(&l.config, "a"), "10.4.0.0/16");
}

#[test]
fn capacity_is_blamed_on_the_file_that_changed() {
    let d = Dir::new();
    d.write("peerd.toml", INCLUDE_ALL);
    // z.toml (sorted last) fills the VPC map; a.toml (sorted first) is added afterwards.
    let n = peerd_common::MAX_VPCS as usize - 1;
    let full: String = (0..n)
        .map(|i| vpc(&format!("z{i}"), "10.0.0.0/16"))
        .collect();
    d.write("vpcs.d/z.toml", &full);
    let lg = resilient(&d.main(), &LastGood::default()).last_good;
    d.write("vpcs.d/a.toml", &vpc("a", "10.1.0.0/16"));
    let l = resilient(&d.main(), &lg);
    assert_eq!(broken(&l), [("a.toml".into(), Fallback::Dropped)]);
    let msg = l.broken[0].errors.to_string();
    assert!(
        msg.contains("a.toml:1:1: VPC \"a\" does not fit in the datapath: at most 4095 VPCs"),
        "{msg}"
    );
    assert_eq!(l.config.vpcs.len(), n);
    // The strict loader reports it where the files' order puts it.
    assert!(d.err().contains("VPC \"z4094\" does not fit"));
}

#[test]
fn per_file_quota_excess_falls_back_for_that_tenant() {
    let (d, lg) = two_tenants();
    d.write(
        "peerd.toml",
        &format!("{INCLUDE_ALL}[daemon]\nmax_peerings_per_vpc = 1\n"),
    );
    d.write(
        "vpcs.d/b.toml",
        &format!(
            "{}[[vpc.peering]]\nid = \"pcx-bc\"\npeer = \"c\"\n",
            vpc_peer("b", "10.1.0.0/16", "pcx-ab", "a")
        ),
    );
    let l = resilient(&d.main(), &lg);
    assert_eq!(broken(&l), [("b.toml".into(), Fallback::LastGood)]);
    assert!(l.broken[0]
        .errors
        .to_string()
        .contains("b.toml:1:1: VPC \"b\" has 2 peerings, more than max_peerings_per_vpc = 1"));
    assert_eq!(l.config.daemon.max_peerings_per_vpc, 1);
    assert_eq!(l.config.vpc("b").unwrap().peerings.len(), 1);
}

#[test]
fn a_main_edit_that_invalidates_unchanged_tenants_is_reverted() {
    let (d, lg) = two_tenants();
    // Quota 0 peerings: a and b, unchanged, would no longer be valid. The operator's edit goes
    // back, the tenants' VPCs stay.
    d.write(
        "peerd.toml",
        &format!("{INCLUDE_ALL}[daemon]\nmax_peerings_per_vpc = 0\nnetns_prefix = \"n-\"\n"),
    );
    let l = resilient(&d.main(), &lg);
    assert_eq!(broken(&l), [("peerd.toml".into(), Fallback::LastGood)]);
    let msg = l.broken[0].errors.to_string();
    assert!(
        msg.contains("a.toml:1:1: VPC \"a\" has 1 peerings, more than max_peerings_per_vpc = 0")
            && msg.contains("b.toml:1:1:"),
        "{msg}"
    );
    assert_eq!(l.config.daemon.netns_prefix, "vpc-");
    assert_eq!(names(&l.config), ["a", "b"]);
    // Without a last good main file there is nothing to go back to: the tenants are left out.
    let l = resilient(&d.main(), &LastGood::default());
    assert_eq!(
        broken(&l),
        [
            ("a.toml".into(), Fallback::Dropped),
            ("b.toml".into(), Fallback::Dropped)
        ]
    );
    assert_eq!(l.config.daemon.netns_prefix, "n-");
}

#[test]
fn a_broken_main_file_uses_its_last_good() {
    let (d, lg) = two_tenants();
    d.write("peerd.toml", "include = [\"vpcs.d/*.toml\"\n[daemon\n");
    d.write(
        "vpcs.d/b.toml",
        &vpc_peer("b", "10.2.0.0/16", "pcx-ab", "a"),
    );
    let l = resilient(&d.main(), &lg);
    assert_eq!(broken(&l), [("peerd.toml".into(), Fallback::LastGood)]);
    assert!(l.broken[0].errors.to_string().contains("peerd.toml:"));
    // Its includes still apply (from the last good text), with b's change.
    assert_eq!(cidr_of(&l.config, "b"), "10.2.0.0/16");
    // A broken [daemon] falls back as a whole, with the rest of the main file.
    d.write(
        "peerd.toml",
        &format!("{INCLUDE_ALL}[daemon]\nnetns_prefix = \"x-\"\npin_dir = \"/sys/fs/bpf\"\n"),
    );
    let l = resilient(&d.main(), &lg);
    assert_eq!(broken(&l), [("peerd.toml".into(), Fallback::LastGood)]);
    assert_eq!(l.config.daemon.netns_prefix, "vpc-");
    // Without a last good main file, the load fails.
    let e = load_resilient(&d.main(), &LastGood::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("bpffs root"), "{e}");
    d.remove("peerd.toml");
    assert!(load_resilient(&d.main(), &LastGood::default()).is_err());
    // With one, a missing main file starts on it.
    let l = resilient(&d.main(), &lg);
    assert_eq!(broken(&l), [("peerd.toml".into(), Fallback::LastGood)]);
    assert_eq!(names(&l.config), ["a", "b"]);
}

#[test]
fn last_good_persists() {
    let (d, lg) = two_tenants();
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("sub");
    let (empty, warn) = LastGood::load(&dir);
    assert!(empty.is_empty() && warn.is_none());
    lg.save(&dir).unwrap();
    let (back, warn) = LastGood::load(&dir);
    assert_eq!(warn, None);
    assert_eq!(back, lg);
    assert!(back
        .get(&d.path("vpcs.d/a.toml"))
        .unwrap()
        .contains("name = \"a\""));
    // No temporary file is left, and the file is private.
    let entries: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, [LastGood::FILE]);
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(dir.join(LastGood::FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // A restart with a broken file starts on the persisted version.
    d.write("vpcs.d/a.toml", "garbage");
    let l = resilient(&d.main(), &back);
    assert_eq!(broken(&l), [("a.toml".into(), Fallback::LastGood)]);
    assert_eq!(names(&l.config), ["a", "b"]);
    // Keys are absolute: a relative main path finds the same entries.
    let mut rel = LastGood::default();
    rel.insert(Path::new("x.toml"), "t".into());
    assert_eq!(
        rel.paths().next().unwrap(),
        std::env::current_dir().unwrap().join("x.toml")
    );
}

#[test]
fn corrupt_last_good_is_ignored_with_a_warning() {
    let state = tempfile::tempdir().unwrap();
    for bad in ["{not json", "{\"version\": 99, \"files\": {}}", "[]"] {
        fs::write(state.path().join(LastGood::FILE), bad).unwrap();
        let (lg, warn) = LastGood::load(state.path());
        assert!(lg.is_empty());
        let w = warn.expect("a warning");
        assert!(w.contains("ignoring") && w.contains(LastGood::FILE), "{w}");
    }
}

#[test]
fn the_first_load_finds_the_persisted_last_good_set() {
    let d = Dir::new();
    let state = tempfile::tempdir().unwrap();
    let main = format!(
        "{INCLUDE_ALL}[daemon]\nstate_dir = \"{}\"\n",
        state.path().display()
    );
    d.write("peerd.toml", &main);
    d.write("vpcs.d/a.toml", &vpc("a", "10.0.0.0/16"));
    let (l, warnings) = load_resilient_at_start(&d.main());
    let l = l.unwrap();
    assert!(warnings.is_empty() && l.broken.is_empty(), "{warnings:?}");
    l.last_good.save(state.path()).unwrap();
    // A restart with both files broken (the main file's TOML still parses) starts on the
    // persisted versions.
    d.write("peerd.toml", &format!("{main}bogus = 1\n"));
    d.write("vpcs.d/a.toml", "[[vpc]]\nname = \"a\"\n");
    let (l, warnings) = load_resilient_at_start(&d.main());
    let l = l.unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        broken(&l),
        [
            ("peerd.toml".into(), Fallback::LastGood),
            ("a.toml".into(), Fallback::LastGood)
        ]
    );
    assert_eq!(names(&l.config), ["a"]);
    // A corrupt persisted set is a warning, and the broken files are then unusable.
    fs::write(state.path().join(LastGood::FILE), "{").unwrap();
    let (r, warnings) = load_resilient_at_start(&d.main());
    assert!(r.is_err());
    assert!(warnings[0].contains("ignoring corrupt"), "{warnings:?}");
}
