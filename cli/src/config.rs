//! The CLI configuration file (`$OTHERIX_CONFIG`, else `~/.config/otherix/config.yaml`):
//! named remotes (URL, token, pinned CA, default project) and the current one. Loading
//! and the atomic, mode-0600 save are the only I/O here; [`resolve`] (where a command
//! connects, with which token, trust and project) is pure.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the CLI connects when neither `--server`, `OTHERIX_SERVER` nor a remote says.
pub const DEFAULT_SERVER: &str = "https://127.0.0.1:7080";

/// The config file below `$HOME`.
const HOME_CONFIG: &str = ".config/otherix/config.yaml";

/// Longest remote name.
const MAX_REMOTE_NAME: usize = 63;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("config file {} is not valid", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("cannot write config file {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot render the config file")]
    Render(#[source] serde_yaml::Error),
    #[error("no config file location: set OTHERIX_CONFIG or HOME")]
    NoLocation,
    #[error("no remote named {name}; 'otherix remote list' shows the configured remotes")]
    UnknownRemote { name: String },
    #[error("remote {name} already exists; run 'otherix remote remove {name}' first")]
    RemoteExists { name: String },
    #[error(
        "invalid remote name {name:?}: use 1 to {MAX_REMOTE_NAME} letters, digits, '.', '_' or '-', not starting with '-'"
    )]
    BadRemoteName { name: String },
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_remote: Option<String>,
    #[serde(default)]
    pub remotes: BTreeMap<String, Remote>,
}

/// One named server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remote {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// PEM of the cluster CA the server's chain must lead to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
    /// SHA-256 of the CA's DER, 64 lowercase hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Project of VM and task commands when neither `--project` nor `OTHERIX_PROJECT` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// The environment variables resolution reads (empty values count as unset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    pub config: Option<PathBuf>,
    pub home: Option<PathBuf>,
    pub token: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub project: Option<String>,
}

impl Env {
    /// `OTHERIX_CONFIG`, `HOME`, `OTHERIX_TOKEN`, `OTHERIX_CA_CERT`, `OTHERIX_PROJECT`.
    pub fn from_process() -> Env {
        Env::from_lookup(|k| std::env::var_os(k))
    }

    /// The same from any lookup (tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<OsString>) -> Env {
        let get = |k: &str| get(k).filter(|v| !v.is_empty());
        let text = |k: &str| get(k).map(|v| v.to_string_lossy().trim().to_owned());
        Env {
            config: get("OTHERIX_CONFIG").map(PathBuf::from),
            home: get("HOME").map(PathBuf::from),
            token: text("OTHERIX_TOKEN").filter(|t| !t.is_empty()),
            ca_cert: get("OTHERIX_CA_CERT").map(PathBuf::from),
            project: text("OTHERIX_PROJECT").filter(|p| !p.is_empty()),
        }
    }
}

/// The global flags resolution reads (`--server` also carries `OTHERIX_SERVER`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    pub server: Option<String>,
    pub remote: Option<String>,
    pub project: Option<String>,
}

/// What a request is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The built-in web PKI roots.
    System,
    /// The CA in the PEM file `OTHERIX_CA_CERT` names.
    CaFile(PathBuf),
    /// What remote `remote` pinned.
    Pinned {
        remote: String,
        fingerprint: Option<String>,
        ca_cert: Option<String>,
    },
}

/// Where and how a command talks to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub url: String,
    pub token: Option<String>,
    pub trust: Trust,
    pub project: Option<String>,
    /// The remote it came from, if any.
    pub remote: Option<String>,
}

/// The config file's path: `OTHERIX_CONFIG`, else `$HOME/.config/otherix/config.yaml`.
pub fn path(env: &Env) -> Result<PathBuf, ConfigError> {
    match (&env.config, &env.home) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(home)) => Ok(home.join(HOME_CONFIG)),
        (None, None) => Err(ConfigError::NoLocation),
    }
}

/// Reads the file; a missing file is an empty config.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Config::default()),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    parse(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Parses the file's text; an empty file is an empty config.
pub fn parse(text: &str) -> Result<Config, serde_yaml::Error> {
    if text.trim().is_empty() {
        return Ok(Config::default());
    }
    serde_yaml::from_str(text)
}

