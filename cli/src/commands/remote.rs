//! `otherix remote add|list|switch|remove`: the servers this CLI knows, kept in the
//! config file. `add` shows the fingerprint of the CA the server presents and pins it
//! once the user (or `--accept-certificate`) trusts it; it then checks the token with
//! `GET /v1/whoami` before saving anything.

use std::fs;
use std::io::{self, BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;

use super::CommandError;
use crate::cli::{RemoteAddArgs, RemoteCommand};
use crate::client::{Client, ClientError, ClientOptions};
use crate::config::{self, Remote};
use crate::output;
use crate::tls::{self, Pin, PinSource};
use crate::wire::Whoami;

/// How long `remote add` waits for the server's TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddOptions {
    pub name: String,
    pub url: String,
    pub token_file: Option<PathBuf>,
    pub project: Option<String>,
    pub accept_certificate: bool,
}

impl AddOptions {
    /// `remote add` arguments; `project` is the global `--project` flag.
    pub fn new(a: RemoteAddArgs, project: Option<String>) -> Self {
        AddOptions {
            name: a.name,
            url: a.url.trim_end_matches('/').to_owned(),
            token_file: a.token_file,
            project,
            accept_certificate: a.accept_certificate,
        }
    }
}

/// Runs a remote command on the config file at `path`; `project` is the global
/// `--project` flag (the default project `remote add` stores).
pub fn run(
    cmd: RemoteCommand,
    path: &Path,
    project: Option<String>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CommandError> {
    match cmd {
        RemoteCommand::Add(a) => {
            let opts = AddOptions::new(a, project);
            let stdin = io::stdin();
            if stdin.is_terminal() {
                add(path, opts, Some(&mut stdin.lock()), out, err)
            } else {
                add(path, opts, None, out, err)
            }
        }
        RemoteCommand::List => {
            let config = config::load(path)?;
            out.write_all(output::table::remotes(&config).as_bytes())?;
            Ok(())
        }
        RemoteCommand::Switch { name } => {
            let mut config = config::load(path)?;
            config.switch_remote(&name)?;
            config::save(path, &config)?;
            writeln!(out, "current remote: {name}")?;
            Ok(())
        }
        RemoteCommand::Remove { name } => {
            let mut config = config::load(path)?;
            let was_current = config.remove_remote(&name)?;
            config::save(path, &config)?;
            writeln!(out, "remote {name} removed")?;
            if was_current {
                writeln!(
                    err,
                    "no current remote now; pick one with 'otherix remote switch NAME'"
                )?;
            }
            Ok(())
        }
    }
}

/// `remote add`. `answer` is the terminal to ask on, `None` without one (then only
/// `--accept-certificate` trusts an `https://` server).
pub fn add(
    path: &Path,
    opts: AddOptions,
    answer: Option<&mut dyn BufRead>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CommandError> {
    config::check_remote_name(&opts.name)?;
    let mut config = config::load(path)?;
    if config.remotes.contains_key(&opts.name) {
        return Err(config::ConfigError::RemoteExists { name: opts.name }.into());
    }
    let token = opts.token_file.as_deref().map(read_token).transpose()?;
    let url = Url::parse(&opts.url).map_err(|source| ClientError::BadServerUrl {
        url: opts.url.clone(),
        source,
    })?;
    let pin = match url.scheme() {
        "https" => Some(trust_server(&opts, &url, answer, out, err)?),
        "http" => None,
        other => {
            return Err(CommandError::Usage(format!(
                "unsupported URL scheme {other:?} in {}: use https:// (or http:// for a server started with --insecure-http)",
                opts.url
            )))
        }
    };
    let me = match &token {
        Some(token) => Some(check_token(&opts, token, pin.clone())?),
        None => None,
    };
    let remote = Remote {
        url: opts.url.clone(),
        token,
        ca_cert: pin
            .as_ref()
            .and_then(|p| p.ca.as_ref())
            .map(|c| tls::pem_encode(c)),
        fingerprint: pin.map(|p| p.fingerprint),
        project: opts.project.clone(),
    };
    let became_current = config.add_remote(&opts.name, remote)?;
    config::save(path, &config)?;
    writeln!(out, "{}", added_line(&opts.name, &opts.url, me.as_ref()))?;
    if became_current {
        writeln!(out, "current remote: {}", opts.name)?;
    }
    Ok(())
}

/// `remote NAME added: URL` plus who the token is, when it was checked.
pub fn added_line(name: &str, url: &str, me: Option<&Whoami>) -> String {
    match me {
        Some(me) => format!(
            "remote {name} added: {url} (token {}, role {}, project {})",
            me.name, me.role, me.project
        ),
        None => format!("remote {name} added: {url} (no token)"),
    }
}

/// The token in `path`, trimmed; an empty file is an error.
fn read_token(path: &Path) -> Result<String, CommandError> {
    let text = fs::read_to_string(path).map_err(|source| CommandError::ReadInput {
        flag: "--token-file",
        path: path.to_owned(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(CommandError::Usage(format!(
            "--token-file {} holds no token",
            path.display()
        )));
    }
    Ok(token.to_owned())
}

/// Shows the fingerprint of the CA `url` presents and returns it as a pin once trusted.
fn trust_server(
    opts: &AddOptions,
    url: &Url,
    answer: Option<&mut dyn BufRead>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Pin, CommandError> {
    let chain = tls::fetch_chain(url, HANDSHAKE_TIMEOUT)?;
    let ca = tls::chain_ca(&chain)
        .cloned()
        .ok_or_else(|| tls::TlsError::NoPeerCertificate {
            url: opts.url.clone(),
        })?;
    let fingerprint = tls::fingerprint(ca.as_ref());
    writeln!(out, "{}", output::fingerprint_line(&fingerprint))?;
    out.flush()?;
    if !opts.accept_certificate {
        let Some(answer) = answer else {
            return Err(CommandError::NeedsAcceptCertificate {
                url: opts.url.clone(),
                fingerprint,
            });
        };
        if !confirm(answer, err)? {
            return Err(CommandError::CertificateNotTrusted {
                url: opts.url.clone(),
            });
        }
    }
    Ok(Pin {
        source: PinSource::Remote(opts.name.clone()),
        fingerprint,
        ca: Some(ca),
    })
}

/// Asks `ok (y/n)? ` on `prompt`; only `y`/`yes` (any case) trust.
pub fn confirm(input: &mut dyn BufRead, prompt: &mut dyn Write) -> io::Result<bool> {
    write!(prompt, "ok (y/n)? ")?;
    prompt.flush()?;
    let mut line = String::new();
    input.read_line(&mut line)?;
    let line = line.trim().to_ascii_lowercase();
    Ok(line == "y" || line == "yes")
}

/// `GET /v1/whoami` with the new remote's settings: the token must work before it is
/// saved.
fn check_token(opts: &AddOptions, token: &str, pin: Option<Pin>) -> Result<Whoami, CommandError> {
    let client = Client::connect(ClientOptions {
        server: opts.url.clone(),
        token: Some(token.to_owned()),
        pin,
        project: None,
    })?;
    Ok(client.whoami()?.value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait::fake::FakeServer;

    fn opts(name: &str, url: &str, token_file: Option<PathBuf>) -> AddOptions {
        AddOptions {
            name: name.into(),
            url: url.into(),
            token_file,
            project: Some("dev".into()),
            accept_certificate: false,
        }
    }

    #[test]
    fn confirm_answers_table() {
        for (input, want) in [
            ("y\n", true),
            ("YES\n", true),
            ("n\n", false),
            ("\n", false),
            ("", false),
        ] {
            let mut prompt = vec![];
            assert_eq!(confirm(&mut input.as_bytes(), &mut prompt).unwrap(), want);
            assert_eq!(prompt, b"ok (y/n)? ");
        }
    }

    #[test]
    fn add_http_remote_checks_token_saves_and_becomes_current() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("admin.token");
        fs::write(&token_file, "otx_abc\n").unwrap();
        let server = FakeServer::start(vec![(
            200,
            r#"{"name":"admin","role":"admin","project":"default"}"#.into(),
        )]);
        let path = dir.path().join("c/config.yaml");
        let (mut out, mut err) = (vec![], vec![]);
        add(
            &path,
            opts("local", &server.url, Some(token_file)),
            None,
            &mut out,
            &mut err,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "remote local added: {} (token admin, role admin, project default)\ncurrent remote: local\n",
                server.url
            )
        );
        assert_eq!(server.auths(), [Some("Bearer otx_abc".to_owned())]);
        let c = config::load(&path).unwrap();
        assert_eq!(c.current_remote.as_deref(), Some("local"));
        let r = &c.remotes["local"];
        assert_eq!(r.token.as_deref(), Some("otx_abc"));
        assert_eq!(r.project.as_deref(), Some("dev"));
        assert_eq!((r.ca_cert.as_ref(), r.fingerprint.as_ref()), (None, None));
    }

    #[test]
    fn add_rejected_token_saves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("t");
        fs::write(&token_file, "otx_bad").unwrap();
        let server = FakeServer::start(vec![(
            401,
            r#"{"error":{"code":"unauthenticated","message":"unknown token"}}"#.into(),
        )]);
        let path = dir.path().join("config.yaml");
        let e = add(
            &path,
            opts("local", &server.url, Some(token_file)),
            None,
            &mut vec![],
            &mut vec![],
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "unauthenticated: unknown token");
        assert!(!path.exists());
    }

    #[test]
    fn add_refuses_existing_name_empty_token_file_and_bad_scheme() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        let mut c = config::Config::default();
        c.add_remote("local", Remote::default()).unwrap();
        config::save(&path, &c).unwrap();
        let e = add(
            &path,
            opts("local", "http://h:1", None),
            None,
            &mut vec![],
            &mut vec![],
        )
        .unwrap_err();
        assert!(e.to_string().contains("remote local already exists"), "{e}");
        let empty = dir.path().join("empty");
        fs::write(&empty, "\n").unwrap();
        let e = add(
            &path,
            opts("x", "http://h:1", Some(empty)),
            None,
            &mut vec![],
            &mut vec![],
        )
        .unwrap_err();
        assert!(e.to_string().contains("holds no token"), "{e}");
        let e = add(
            &path,
            opts("x", "ftp://h:1", None),
            None,
            &mut vec![],
            &mut vec![],
        )
        .unwrap_err();
        assert!(e.to_string().contains("unsupported URL scheme"), "{e}");
    }

    #[test]
    fn list_switch_remove_edit_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        let mut c = config::Config::default();
        let r = |url: &str, project: Option<&str>| Remote {
            url: url.into(),
            project: project.map(Into::into),
            ..Remote::default()
        };
        c.add_remote("local", r("https://127.0.0.1:7080", Some("default")))
            .unwrap();
        c.add_remote("lab", r("https://lab.example:7080", None))
            .unwrap();
        config::save(&path, &c).unwrap();
        let run_cmd = |cmd| {
            let (mut out, mut err) = (vec![], vec![]);
            run(cmd, &path, None, &mut out, &mut err).unwrap();
            (
                String::from_utf8(out).unwrap(),
                String::from_utf8(err).unwrap(),
            )
        };
        assert_eq!(
            run_cmd(RemoteCommand::List).0,
            "NAME   URL                       PROJECT  CURRENT\n\
             lab    https://lab.example:7080  -\n\
             local  https://127.0.0.1:7080    default  *\n"
        );
        assert_eq!(
            run_cmd(RemoteCommand::Switch { name: "lab".into() }).0,
            "current remote: lab\n"
        );
        assert!(run_cmd(RemoteCommand::List)
            .0
            .contains("lab    https://lab.example:7080  -        *\n"));
        let (out, err) = run_cmd(RemoteCommand::Remove { name: "lab".into() });
        assert_eq!(out, "remote lab removed\n");
        assert!(err.contains("no current remote"), "{err}");
        let c = config::load(&path).unwrap();
        assert_eq!(c.current_remote, None);
        assert_eq!(c.remotes.keys().collect::<Vec<_>>(), ["local"]);
        let e = run(
            RemoteCommand::Switch {
                name: "nope".into(),
            },
            &path,
            None,
            &mut vec![],
            &mut vec![],
        )
        .unwrap_err();
        assert!(e.to_string().contains("no remote named nope"), "{e}");
    }
}
