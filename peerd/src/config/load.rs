//! The file set: the main file and its includes, read with [`super::read`], each checked on
//! its own ([`super::parse`]), then together ([`super::cross`]).
//!
//! Two ways to load it:
//! - strict ([`Config::load`], `peerd check`): any error in any file rejects the whole set,
//!   and every error found is reported;
//! - resilient ([`load_resilient`], the daemon, SPEC §3 "with includes, the unit is the
//!   file"): a file with errors is replaced by its last good text, or left out when it never
//!   had one, so one tenant's mistake never freezes the others. The last good texts are
//!   persisted ([`LastGood`]), so a restart with a broken file starts on its last good version.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{
    cross::{cross_check, Capacity, Entry},
    model::*,
    parse::{parse_file, Include, Role},
    read::read_config_file,
};

/// Includes nest at most this deep below the main file.
pub(crate) const MAX_INCLUDE_DEPTH: usize = 8;
/// Files read in all, the main one included.
pub(crate) const MAX_FILES: usize = 1024;

/// The last good text of every configuration file, by absolute path (as written, symlinks
/// not resolved). Persisted as JSON in `state_dir` ([`LastGood::FILE`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LastGood {
    files: BTreeMap<PathBuf, String>,
}

#[derive(Serialize, Deserialize)]
struct LastGoodOnDisk {
    version: u32,
    files: BTreeMap<String, String>,
}

const LAST_GOOD_VERSION: u32 = 1;

fn key_of(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

impl LastGood {
    pub const FILE: &'static str = "config-lastgood.json";

    /// Reads `state_dir/config-lastgood.json`. A missing file is an empty set; an unreadable
    /// or corrupt one is ignored (empty set) with a warning to log.
    pub fn load(state_dir: &Path) -> (LastGood, Option<String>) {
        let path = state_dir.join(Self::FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return (LastGood::default(), None)
            }
            Err(e) => {
                return (
                    LastGood::default(),
                    Some(format!(
                        "cannot read {}: {e}; starting without last good configuration files",
                        path.display()
                    )),
                )
            }
        };
        match serde_json::from_slice::<LastGoodOnDisk>(&bytes) {
            Ok(d) if d.version == LAST_GOOD_VERSION => (
                LastGood {
                    files: d
                        .files
                        .into_iter()
                        .map(|(k, v)| (PathBuf::from(k), v))
                        .collect(),
                },
                None,
            ),
            Ok(d) => (
                LastGood::default(),
                Some(format!(
                    "ignoring {}: version {} is not {LAST_GOOD_VERSION}",
                    path.display(),
                    d.version
                )),
            ),
            Err(e) => (
                LastGood::default(),
                Some(format!(
                    "ignoring corrupt {}: {e}; starting without last good configuration files",
                    path.display()
                )),
            ),
        }
    }

    /// Writes `state_dir/config-lastgood.json` atomically (temporary file, fsync, rename,
    /// fsync of the directory), creating `state_dir` if needed. Paths that are not UTF-8 are
    /// not persisted.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(state_dir)?;
        let disk = LastGoodOnDisk {
            version: LAST_GOOD_VERSION,
            files: self
                .files
                .iter()
                .filter_map(|(k, v)| Some((k.to_str()?.to_owned(), v.clone())))
                .collect(),
        };
        let json = serde_json::to_vec(&disk)?;
        let tmp = state_dir.join(format!(".{}.tmp", Self::FILE));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, state_dir.join(Self::FILE))?;
        std::fs::File::open(state_dir)?.sync_all()
    }

    /// The last good text of `path` (made absolute, as the keys are).
    pub fn get(&self, path: &Path) -> Option<&str> {
        self.files.get(&key_of(path)).map(String::as_str)
    }

    /// Records `text` as the last good version of `path`.
    pub fn insert(&mut self, path: &Path, text: String) {
        self.files.insert(key_of(path), text);
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The files held, as absolute paths.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.keys().map(PathBuf::as_path)
    }
}

/// What the resilient loader did with a file that has errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// Its last good text is in force.
    LastGood,
    /// Left out: it never had a last good version (a new file), or that one is no longer
    /// valid either.
    Dropped,
}

