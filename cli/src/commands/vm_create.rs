//! `otherix vm create`: flags -> a validated `CreateVmRequest` -> `POST /v1/vms`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use otherix_api::validate::validate_create_vm;
use otherix_api::{CreateVmRequest, VmSpec};

use super::{finish_async, wait_timeout, Announce, CommandError, Ctx};
use crate::cli::CreateArgsRaw;

/// What `vm create` does, once its flags are resolved and its files read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub request: CreateVmRequest,
    pub wait: Option<Duration>,
}

impl Options {
    /// Builds the request from the flags, reading --user-data / --network-config from
    /// their files (or `stdin` for `-`), and validates it with the server's rules.
    pub fn from_args(args: CreateArgsRaw, stdin: &mut dyn Read) -> Result<Options, CommandError> {
        let mut spec = VmSpec::new(args.image_url, args.arch);
        spec.image_sha256 = args.image_sha256;
        spec.firmware = args.firmware;
        spec.firmware_id = args.firmware_id;
        spec.format = args.format.map(Into::into);
        spec.disk_gib = args.disk_gib;
        spec.pool = args.pool;
        spec.node = args.node;
        spec.network = args.network;
        spec.vcpus = args.vcpus;
        spec.memory_mb = args.memory_mb;
        spec.no_cloud_init = args.no_cloud_init;
        spec.stop_timeout_secs = args.stop_timeout;
        spec.restart_policy = args.restart_policy;
        spec.ports = args.ports;
        spec.user_data = read_input("--user-data", args.user_data.as_deref(), stdin)?;
        spec.network_config =
            read_input("--network-config", args.network_config.as_deref(), stdin)?;
        for path in &args.ssh_keys {
            let text = read_input("--ssh-key", Some(path), stdin)?.unwrap_or_default();
            spec.ssh_authorized_keys.extend(authorized_keys(&text));
        }
        let mut labels = std::collections::BTreeMap::new();
        for text in &args.labels {
            let label = otherix_api::labels::LabelSelector::parse("--label", text)?;
            labels.insert(label.key, label.value);
        }
        let request = CreateVmRequest {
            name: args.name,
            spec,
            labels,
        };
        validate_create_vm(&request)?;
        Ok(Options {
            request,
            wait: wait_timeout(&args.wait),
        })
    }
}

/// The keys of an authorized_keys text: every line but blanks and `#` comments.
fn authorized_keys(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
}

/// Reads a file flag's contents; `-` means stdin.
fn read_input(
    flag: &'static str,
    path: Option<&Path>,
    stdin: &mut dyn Read,
) -> Result<Option<String>, CommandError> {
    let Some(path) = path else { return Ok(None) };
    let read = if path.as_os_str() == "-" {
        let mut s = String::new();
        stdin.read_to_string(&mut s).map(|_| s)
    } else {
        std::fs::read_to_string(path)
    };
    read.map(Some).map_err(|source| CommandError::ReadInput {
        flag,
        path: PathBuf::from(path),
        source,
    })
}

