//! CLI habits that need no server: `otherix completion bash|zsh|fish` scripts that the
//! real shells accept (and that bash really completes with), and `NO_COLOR` turning off
//! every ANSI escape the CLI can print.

use std::path::Path;
use std::process::{Command, Output};

use otherix_e2e::paths::bin;

fn otherix(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin("otherix"));
    cmd.args(args)
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR")
        .env_remove("CLICOLOR_FORCE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run otherix")
}

/// The path of `shell` on this machine, if it has one.
fn which(shell: &str) -> Option<String> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {shell}")])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !path.is_empty()).then_some(path)
}

/// `<shell> -n FILE`: parses the script without running it.
fn syntax_check(shell: &str, script: &Path) -> Output {
    Command::new(shell)
        .arg("-n")
        .arg(script)
        .output()
        .expect("run shell -n")
}

#[test]
fn completion_scripts_parse_in_their_shells() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = otherix(&["completion", shell], &[]);
        assert!(out.status.success(), "completion {shell}: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("otherix"), "{shell} script: {text}");
        let script = dir.path().join(format!("otherix.{shell}"));
        std::fs::write(&script, &text).unwrap();
        match which(shell) {
            Some(path) => {
                let check = syntax_check(&path, &script);
                assert!(
                    check.status.success(),
                    "{shell} -n rejects the script: {check:?}"
                );
            }
            None => eprintln!("{shell} is not installed: its script was only generated"),
        }
    }
}

/// Bash really completes with the script: `otherix v<TAB>` offers `vm`, and
/// `otherix vm <TAB>` offers `create` and `list`.
#[test]
fn bash_completes_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("otherix.bash");
    let out = otherix(&["completion", "bash"], &[]);
    assert!(out.status.success(), "{out:?}");
    std::fs::write(&script, out.stdout).unwrap();
    let complete = |words: &str| -> Vec<String> {
        let body = format!(
            "source {script}\n\
             COMP_WORDS=({words})\n\
             COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))\n\
             COMP_LINE=\"${{COMP_WORDS[*]}}\"\n\
             COMP_POINT=${{#COMP_LINE}}\n\
             _otherix otherix \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
             printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
            script = script.display()
        );
        let out = Command::new("bash").args(["-c", &body]).output().unwrap();
        assert!(out.status.success(), "bash: {out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(complete("otherix v"), ["vm"]);
    let vm = complete("otherix vm ''");
    for want in ["create", "list", "delete"] {
        assert!(vm.iter().any(|w| w == want), "otherix vm <TAB>: {vm:?}");
    }
}

/// The CLI's only colour is clap's (help and usage errors); `NO_COLOR` with any non-empty
/// value turns it off even when `CLICOLOR_FORCE` asks for colour (no-color.org), and
/// CLICOLOR_FORCE alone proves the check can see escapes.
#[test]
fn no_color_removes_every_escape() {
    let cases: &[(&[(&str, &str)], bool)] = &[
        (&[("CLICOLOR_FORCE", "1")], true),
        (&[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")], false),
        (&[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "yes")], false),
        (&[("NO_COLOR", "1")], false),
        (&[], false), // not a terminal
    ];
    for (env, colour) in cases {
        for args in [
            &["vm", "bogus"][..],
            &["vm", "--help"][..],
            &["completion", "tcsh"][..],
        ] {
            let out = otherix(args, env);
            let text = [out.stdout.as_slice(), out.stderr.as_slice()].concat();
            assert!(!text.is_empty(), "{args:?}: no output");
            assert_eq!(
                text.contains(&0x1b),
                *colour,
                "{args:?} with {env:?}: {}",
                String::from_utf8_lossy(&text)
            );
        }
    }
}