/// A file whose current text is not in force, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokenFile {
    pub file: PathBuf,
    /// In the strict loader's `file:line:col: message` format.
    pub errors: ConfigError,
    pub fallback: Fallback,
}

impl fmt::Display for BrokenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.fallback {
            Fallback::LastGood => "its last good version stays in force",
            Fallback::Dropped => "left out (no usable last good version)",
        };
        write!(f, "{}: {what}:\n{}", self.file.display(), self.errors)
    }
}

/// The result of [`load_resilient`].
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The configuration in force: every file's current text, or its fallback.
    pub config: Config,
    /// Files whose current text is not in force, in reading order.
    pub broken: Vec<BrokenFile>,
    /// The texts in force, by file: persist it with [`LastGood::save`] once applied. Files no
    /// longer included are not in it.
    pub last_good: LastGood,
}

impl Loaded {
    /// One message for every broken file (for `status`'s `config_error`), `None` if none.
    pub fn error_report(&self) -> Option<String> {
        (!self.broken.is_empty()).then(|| {
            self.broken
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Strict,
    Resilient,
}

/// A cross-file error sends a file back to its last good text (or drops it) on the next walk.
#[derive(Clone)]
struct Forced {
    fallback: Fallback,
    errors: Vec<Diagnostic>,
}

/// A file in force.
struct Unit {
    path: PathBuf,
    key: PathBuf,
    text: String,
    main: bool,
    /// Its text is not its last good one (edited, or new).
    changed: bool,
    vpcs: Vec<Vpc>,
}

/// A path an include pattern named.
struct Target {
    path: PathBuf,
    /// The including file's directory, which the target must stay in.
    dir: PathBuf,
    from: Location,
    pattern: String,
    /// A literal (non-glob) pattern that matched nothing.
    missing: bool,
}

/// One version of one file, checked on its own.
struct Version {
    text: String,
    daemon: Option<DaemonConfig>,
    vpcs: Vec<Vpc>,
    targets: Vec<Target>,
    errors: Vec<Diagnostic>,
}

struct Walk<'a> {
    mode: Mode,
    last_good: &'a LastGood,
    forced: &'a BTreeMap<PathBuf, Forced>,
    /// Reads are done once per load, however many walks it takes.
    reads: &'a mut BTreeMap<PathBuf, Result<String, String>>,
    daemon: DaemonConfig,
    units: Vec<Unit>,
    broken: Vec<BrokenFile>,
    /// Strict mode: every error of every file.
    errors: Vec<Diagnostic>,
    /// Set when the main file has no usable version.
    fatal: Option<Vec<Diagnostic>>,
    /// The main file in force is an edit that can be reverted (it has a last good version).
    main_revertible: bool,
    /// Errors of last good versions of included files, found while the main file is an edit:
    /// a text that was valid and did not change fails because the main file changed (a
    /// lowered quota), so the main file's edit is what goes back, not the tenants' files.
    blame_main: Vec<Diagnostic>,
    /// Canonical paths of the files taken so far (a file included twice is read once).
    taken: BTreeSet<PathBuf>,
    watch_dirs: Vec<PathBuf>,
}

fn dir_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new(""))
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| key_of(p))
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

