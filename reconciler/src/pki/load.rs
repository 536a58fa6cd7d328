//! Loading the PKI at start. The CA lives in the database (one for all replicas): taken
//! from there, else adopted from `DATA_DIR/tls/` (an upgraded single-replica install),
//! else generated, and mirrored to `DATA_DIR/tls/ca.crt` and `ca.key` (0600). Each replica
//! keeps its own server certificate in `DATA_DIR/tls/server.crt` and `server.key` (0600),
//! issued again when the database's CA did not sign it, a SAN is missing or it expires
//! soon. What to do with the CA is decided by [`plan_ca`] (pure, table tested).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{
    check_key_matches, generate_ca, issue_server_identity, parse_certs, server_needs_reissue,
    server_sans, CaMaterial, Pki, PkiError, SanOptions, ServerIdentity, CA_CERT_FILE, CA_KEY_FILE,
    SERVER_CERT_FILE, SERVER_KEY_FILE,
};
use crate::store::{ClusterCaRow, Store};

/// How the server certificate is chosen.
#[derive(Debug, Clone, Default)]
pub struct PkiOptions {
    pub sans: SanOptions,
    /// `--tls-cert` / `--tls-key`: replace server.crt/server.key on the HTTPS API.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// Where the CA [`load`] uses came from, for the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PkiOrigin {
    /// The database had it.
    Loaded,
    /// This replica generated it (first start of the cluster).
    Created,
    /// This replica stored the CA it found in `DATA_DIR/tls/` (an upgrade).
    Adopted,
}

/// The CA files found in `DATA_DIR/tls/`, as text.
#[derive(Clone, Default)]
pub struct LocalCa {
    pub cert_pem: Option<String>,
    pub key_pem: Option<String>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("cert", &self.cert_pem.is_some())
            .field("key", &self.key_pem.is_some())
            .finish()
    }
}

/// What [`load`] does with the CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaPlan {
    /// Use the database's CA. `replace_local`: `DATA_DIR/tls/` holds CA files that are not
    /// the database's; they are set aside (`ca.crt.replaced`, `ca.key.replaced`) before
    /// the database's CA is written there.
    UseDatabase { replace_local: bool },
    /// The database has none: insert the local CA (an upgraded single-replica install).
    AdoptLocal,
    /// No CA anywhere: generate one and insert it.
    Generate,
}

fn same_cert(a: &str, b: &str) -> bool {
    match (parse_certs("a", a), parse_certs("b", b)) {
        (Ok(a), Ok(b)) => a[0] == b[0],
        _ => false,
    }
}

/// Decides from the database's CA and the local files what to do with the CA. Half a
/// local CA (one of the two files) with nothing in the database is an error, as a key
/// lost by accident must not silently become a new CA.
pub fn plan_ca(db: Option<&CaMaterial>, local: &LocalCa) -> Result<CaPlan, PkiError> {
    match (db, &local.cert_pem, &local.key_pem) {
        (Some(db), cert, key) => {
            let cert_other = cert.as_ref().is_some_and(|c| !same_cert(c, &db.cert_pem));
            let key_other = key.as_ref().is_some_and(|k| k.trim() != db.key_pem.trim());
            Ok(CaPlan::UseDatabase {
                replace_local: cert_other || key_other,
            })
        }
        (None, Some(_), Some(_)) => Ok(CaPlan::AdoptLocal),
        (None, None, None) => Ok(CaPlan::Generate),
        (None, _, _) => Err(PkiError::Certificate(format!(
            "{CA_CERT_FILE} and {CA_KEY_FILE} must both exist or both be missing \
             (the database holds no cluster CA)"
        ))),
    }
}

/// This machine's host name, if it has one.
pub fn host_name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty() && s.len() <= 253)
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            action: "reading",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes `contents` atomically (temp file + rename) with `mode`.
pub fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let io = |action, source| PkiError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io("creating", e))?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| io("writing", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("renaming", e))
}