/// Writes the file atomically (a temporary file in the same directory, renamed over it)
/// with mode 0600, as it holds tokens; creates the directory (mode 0700) if missing.
pub fn save(path: &Path, config: &Config) -> Result<(), ConfigError> {
    let text = serde_yaml::to_string(config).map_err(ConfigError::Render)?;
    let write_err = |source| ConfigError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(write_err)?;
    let file_name = path.file_name().map_or_else(
        || "config.yaml".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}

/// Checks a remote name: `[A-Za-z0-9._-]{1,63}`, not starting with `-`.
pub fn check_remote_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_REMOTE_NAME
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::BadRemoteName {
            name: name.to_owned(),
        })
    }
}

impl Config {
    /// Adds `remote` as `name`; the first remote becomes the current one. Returns whether
    /// it did.
    pub fn add_remote(&mut self, name: &str, remote: Remote) -> Result<bool, ConfigError> {
        check_remote_name(name)?;
        if self.remotes.contains_key(name) {
            return Err(ConfigError::RemoteExists {
                name: name.to_owned(),
            });
        }
        self.remotes.insert(name.to_owned(), remote);
        let current_is_valid = self
            .current_remote
            .as_ref()
            .is_some_and(|c| self.remotes.contains_key(c));
        if current_is_valid {
            return Ok(false);
        }
        self.current_remote = Some(name.to_owned());
        Ok(true)
    }

    /// Makes `name` the current remote.
    pub fn switch_remote(&mut self, name: &str) -> Result<(), ConfigError> {
        self.remote(name)?;
        self.current_remote = Some(name.to_owned());
        Ok(())
    }

    /// Removes `name`; if it was current, no remote is current afterwards. Returns whether
    /// it was current.
    pub fn remove_remote(&mut self, name: &str) -> Result<bool, ConfigError> {
        self.remote(name)?;
        self.remotes.remove(name);
        let was_current = self.current_remote.as_deref() == Some(name);
        if was_current {
            self.current_remote = None;
        }
        Ok(was_current)
    }

    fn remote(&self, name: &str) -> Result<&Remote, ConfigError> {
        self.remotes
            .get(name)
            .ok_or_else(|| ConfigError::UnknownRemote {
                name: name.to_owned(),
            })
    }
}