impl<'a> Walk<'a> {
    fn run(
        mode: Mode,
        main: &Path,
        main_text: Option<&str>,
        last_good: &'a LastGood,
        forced: &'a BTreeMap<PathBuf, Forced>,
        reads: &'a mut BTreeMap<PathBuf, Result<String, String>>,
    ) -> Walk<'a> {
        let mut w = Walk {
            mode,
            last_good,
            forced,
            reads,
            daemon: DaemonConfig::default(),
            units: Vec::new(),
            broken: Vec::new(),
            errors: Vec::new(),
            fatal: None,
            main_revertible: false,
            blame_main: Vec::new(),
            taken: BTreeSet::new(),
            watch_dirs: Vec::new(),
        };
        let read = w
            .reads
            .entry(main.to_owned())
            .or_insert_with(|| match main_text {
                Some(t) => Ok(t.to_owned()),
                None => read_config_file(main, None).map_err(|e| e.to_string()),
            })
            .clone()
            .map_err(|message| Diagnostic {
                location: None,
                message,
            });
        w.taken.insert(canonical(main));
        w.visit(main, read, true, 0, &mut Vec::new());
        w
    }

    fn watch(&mut self, dir: &Path) {
        let d = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        self.watch_dirs.push(d.to_owned());
    }

    /// Parses one version and resolves its includes.
    fn version(
        &mut self,
        path: &Path,
        text: String,
        main: bool,
        depth: usize,
        ancestors: &[PathBuf],
    ) -> Version {
        let daemon = self.daemon.clone();
        let role = if main {
            Role::Main
        } else {
            Role::Included(&daemon)
        };
        let parsed = parse_file(path, &text, role);
        let mut errors = parsed.errors;
        let targets = self.resolve(path, &parsed.includes, depth, ancestors, &mut errors);
        Version {
            text,
            daemon: parsed.daemon,
            vpcs: parsed.vpcs,
            targets,
            errors,
        }
    }

    /// The paths `includes` name; cycles and nesting too deep are errors of the including file.
    fn resolve(
        &mut self,
        path: &Path,
        includes: &[Include],
        depth: usize,
        ancestors: &[PathBuf],
        errors: &mut Vec<Diagnostic>,
    ) -> Vec<Target> {
        let dir = dir_of(path);
        let me = canonical(path);
        let mut targets = Vec::new();
        for inc in includes {
            let loc = &inc.location;
            if depth + 1 > MAX_INCLUDE_DEPTH {
                errors.push(Diagnostic {
                    location: Some(loc.clone()),
                    message: format!("includes nested deeper than {MAX_INCLUDE_DEPTH} levels"),
                });
                continue;
            }
            let literal = dir.join(&inc.pattern);
            // A new file in the pattern's directory may match: watch it (when it is one).
            let pattern_dir = Path::new(&inc.pattern).parent().unwrap_or(Path::new(""));
            if !has_glob(&pattern_dir.to_string_lossy()) {
                self.watch(&dir.join(pattern_dir));
            }
            let full = if dir.as_os_str().is_empty() {
                inc.pattern.clone()
            } else {
                format!(
                    "{}/{}",
                    glob::Pattern::escape(&dir.to_string_lossy()),
                    inc.pattern
                )
            };
            let opts = glob::MatchOptions {
                // Editors' lock and backup files (".#a.toml") are not configuration.
                require_literal_leading_dot: true,
                ..Default::default()
            };
            let mut matched: Vec<PathBuf> = match glob::glob_with(&full, opts) {
                Ok(paths) => paths.filter_map(Result::ok).take(MAX_FILES + 1).collect(),
                Err(e) => {
                    errors.push(Diagnostic {
                        location: Some(loc.clone()),
                        message: format!("include {:?} is not a valid pattern: {e}", inc.pattern),
                    });
                    continue;
                }
            };
            matched.sort();
            if matched.is_empty() && !has_glob(&inc.pattern) {
                targets.push(Target {
                    path: literal,
                    dir: dir.to_owned(),
                    from: loc.clone(),
                    pattern: inc.pattern.clone(),
                    missing: true,
                });
            }
            for m in matched {
                let c = canonical(&m);
                if c == me || ancestors.contains(&c) {
                    errors.push(Diagnostic {
                        location: Some(loc.clone()),
                        message: format!(
                            "include cycle: {:?} matches {}, which is this file or includes it",
                            inc.pattern,
                            m.display()
                        ),
                    });
                    continue;
                }
                targets.push(Target {
                    path: m,
                    dir: dir.to_owned(),
                    from: loc.clone(),
                    pattern: inc.pattern.clone(),
                    missing: false,
                });
            }
        }
        targets
    }

    fn broken(&mut self, file: &Path, errors: Vec<Diagnostic>, fallback: Fallback) {
        match self.mode {
            Mode::Strict => self.errors.extend(errors),
            Mode::Resilient => self.broken.push(BrokenFile {
                file: file.to_owned(),
                errors: ConfigError { errors },
                fallback,
            }),
        }
    }

    /// Chooses the version of `path` in force, takes it, then its includes.
    fn visit(
        &mut self,
        path: &Path,
        read: Result<String, Diagnostic>,
        main: bool,
        depth: usize,
        ancestors: &mut Vec<PathBuf>,
    ) {
        self.watch(dir_of(path));
        let key = key_of(path);
        let last_good = self.last_good.get(&key);
        let (errors, try_last_good) = match (self.forced.get(&key), read) {
            (Some(f), _) => (f.errors.clone(), f.fallback == Fallback::LastGood),
            (None, Err(d)) => (vec![d], true),
            (None, Ok(text)) => {
                let same_as_last_good = last_good == Some(text.as_str());
                let v = self.version(path, text, main, depth, ancestors);
                if v.errors.is_empty() {
                    return self.take(path, key, v, main, false, depth, ancestors);
                }
                if self.mode == Mode::Strict {
                    // Report everything: the file's includes are still read and checked.
                    self.errors.extend(v.errors.iter().cloned());
                    return self.take(path, key, v, main, false, depth, ancestors);
                }
                if same_as_last_good {
                    self.last_good_failed(main, &v.errors);
                }
                (v.errors, !same_as_last_good)
            }
        };
        if try_last_good {
            if let Some(text) = last_good {
                let v = self.version(path, text.to_owned(), main, depth, ancestors);
                if v.errors.is_empty() {
                    self.broken(path, errors, Fallback::LastGood);
                    return self.take(path, key, v, main, true, depth, ancestors);
                }
                self.last_good_failed(main, &v.errors);
            }
        }
        if main {
            self.fatal = Some(errors);
        } else {
            self.broken(path, errors, Fallback::Dropped);
        }
    }

    fn last_good_failed(&mut self, main: bool, errors: &[Diagnostic]) {
        if !main && self.main_revertible {
            self.blame_main.extend(errors.iter().cloned());
        }
    }

    #[expect(clippy::too_many_arguments, reason = "one recursive step of the walk")]
    fn take(
        &mut self,
        path: &Path,
        key: PathBuf,
        v: Version,
        main: bool,
        from_last_good: bool,
        depth: usize,
        ancestors: &mut Vec<PathBuf>,
    ) {
        if main {
            self.daemon = v.daemon.clone().unwrap_or_default();
        }
        let changed = !from_last_good && self.last_good.get(&key) != Some(v.text.as_str());
        if main {
            self.main_revertible = changed && self.last_good.get(&key).is_some();
        }
        self.units.push(Unit {
            path: path.to_owned(),
            key,
            text: v.text,
            main,
            changed,
            vpcs: v.vpcs,
        });
        ancestors.push(canonical(path));
        for t in v.targets {
            self.target(t, depth, ancestors);
        }
        ancestors.pop();
    }

    fn target(&mut self, t: Target, depth: usize, ancestors: &mut Vec<PathBuf>) {
        if t.missing {
            let read = Err(Diagnostic {
                location: Some(t.from.clone()),
                message: format!("include {:?} matches no file", t.pattern),
            });
            return self.visit(&t.path, read, false, depth + 1, ancestors);
        }
        let c = canonical(&t.path);
        if self.taken.contains(&c) {
            return; // included by another pattern or file already
        }
        if self.taken.len() >= MAX_FILES {
            self.watch(dir_of(&t.path));
            return self.broken(
                &t.path,
                vec![Diagnostic {
                    location: Some(t.from),
                    message: format!(
                        "more than {MAX_FILES} configuration files: {} is not read",
                        t.path.display()
                    ),
                }],
                Fallback::Dropped,
            );
        }
        self.taken.insert(c);
        let read = self
            .reads
            .entry(t.path.clone())
            .or_insert_with(|| read_config_file(&t.path, Some(&t.dir)).map_err(|e| e.to_string()))
            .clone()
            .map_err(|message| Diagnostic {
                location: Some(t.from.clone()),
                message,
            });
        self.visit(&t.path, read, false, depth + 1, ancestors)
    }

    fn config(&self) -> Config {
        let mut watch_dirs = self.watch_dirs.clone();
        watch_dirs.sort();
        watch_dirs.dedup();
        Config {
            daemon: self.daemon.clone(),
            vpcs: self.units.iter().flat_map(|u| u.vpcs.clone()).collect(),
            files: self.units.iter().map(|u| u.path.clone()).collect(),
            watch_dirs,
        }
    }
}