/// Renames `path` to `path.replaced` if it exists.
fn set_aside(path: &Path) -> Result<(), PkiError> {
    let mut to = path.as_os_str().to_owned();
    to.push(".replaced");
    match std::fs::rename(path, &to) {
        Ok(()) => {
            tracing::warn!(
                file = %path.display(),
                to = %Path::new(&to).display(),
                "this replica's CA file is not the cluster CA in the database; set aside"
            );
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(PkiError::Io {
            action: "renaming",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Stores `mine` unless the database has a CA already; returns the stored CA and whether
/// it is `mine` (a replica starting at the same time may have won).
async fn insert_if_absent(store: &Store, mine: CaMaterial) -> Result<(CaMaterial, bool), PkiError> {
    let stored = store
        .insert_cluster_ca_if_absent(&ClusterCaRow {
            cert_pem: mine.cert_pem.clone(),
            key_pem: mine.key_pem.clone(),
        })
        .await?;
    let won = stored.cert_pem == mine.cert_pem && stored.key_pem == mine.key_pem;
    Ok((
        CaMaterial {
            cert_pem: stored.cert_pem,
            key_pem: stored.key_pem,
        },
        won,
    ))
}

/// The cluster CA: from the database, else adopted from `local`, else generated.
async fn cluster_ca(store: &Store, local: &LocalCa) -> Result<(CaMaterial, PkiOrigin), PkiError> {
    let db = store.cluster_ca().await?.map(|r| CaMaterial {
        cert_pem: r.cert_pem,
        key_pem: r.key_pem,
    });
    let (mine, origin) = match (plan_ca(db.as_ref(), local)?, db) {
        (CaPlan::UseDatabase { .. }, Some(db)) => return Ok((db, PkiOrigin::Loaded)),
        (CaPlan::AdoptLocal, _) => {
            let mine = CaMaterial {
                cert_pem: local.cert_pem.clone().unwrap_or_default(),
                key_pem: local.key_pem.clone().unwrap_or_default(),
            };
            let der = parse_certs(CA_CERT_FILE, &mine.cert_pem)?.remove(0);
            check_key_matches(&der, &mine.key_pem)?;
            (mine, PkiOrigin::Adopted)
        }
        _ => (generate_ca()?, PkiOrigin::Created),
    };
    let (ca, won) = insert_if_absent(store, mine).await?;
    Ok((ca, if won { origin } else { PkiOrigin::Loaded }))
}

fn read_api_identity(opts: &PkiOptions) -> Result<Option<ServerIdentity>, PkiError> {
    let required = |path: &PathBuf| {
        read(path)?.ok_or_else(|| PkiError::Io {
            action: "reading",
            path: path.clone(),
            source: std::io::ErrorKind::NotFound.into(),
        })
    };
    match (&opts.cert_file, &opts.key_file) {
        (Some(cert), Some(key)) => Ok(Some(ServerIdentity {
            chain_pem: required(cert)?,
            key_pem: required(key)?,
        })),
        (None, None) => Ok(None),
        _ => Err(PkiError::Certificate(
            "--tls-cert and --tls-key go together".into(),
        )),
    }
}

/// Loads the PKI: the cluster CA from the database (see [`CaPlan`]), mirrored to `dir`
/// (`DATA_DIR/tls`), and this replica's server certificate from `dir`, issued again when
/// missing, not signed by that CA, lacking a SAN it must have, or expiring soon. With
/// `--tls-cert/--tls-key` the HTTPS API presents those files; the gateway keeps the
/// generated certificate, which agents verify against the pinned cluster CA.
pub async fn load(
    store: &Store,
    dir: &Path,
    opts: &PkiOptions,
) -> Result<(Pki, PkiOrigin), PkiError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        action: "creating",
        path: dir.to_owned(),
        source,
    })?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let api = read_api_identity(opts)?;
    let (ca_crt, ca_key) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    let local = LocalCa {
        cert_pem: read(&ca_crt)?,
        key_pem: read(&ca_key)?,
    };
    let (ca, origin) = cluster_ca(store, &local).await?;
    let replace = plan_ca(Some(&ca), &local)?
        == (CaPlan::UseDatabase {
            replace_local: true,
        });
    if replace {
        set_aside(&ca_crt)?;
        set_aside(&ca_key)?;
    }
    if replace || local.key_pem.as_deref() != Some(ca.key_pem.as_str()) {
        write_file(&ca_key, &ca.key_pem, 0o600)?;
    }
    if replace || local.cert_pem.as_deref() != Some(ca.cert_pem.as_str()) {
        write_file(&ca_crt, &ca.cert_pem, 0o644)?;
    }

    let sans = server_sans(&opts.sans);
    let (crt, key) = (dir.join(SERVER_CERT_FILE), dir.join(SERVER_KEY_FILE));
    let existing = match (read(&crt)?, read(&key)?) {
        (Some(chain_pem), Some(key_pem)) => Some(ServerIdentity { chain_pem, key_pem }),
        _ => None,
    };
    let server = match existing {
        Some(id) if !server_needs_reissue(&id, &ca, &sans) => id,
        _ => {
            let id = issue_server_identity(&ca, &sans)?;
            write_file(&key, &id.key_pem, 0o600)?;
            write_file(&crt, &id.chain_pem, 0o644)?;
            tracing::info!(sans = ?sans, "issued the server certificate");
            id
        }
    };
    let pki = Pki::new(ca, server)?;
    let pki = match &api {
        Some(api) => pki.with_api_identity(api)?,
        None => pki,
    };
    Ok((pki, origin))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::default_database_url;

    fn local(cert: Option<&str>, key: Option<&str>) -> LocalCa {
        LocalCa {
            cert_pem: cert.map(str::to_owned),
            key_pem: key.map(str::to_owned),
        }
    }

    #[test]
    fn plan_ca_table() {
        let db = generate_ca().unwrap();
        let other = generate_ca().unwrap();
        let (dc, dk) = (db.cert_pem.as_str(), db.key_pem.as_str());
        let (oc, ok) = (other.cert_pem.as_str(), other.key_pem.as_str());
        let reformatted = format!("\n{dc}\n");
        let use_db = |replace_local| Ok(CaPlan::UseDatabase { replace_local });
        let cases: Vec<(Option<&CaMaterial>, LocalCa, Result<CaPlan, ()>)> = vec![
            (Some(&db), local(None, None), use_db(false)),
            (Some(&db), local(Some(dc), Some(dk)), use_db(false)),
            (Some(&db), local(Some(&reformatted), None), use_db(false)),
            (Some(&db), local(Some(oc), Some(ok)), use_db(true)),
            (Some(&db), local(Some(dc), Some(ok)), use_db(true)),
            (Some(&db), local(Some("garbage"), None), use_db(true)),
            (Some(&db), local(None, Some(ok)), use_db(true)),
            (None, local(Some(oc), Some(ok)), Ok(CaPlan::AdoptLocal)),
            (None, local(None, None), Ok(CaPlan::Generate)),
            (None, local(Some(oc), None), Err(())),
            (None, local(None, Some(ok)), Err(())),
        ];
        for (i, (db, local, want)) in cases.into_iter().enumerate() {
            let got = plan_ca(db, &local).map_err(|_| ());
            assert_eq!(got, want, "case {i}: db {} {local:?}", db.is_some());
        }
    }

    fn sans(extra: &[&str]) -> SanOptions {
        SanOptions {
            extra: extra.iter().map(|s| s.to_string()).collect(),
            host_name: Some("box".into()),
            listen: vec![],
        }
    }

    async fn store(dir: &Path) -> Store {
        Store::open(&default_database_url(dir)).await.unwrap()
    }

    #[tokio::test]
    async fn load_writes_files_with_modes_and_reloads_same_ca() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let tls = dir.path().join("tls");
        let opts = PkiOptions {
            sans: sans(&[]),
            ..Default::default()
        };
        let (a, origin) = load(&store, &tls, &opts).await.unwrap();
        assert_eq!(origin, PkiOrigin::Created);
        for (f, mode) in [
            (CA_CERT_FILE, 0o644),
            (CA_KEY_FILE, 0o600),
            (SERVER_CERT_FILE, 0o644),
            (SERVER_KEY_FILE, 0o600),
        ] {
            let m = std::fs::metadata(tls.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(m, mode, "{f}");
        }
        let db = store.cluster_ca().await.unwrap().unwrap();
        assert_eq!(db.cert_pem, a.ca_pem());
        assert_eq!(
            std::fs::read_to_string(tls.join(CA_CERT_FILE)).unwrap(),
            db.cert_pem
        );
        let server_before = std::fs::read_to_string(tls.join(SERVER_CERT_FILE)).unwrap();
        let (b, origin) = load(&store, &tls, &opts).await.unwrap();
        assert_eq!(origin, PkiOrigin::Loaded);
        assert_eq!(a.ca_fingerprint(), b.ca_fingerprint());
        assert_eq!(
            server_before,
            std::fs::read_to_string(tls.join(SERVER_CERT_FILE)).unwrap()
        );
        // A new --tls-san re-issues the server certificate under the same CA.
        let more = PkiOptions {
            sans: sans(&["added.example"]),
            ..Default::default()
        };
        let (c, _) = load(&store, &tls, &more).await.unwrap();
        assert_eq!(a.ca_fingerprint(), c.ca_fingerprint());
        assert_ne!(
            server_before,
            std::fs::read_to_string(tls.join(SERVER_CERT_FILE)).unwrap()
        );
    }

    #[tokio::test]
    async fn load_half_a_local_ca_and_an_empty_database_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let tls = dir.path().join("tls");
        std::fs::create_dir_all(&tls).unwrap();
        std::fs::write(tls.join(CA_CERT_FILE), generate_ca().unwrap().cert_pem).unwrap();
        let err = load(&store, &tls, &PkiOptions::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("must both exist"), "{err}");
        assert!(store.cluster_ca().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn load_a_local_ca_whose_key_does_not_match_is_not_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let tls = dir.path().join("tls");
        std::fs::create_dir_all(&tls).unwrap();
        std::fs::write(tls.join(CA_CERT_FILE), generate_ca().unwrap().cert_pem).unwrap();
        std::fs::write(tls.join(CA_KEY_FILE), generate_ca().unwrap().key_pem).unwrap();
        let err = load(&store, &tls, &PkiOptions::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        assert!(store.cluster_ca().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn load_with_tls_cert_serves_it_on_the_api_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let other = generate_ca().unwrap();
        let id = issue_server_identity(&other, &["given.example".into()]).unwrap();
        let (cert, key) = (dir.path().join("s.crt"), dir.path().join("s.key"));
        std::fs::write(&cert, &id.chain_pem).unwrap();
        std::fs::write(&key, &id.key_pem).unwrap();
        let opts = PkiOptions {
            cert_file: Some(cert),
            key_file: Some(key),
            ..Default::default()
        };
        let (p, _) = load(&store, &dir.path().join("tls"), &opts).await.unwrap();
        assert!(store.cluster_ca().await.unwrap().is_some());
        let (api_chain, _) = p.api_override.as_ref().unwrap();
        assert_eq!(api_chain, &parse_certs("given", &id.chain_pem).unwrap());
        // The gateway keeps a chain ending in the cluster CA, so agents can pin it.
        assert_eq!(p.server_chain.last(), Some(&p.ca_der));
        assert_ne!(p.server_chain[0], api_chain[0]);
        p.https_config().unwrap();
    }
}
