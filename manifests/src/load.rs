//! Reading manifests: a file, a directory's `*.yaml`/`*.yml` files (sorted by name, not
//! recursive, dotfiles skipped), or stdin text. Every document of every file is parsed
//! and validated before anything is returned, so one bad document applies nothing; the
//! objects come back in apply order (dependencies first).

use std::path::{Path, PathBuf};

use otherix_api::manifest::parse::check_duplicates;
use otherix_api::manifest::{parse_manifests, sort_for_apply};
use otherix_api::{ManifestError, ParsedObject};

use crate::Error;

/// The file name stdin documents are reported under.
pub const STDIN_NAME: &str = "<stdin>";

/// Whether `path` names a manifest file a directory load picks up.
pub fn is_manifest_file_name(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// The manifest files of `dir`, sorted by name, each as `dir` joined with its name (so
/// messages show the path as the user typed it).
pub fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let read_err = |source| Error::Read {
        path: dir.display().to_string(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = PathBuf::from(entry.file_name());
        if !is_manifest_file_name(&name) {
            continue;
        }
        // Follows symlinks; a dangling one (an editor's lock file) is skipped.
        if std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// Loads a manifest file or directory.
pub fn load_path(path: &Path) -> Result<Vec<ParsedObject>, Error> {
    let read_err = |p: &Path| {
        let path = p.display().to_string();
        move |source| Error::Read { path, source }
    };
    let meta = std::fs::metadata(path).map_err(read_err(path))?;
    let files = if meta.is_dir() {
        manifest_files(path)?
    } else {
        vec![path.to_path_buf()]
    };
    let mut texts = Vec::with_capacity(files.len());
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(read_err(&file))?;
        texts.push((file.display().to_string(), text));
    }
    load_texts(&texts)
}

/// Loads documents read from stdin.
pub fn load_stdin(text: &str) -> Result<Vec<ParsedObject>, Error> {
    load_texts(&[(STDIN_NAME.to_owned(), text.to_owned())])
}

/// Parses `(file name, text)` pairs: every error of every file (plus objects declared in
/// two files) or all objects in apply order.
pub fn load_texts(files: &[(String, String)]) -> Result<Vec<ParsedObject>, Error> {
    let mut objects = Vec::new();
    let mut errors: Vec<ManifestError> = Vec::new();
    for (name, text) in files {
        match parse_manifests(name, text) {
            Ok(mut objs) => objects.append(&mut objs),
            Err(mut errs) => errors.append(&mut errs),
        }
    }
    errors.extend(check_duplicates(&objects));
    if !errors.is_empty() {
        return Err(Error::Invalid(errors));
    }
    sort_for_apply(&mut objects);
    Ok(objects)
}

/// The source id a directory's objects are stamped with: its canonical absolute path.
pub fn source_id(dir: &Path) -> Result<String, Error> {
    let canonical = std::fs::canonicalize(dir).map_err(|source| Error::Read {
        path: dir.display().to_string(),
        source,
    })?;
    Ok(canonical.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn vm(name: &str, extra: &str) -> String {
        format!(
            "apiVersion: otherix.dev/v1\nkind: VM\nmetadata:\n  name: {name}\nspec:\n  image_url: http://i/x.qcow2\n  arch: amd64\n{extra}"
        )
    }

    const POOL: &str =
        "apiVersion: otherix.dev/v1\nkind: Pool\nmetadata:\n  name: fast\nspec: {}\n";

    fn texts(files: &[(&str, &str)]) -> Vec<(String, String)> {
        files
            .iter()
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
            .collect()
    }

    fn error_lines(files: &[(&str, &str)]) -> Vec<String> {
        match load_texts(&texts(files)) {
            Err(Error::Invalid(errs)) => errs.iter().map(ToString::to_string).collect(),
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn load_texts_error_table_locates_each_error_in_its_file() {
        let bad_vcpus = vm("web-1", "  vcpus: 0\n");
        let bad_arch = vm("web-2", "").replace("arch: amd64", "arch: sparc");
        // (files, expected error prefixes)
        type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a str>);
        let table: Vec<Case> = vec![
            (
                vec![("dir/web.yaml", &bad_vcpus)],
                vec!["dir/web.yaml:8:3: spec.vcpus: must be 1..128 (got 0)"],
            ),
            (
                vec![("dir/a.yaml", &bad_vcpus), ("dir/b.yaml", &bad_arch)],
                vec![
                    "dir/a.yaml:8:3: spec.vcpus: must be 1..128 (got 0)",
                    "dir/b.yaml:7:3: spec.arch: unknown variant `sparc`",
                ],
            ),
            (
                vec![("a.yaml", POOL), ("b.yaml", "kind: [\n")],
                vec!["b.yaml:"],
            ),
            (
                vec![("a.yaml", POOL), ("b.yaml", POOL)],
                vec!["b.yaml:1:1: metadata.name: pool/fast is declared twice (first at a.yaml:1)"],
            ),
        ];
        for (files, want) in table {
            let got = error_lines(&files);
            assert_eq!(got.len(), want.len(), "{got:?}");
            for (g, w) in got.iter().zip(&want) {
                assert!(g.starts_with(w), "want prefix {w:?}, got {g:?}");
            }
        }
    }

    #[test]
    fn load_texts_valid_files_sorted_dependencies_first() {
        let web = vm("web-1", "  pool: fast\n");
        let objs = load_texts(&texts(&[("a.yaml", &web), ("b.yaml", POOL)])).unwrap();
        let refs: Vec<String> = objs.iter().map(|o| o.object.reference()).collect();
        assert_eq!(refs, ["pool/fast", "vm/web-1"]);
        assert_eq!(objs[1].file, "a.yaml");
    }

    #[test]
    fn load_path_directory_reads_yaml_files_sorted_non_recursive() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("b.yml"), vm("web-2", "")).unwrap();
        std::fs::write(d.join("a.yaml"), vm("web-1", "")).unwrap();
        std::fs::write(d.join("notes.txt"), "not yaml").unwrap();
        std::fs::write(d.join(".hidden.yaml"), "garbage: [").unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/c.yaml"), "garbage: [").unwrap();
        let files = manifest_files(d).unwrap();
        assert_eq!(files, vec![d.join("a.yaml"), d.join("b.yml")]);
        let objs = load_path(d).unwrap();
        let refs: Vec<String> = objs.iter().map(|o| o.object.reference()).collect();
        assert_eq!(refs, ["vm/web-1", "vm/web-2"]);
        assert_eq!(objs[0].file, d.join("a.yaml").display().to_string());
    }

    #[test]
    fn load_path_names_files_as_typed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("web.yaml"), vm("web-1", "  vcpus: 0\n")).unwrap();
        let typed = format!("{}/", dir.path().display());
        let err = load_path(Path::new(&typed)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("{typed}web.yaml:8:3: spec.vcpus")),
            "{err}"
        );
    }

    #[test]
    fn load_path_missing_file_is_read_error() {
        let err = load_path(Path::new("/nonexistent/x.yaml")).unwrap_err();
        assert!(matches!(err, Error::Read { .. }), "{err:?}");
        assert_eq!(err.to_string(), "cannot read /nonexistent/x.yaml");
    }

    #[test]
    fn load_stdin_reports_stdin_name() {
        let err = load_stdin(&vm("web-1", "  vcpus: 0\n")).unwrap_err();
        assert!(err.to_string().starts_with("<stdin>:8:3: "), "{err}");
    }
}