/// [`Config::load`] and [`Config::from_str`]: every error of every file, or the configuration.
pub(crate) fn strict(path: &Path, text: Option<&str>) -> Result<Config, ConfigError> {
    let (lg, forced, mut reads) = (LastGood::default(), BTreeMap::new(), BTreeMap::new());
    let w = Walk::run(Mode::Strict, path, text, &lg, &forced, &mut reads);
    if let Some(errors) = w.fatal {
        return Err(ConfigError { errors });
    }
    let entries: Vec<Entry<'_>> = w
        .units
        .iter()
        .enumerate()
        .flat_map(|(i, u)| u.vpcs.iter().map(move |v| (v, i)))
        .collect();
    let mut errors = w.errors.clone();
    errors.extend(
        cross_check(&entries, &Capacity::DATAPATH)
            .into_iter()
            .map(|(d, _)| d),
    );
    if errors.is_empty() {
        Ok(w.config())
    } else {
        Err(ConfigError { errors })
    }
}

/// Loads the file set for the daemon, each file on its own (SPEC §3).
///
/// Each file is read, parsed and checked alone; one with errors is replaced by its last good
/// text from `last_good` (or left out if it has none). Then the set is checked as a whole
/// (VPC names, the ends of each peering id, the datapath's capacity): a file named by such an
/// error whose text changed since its last good version goes back to that version (or is left
/// out if new), one that did not change is left out, and the set is checked again, until it is
/// clean. A broken main file falls back to its last good text, `[daemon]` and includes
/// included. An edit of the main file that makes an unchanged included file invalid (a
/// quota lowered below what a tenant has) is reverted, rather than the tenant's VPCs dropped.
/// `Err` only when the main file has no usable version at all (or is itself the cause of a
/// cross-file error it cannot be reverted from).
///
/// The caller applies `Loaded::config`, then persists `Loaded::last_good` with
/// [`LastGood::save`], and reports [`Loaded::error_report`] (e.g. as `config_error`).
pub fn load_resilient(path: &Path, last_good: &LastGood) -> Result<Loaded, ConfigError> {
    let mut reads = BTreeMap::new();
    let mut forced: BTreeMap<PathBuf, Forced> = BTreeMap::new();
    // Every round forces one more file back or out, so this bound is never reached.
    for _ in 0..2 * MAX_FILES + 2 {
        let w = Walk::run(Mode::Resilient, path, None, last_good, &forced, &mut reads);
        if let Some(errors) = w.fatal {
            return Err(ConfigError { errors });
        }
        if !w.blame_main.is_empty() {
            if let Some(main) = w.units.first() {
                forced.insert(
                    main.key.clone(),
                    Forced {
                        fallback: Fallback::LastGood,
                        errors: w.blame_main,
                    },
                );
                continue;
            }
        }
        // Files that did not change first: errors land on the files that did.
        let mut order: Vec<usize> = (0..w.units.len()).collect();
        order.sort_by_key(|&i| w.units[i].changed);
        let entries: Vec<Entry<'_>> = order
            .iter()
            .flat_map(|&i| w.units[i].vpcs.iter().map(move |v| (v, i)))
            .collect();
        let errs = cross_check(&entries, &Capacity::DATAPATH);
        if errs.is_empty() {
            let config = w.config();
            let mut lg = LastGood::default();
            for u in &w.units {
                lg.files.insert(u.key.clone(), u.text.clone());
            }
            return Ok(Loaded {
                config,
                broken: w.broken,
                last_good: lg,
            });
        }
        let mut by_unit: BTreeMap<usize, Vec<Diagnostic>> = BTreeMap::new();
        for (d, u) in errs {
            by_unit.entry(u).or_default().push(d);
        }
        let mut next = forced.clone();
        for (u, diags) in by_unit {
            let Some(unit) = w.units.get(u) else { continue };
            let fallback = if unit.changed && last_good.get(&unit.key).is_some() {
                Fallback::LastGood
            } else {
                Fallback::Dropped
            };
            if unit.main && fallback == Fallback::Dropped {
                return Err(ConfigError { errors: diags });
            }
            let f = next.entry(unit.key.clone()).or_insert(Forced {
                fallback,
                errors: Vec::new(),
            });
            f.fallback = fallback;
            f.errors.extend(diags);
        }
        forced = next;
    }
    Err(ConfigError {
        errors: vec![Diagnostic {
            location: Some(Location {
                file: path.to_owned(),
                line: 1,
                column: 1,
            }),
            message: "the configuration files did not settle on a consistent set".into(),
        }],
    })
}