/// Resolves where a command connects:
/// - URL: `--server`/`OTHERIX_SERVER`, else the selected remote's (`--remote`, else
///   `current_remote`), else [`DEFAULT_SERVER`];
/// - token: `OTHERIX_TOKEN`, else the remote's;
/// - trust: `OTHERIX_CA_CERT`, else the remote's pin (also when only the URL is
///   overridden), else the system roots;
/// - project: `--project`, else `OTHERIX_PROJECT`, else the remote's, else none.
///
/// A `--remote` that does not exist is an error; so is a `current_remote` that does not,
/// unless the URL comes from `--server`/`OTHERIX_SERVER`.
pub fn resolve(config: &Config, flags: &Flags, env: &Env) -> Result<Resolved, ConfigError> {
    let selected = match (&flags.remote, &config.current_remote) {
        (Some(name), _) => Some((name.as_str(), config.remote(name)?)),
        (None, Some(name)) => match (config.remotes.get(name), &flags.server) {
            (Some(r), _) => Some((name.as_str(), r)),
            (None, Some(_)) => None,
            (None, None) => return Err(ConfigError::UnknownRemote { name: name.clone() }),
        },
        (None, None) => None,
    };
    let url = flags
        .server
        .clone()
        .or_else(|| selected.map(|(_, r)| r.url.clone()))
        .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
    let token = env
        .token
        .clone()
        .or_else(|| selected.and_then(|(_, r)| r.token.clone()));
    let trust = match (&env.ca_cert, selected) {
        (Some(path), _) => Trust::CaFile(path.clone()),
        (None, Some((name, r))) if r.ca_cert.is_some() || r.fingerprint.is_some() => {
            Trust::Pinned {
                remote: name.to_owned(),
                fingerprint: r.fingerprint.clone(),
                ca_cert: r.ca_cert.clone(),
            }
        }
        _ => Trust::System,
    };
    let project = flags
        .project
        .clone()
        .or_else(|| env.project.clone())
        .or_else(|| selected.and_then(|(_, r)| r.project.clone()));
    Ok(Resolved {
        url,
        token,
        trust,
        project,
        remote: selected.map(|(name, _)| name.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const EXAMPLE: &str = "\
current_remote: local
remotes:
  local:
    url: https://127.0.0.1:7080
    token: otx_local
    ca_cert: |
      -----BEGIN CERTIFICATE-----
      AAAA
      -----END CERTIFICATE-----
    fingerprint: 3f9a
    project: default
  lab:
    url: https://lab:7080
    token: otx_lab
    fingerprint: 77aa
";

    fn example() -> Config {
        parse(EXAMPLE).unwrap()
    }

    fn flags(server: Option<&str>, remote: Option<&str>, project: Option<&str>) -> Flags {
        Flags {
            server: server.map(Into::into),
            remote: remote.map(Into::into),
            project: project.map(Into::into),
        }
    }

    #[test]
    fn parse_contract_example_reads_every_field() {
        let c = example();
        assert_eq!(c.current_remote.as_deref(), Some("local"));
        let local = &c.remotes["local"];
        assert_eq!(local.url, "https://127.0.0.1:7080");
        assert_eq!(local.token.as_deref(), Some("otx_local"));
        assert!(local
            .ca_cert
            .as_deref()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----\nAAAA\n"));
        assert_eq!(local.fingerprint.as_deref(), Some("3f9a"));
        assert_eq!(local.project.as_deref(), Some("default"));
        assert_eq!(c.remotes["lab"].project, None);
    }

    #[test]
    fn parse_empty_text_is_empty_config() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(parse("\n  \n").unwrap(), Config::default());
        assert!(parse("remotes: [1, 2]").is_err());
    }

    #[test]
    fn resolve_table() {
        let c = example();
        let none = Env::default();
        let env = Env {
            token: Some("otx_env".into()),
            project: Some("envproj".into()),
            ..Env::default()
        };
        let pinned_local = Trust::Pinned {
            remote: "local".into(),
            fingerprint: Some("3f9a".into()),
            ca_cert: c.remotes["local"].ca_cert.clone(),
        };
        let pinned_lab = Trust::Pinned {
            remote: "lab".into(),
            fingerprint: Some("77aa".into()),
            ca_cert: None,
        };
        // (name, config, flags, env, url, token, trust, project, remote)
        type Row<'a> = (
            &'a str,
            Config,
            Flags,
            &'a Env,
            &'a str,
            Option<&'a str>,
            Trust,
            Option<&'a str>,
            Option<&'a str>,
        );
        let table: Vec<Row> = vec![
            (
                "no config: default URL, system roots",
                Config::default(),
                flags(None, None, None),
                &none,
                "https://127.0.0.1:7080",
                None,
                Trust::System,
                None,
                None,
            ),
            (
                "current remote",
                c.clone(),
                flags(None, None, None),
                &none,
                "https://127.0.0.1:7080",
                Some("otx_local"),
                pinned_local.clone(),
                Some("default"),
                Some("local"),
            ),
            (
                "--remote picks another",
                c.clone(),
                flags(None, Some("lab"), None),
                &none,
                "https://lab:7080",
                Some("otx_lab"),
                pinned_lab.clone(),
                None,
                Some("lab"),
            ),
            (
                "env token and project beat the remote's",
                c.clone(),
                flags(None, None, None),
                &env,
                "https://127.0.0.1:7080",
                Some("otx_env"),
                pinned_local.clone(),
                Some("envproj"),
                Some("local"),
            ),
            (
                "--project beats OTHERIX_PROJECT",
                c.clone(),
                flags(None, None, Some("flagproj")),
                &env,
                "https://127.0.0.1:7080",
                Some("otx_env"),
                pinned_local.clone(),
                Some("flagproj"),
                Some("local"),
            ),
            (
                "--server overrides only the URL; the remote's pin still applies",
                c.clone(),
                flags(Some("https://10.0.0.5:7080"), None, None),
                &none,
                "https://10.0.0.5:7080",
                Some("otx_local"),
                pinned_local.clone(),
                Some("default"),
                Some("local"),
            ),
            (
                "--server without any remote",
                Config::default(),
                flags(Some("http://127.0.0.1:9"), None, None),
                &env,
                "http://127.0.0.1:9",
                Some("otx_env"),
                Trust::System,
                Some("envproj"),
                None,
            ),
            (
                "no current remote: defaults even with remotes configured",
                Config {
                    current_remote: None,
                    ..c.clone()
                },
                flags(None, None, None),
                &none,
                "https://127.0.0.1:7080",
                None,
                Trust::System,
                None,
                None,
            ),
            (
                "a dangling current_remote is ignored when --server is given",
                Config {
                    current_remote: Some("gone".into()),
                    ..c.clone()
                },
                flags(Some("https://h:1"), None, None),
                &none,
                "https://h:1",
                None,
                Trust::System,
                None,
                None,
            ),
        ];
        for (name, config, flags, env, url, token, trust, project, remote) in table {
            let r = resolve(&config, &flags, env).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(r.url, url, "{name}");
            assert_eq!(r.token.as_deref(), token, "{name}");
            assert_eq!(r.trust, trust, "{name}");
            assert_eq!(r.project.as_deref(), project, "{name}");
            assert_eq!(r.remote.as_deref(), remote, "{name}");
        }
    }

    #[test]
    fn resolve_ca_file_env_beats_remote_pin() {
        let env = Env {
            ca_cert: Some("/etc/otherix/ca.crt".into()),
            ..Env::default()
        };
        let r = resolve(&example(), &Flags::default(), &env).unwrap();
        assert_eq!(r.trust, Trust::CaFile("/etc/otherix/ca.crt".into()));
        assert_eq!(r.token.as_deref(), Some("otx_local"));
    }

    #[test]
    fn resolve_unknown_remote_is_an_error_naming_it() {
        let err = resolve(
            &example(),
            &flags(None, Some("nope"), None),
            &Env::default(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "no remote named nope; 'otherix remote list' shows the configured remotes"
        );
        let dangling = Config {
            current_remote: Some("gone".into()),
            ..example()
        };
        let err = resolve(&dangling, &Flags::default(), &Env::default()).unwrap_err();
        assert!(err.to_string().contains("no remote named gone"), "{err}");
    }

    #[test]
    fn env_from_lookup_treats_empty_as_unset_and_trims_token() {
        let vars: BTreeMap<&str, &str> = [
            ("OTHERIX_TOKEN", " otx_abc\n"),
            ("OTHERIX_PROJECT", ""),
            ("OTHERIX_CONFIG", "/tmp/c.yaml"),
            ("HOME", "/home/u"),
        ]
        .into();
        let env = Env::from_lookup(|k| vars.get(k).map(OsString::from));
        assert_eq!(env.token.as_deref(), Some("otx_abc"));
        assert_eq!(env.project, None);
        assert_eq!(env.ca_cert, None);
        assert_eq!(path(&env).unwrap(), PathBuf::from("/tmp/c.yaml"));
        let home_only = Env {
            home: Some("/home/u".into()),
            ..Env::default()
        };
        assert_eq!(
            path(&home_only).unwrap(),
            PathBuf::from("/home/u/.config/otherix/config.yaml")
        );
        assert!(matches!(
            path(&Env::default()),
            Err(ConfigError::NoLocation)
        ));
    }

    #[test]
    fn add_remote_first_becomes_current_later_ones_do_not() {
        let mut c = Config::default();
        let r = |url: &str| Remote {
            url: url.into(),
            ..Remote::default()
        };
        assert!(c.add_remote("a", r("https://a")).unwrap());
        assert!(!c.add_remote("b", r("https://b")).unwrap());
        assert_eq!(c.current_remote.as_deref(), Some("a"));
        assert!(matches!(
            c.add_remote("a", r("https://x")),
            Err(ConfigError::RemoteExists { .. })
        ));
        c.switch_remote("b").unwrap();
        assert_eq!(c.current_remote.as_deref(), Some("b"));
        assert!(c.switch_remote("zz").is_err());
        assert!(c.remove_remote("b").unwrap());
        assert_eq!(c.current_remote, None);
        assert!(!c.remove_remote("a").unwrap());
        assert!(c.remove_remote("a").is_err());
        // With no valid current remote, the next one added becomes current.
        assert!(c.add_remote("c", r("https://c")).unwrap());
    }

    #[test]
    fn check_remote_name_table() {
        for (name, ok) in [
            ("local", true),
            ("lab-2.example_x", true),
            ("", false),
            ("-x", false),
            ("a b", false),
            ("a/b", false),
            (&"x".repeat(64), false),
            (&"x".repeat(63), true),
        ] {
            assert_eq!(check_remote_name(name).is_ok(), ok, "{name:?}");
        }
    }

    #[test]
    fn save_then_load_round_trips_with_mode_0600_and_creates_dir() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/otherix/config.yaml");
        let c = example();
        save(&path, &c).unwrap();
        assert_eq!(load(&path).unwrap(), c);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Saving again replaces the file and leaves no temporary behind.
        let mut c2 = c.clone();
        c2.remove_remote("lab").unwrap();
        save(&path, &c2).unwrap();
        assert_eq!(load(&path).unwrap(), c2);
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["config.yaml"]);
    }

    #[test]
    fn load_missing_file_is_empty_and_bad_yaml_names_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        assert_eq!(load(&path).unwrap(), Config::default());
        fs::write(&path, "remotes: {a: 1}").unwrap();
        let err = load(&path).unwrap_err();
        assert!(err.to_string().contains("config.yaml"), "{err}");
    }
}