pub fn run(ctx: &mut Ctx<'_>, opts: Options) -> Result<(), CommandError> {
    let accepted = ctx.client.create_vm(&opts.request)?;
    finish_async(
        ctx,
        "created",
        Announce::Always,
        &opts.request.name,
        accepted,
        opts.wait,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command, VmCommand};
    use clap::Parser;
    use otherix_api::{Arch, DiskFormat, PortForward, PortProtocol, RestartPolicy};
    use std::io::Write;

    fn args(extra: &[&str]) -> CreateArgsRaw {
        let mut argv = vec![
            "otherix",
            "vm",
            "create",
            "web-1",
            "--image-url",
            "http://x/i.img",
            "--arch",
            "amd64",
        ];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Vm(VmCommand::Create(args)) => args.0,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn options_all_flags_map_into_spec() {
        let mut ud = tempfile::NamedTempFile::new().unwrap();
        writeln!(ud, "#cloud-config").unwrap();
        let opts = Options::from_args(
            args(&[
                "--image-sha256",
                &"a".repeat(64),
                "--firmware",
                "ovmf",
                "--format",
                "raw",
                "--disk-gib",
                "20",
                "--pool",
                "fast",
                "--node",
                "node-1",
                "--network",
                "br0",
                "--vcpus",
                "4",
                "--memory-mb",
                "4096",
                "--user-data",
                ud.path().to_str().unwrap(),
                "--network-config",
                "-",
                "--stop-timeout",
                "90s",
                "--restart-policy",
                "never",
                "--label",
                "app=web",
                "--label",
                "example.com/tier=front",
                "--wait",
                "--wait-timeout",
                "1h",
            ]),
            &mut "version: 2\n".as_bytes(),
        )
        .unwrap();
        let mut want = VmSpec::new("http://x/i.img", Arch::Amd64);
        want.image_sha256 = Some("a".repeat(64));
        want.firmware = Some("ovmf".into());
        want.format = Some(DiskFormat::Raw);
        want.disk_gib = Some(20);
        want.pool = Some("fast".into());
        want.node = Some("node-1".into());
        want.network = Some("br0".into());
        want.vcpus = 4;
        want.memory_mb = 4096;
        want.user_data = Some("#cloud-config\n".into());
        want.network_config = Some("version: 2\n".into());
        want.stop_timeout_secs = Some(90);
        want.restart_policy = RestartPolicy::Never;
        assert_eq!(
            opts,
            Options {
                request: CreateVmRequest {
                    name: "web-1".into(),
                    spec: want,
                    labels: [("app", "web"), ("example.com/tier", "front")]
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                },
                wait: Some(Duration::from_secs(3600)),
            }
        );
    }

    #[test]
    fn options_minimal_flags_send_defaults_and_no_wait() {
        let opts = Options::from_args(args(&[]), &mut std::io::empty()).unwrap();
        assert_eq!(
            opts.request.spec,
            VmSpec::new("http://x/i.img", Arch::Amd64)
        );
        assert_eq!(opts.wait, None);
    }

    #[test]
    fn options_invalid_name_fails_local_validation() {
        let mut a = args(&[]);
        a.name = "Web_1".into();
        let err = Options::from_args(a, &mut std::io::empty()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("validation_failed: name: \"Web_1\" is not a valid name"),
            "{err}"
        );
    }

    #[test]
    fn options_bad_sha256_fails_local_validation() {
        let err = Options::from_args(args(&["--image-sha256", "abc"]), &mut std::io::empty())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "validation_failed: spec.image_sha256: must be 64 hex digits"
        );
    }

    #[test]
    fn options_missing_user_data_file_names_flag_and_path() {
        let err = Options::from_args(
            args(&["--user-data", "/nonexistent/ud.yaml"]),
            &mut std::io::empty(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot read --user-data from /nonexistent/ud.yaml"
        );
    }

    #[test]
    fn options_ssh_key_files_add_every_key_line_and_bad_keys_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.pub");
        let b = dir.path().join("keys");
        let ed = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB5qexample alice@laptop";
        let rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABexample bob";
        std::fs::write(&a, format!("{ed}\n")).unwrap();
        std::fs::write(&b, format!("# team keys\n\n{rsa}\n")).unwrap();
        let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
        let opts = Options::from_args(
            args(&["--ssh-key", a, "--ssh-key", b]),
            &mut std::io::empty(),
        )
        .unwrap();
        assert_eq!(opts.request.spec.ssh_authorized_keys, [ed, rsa]);
        let body = serde_json::to_value(&opts.request).unwrap();
        assert_eq!(body["spec"]["ssh_authorized_keys"][1], rsa);

        std::fs::write(dir.path().join("bad"), "not-a-key AAAA\n").unwrap();
        let bad = dir.path().join("bad");
        let err = Options::from_args(
            args(&["--ssh-key", bad.to_str().unwrap()]),
            &mut std::io::empty(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("spec.ssh_authorized_keys[0]: must start with a key type"),
            "{err}"
        );
        let err = Options::from_args(
            args(&["--ssh-key", "/nonexistent/k.pub"]),
            &mut std::io::empty(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot read --ssh-key from /nonexistent/k.pub"
        );
    }

    #[test]
    fn options_ports_and_policy_map_into_spec_and_body() {
        let opts = Options::from_args(
            args(&[
                "--port",
                "2222:22",
                "--port",
                "5353:53/udp",
                "--restart-policy",
                "always",
            ]),
            &mut std::io::empty(),
        )
        .unwrap();
        assert_eq!(
            opts.request.spec.ports,
            [
                PortForward {
                    host: 2222,
                    guest: 22,
                    protocol: PortProtocol::Tcp
                },
                PortForward {
                    host: 5353,
                    guest: 53,
                    protocol: PortProtocol::Udp
                },
            ]
        );
        let body = serde_json::to_value(&opts.request).unwrap();
        assert_eq!(body["spec"]["restart_policy"], "always");
        assert_eq!(
            body["spec"]["ports"],
            serde_json::json!([{"host": 2222, "guest": 22}, {"host": 5353, "guest": 53, "protocol": "udp"}])
        );
    }

    #[test]
    fn options_default_restart_policy_is_omitted_from_body() {
        let opts = Options::from_args(args(&[]), &mut std::io::empty()).unwrap();
        assert_eq!(opts.request.spec.restart_policy, RestartPolicy::OnFailure);
        let body = serde_json::to_value(&opts.request).unwrap();
        assert!(body["spec"].get("restart_policy").is_none(), "{body}");
        assert!(body["spec"].get("ports").is_none(), "{body}");
    }

    #[test]
    fn options_duplicate_host_port_fails_local_validation() {
        let err = Options::from_args(
            args(&["--port", "8080:80", "--port", "8080:81"]),
            &mut std::io::empty(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("validation_failed: spec.ports[1].host:"),
            "{err}"
        );
    }
}