/// The daemon's first load: finds `state_dir` (from the main file's `[daemon]` if its TOML
/// parses, whatever else is wrong with it; else the default), reads the persisted
/// [`LastGood`] there, and loads with [`load_resilient`]. If the configuration in force names
/// another `state_dir` (the main file fell back to a last good text that says otherwise), the
/// last good set is read from there and the load done again. Warnings (a corrupt last good
/// file) are returned for the log.
pub fn load_resilient_at_start(path: &Path) -> (Result<Loaded, ConfigError>, Vec<String>) {
    #[derive(Deserialize)]
    struct Peek {
        daemon: Option<PeekDaemon>,
    }
    #[derive(Deserialize)]
    struct PeekDaemon {
        state_dir: Option<String>,
    }
    let guess = read_config_file(path, None)
        .ok()
        .and_then(|t| toml::from_str::<Peek>(&t).ok())
        .and_then(|p| p.daemon?.state_dir)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| DaemonConfig::default().state_dir);
    let mut warnings = Vec::new();
    let (lg, w) = LastGood::load(&guess);
    warnings.extend(w);
    let r = load_resilient(path, &lg);
    match &r {
        Ok(l) if l.config.daemon.state_dir != guess => {
            let (lg, w) = LastGood::load(&l.config.daemon.state_dir);
            warnings.extend(w);
            (load_resilient(path, &lg), warnings)
        }
        _ => (r, warnings),
    }
}

/// Checks VPC declarations from several sources together, as `check` checks the files of one
/// configuration: each source on its own, then the set (VPC names, the ends of each peering
/// id, quotas, the datapath's capacity). `peerd apply` uses it for the files being applied
/// plus the VPCs already in etcd, each of which is a source labelled with its key. Sources hold
/// `[[vpc]]` tables only. Quotas are `daemon`'s.
pub fn check_vpc_sources(
    sources: &[(PathBuf, String)],
    daemon: &DaemonConfig,
) -> Result<Vec<Vpc>, ConfigError> {
    let daemon = DaemonConfig {
        cluster: None,
        ..daemon.clone()
    };
    let mut errors = Vec::new();
    let mut parsed = Vec::new();
    for (i, (path, text)) in sources.iter().enumerate() {
        let p = parse_file(path, text, Role::Included(&daemon));
        errors.extend(p.errors);
        for inc in &p.includes {
            errors.push(Diagnostic {
                location: Some(inc.location.clone()),
                message: "include is not followed here: give every file to apply".into(),
            });
        }
        parsed.push((i, p.vpcs));
    }
    let entries: Vec<Entry<'_>> = parsed
        .iter()
        .flat_map(|(i, vpcs)| vpcs.iter().map(move |v| (v, *i)))
        .collect();
    errors.extend(
        cross_check(&entries, &Capacity::DATAPATH)
            .into_iter()
            .map(|(d, _)| d),
    );
    if errors.is_empty() {
        Ok(parsed.into_iter().flat_map(|(_, v)| v).collect())
    } else {
        Err(ConfigError { errors })
    }
}
