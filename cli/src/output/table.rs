//! Column-aligned tables: left-aligned cells, two spaces between columns, `-` for none,
//! no trailing whitespace.

use otherix_api::{CachedImage, Firmware, Network, Node, Pool, Task, Vm};

use crate::config::Config;
use crate::wire::{Project, Token};

use super::{human_size, or_none, short_sha, NONE};

/// Spaces between columns.
const GAP: usize = 2;

/// One column: its header and the width it never goes below.
struct Column {
    header: &'static str,
    min_width: usize,
}

const fn col(header: &'static str, min_width: usize) -> Column {
    Column { header, min_width }
}

/// Renders `rows` under `columns`; every row has one cell per column.
fn render(columns: &[Column], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([c.header.len(), c.min_width])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let headers: Vec<String> = columns.iter().map(|c| c.header.to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(&headers).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count() + GAP;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `vm list`: `NAME STATUS ARCH NODE POOL NETWORK`, with `ID` first when `show_ids`.
/// NODE and POOL are where the agent reports the VM, NETWORK the requested network.
pub fn vms(vms: &[Vm], show_ids: bool) -> String {
    vm_table(vms, show_ids, None)
}

/// `vm list --all-projects`: [`vms`] with a `PROJECT` column first (`projects[i]` is the
/// project of `vms[i]`).
pub fn vms_in_projects(vms: &[Vm], projects: &[String], show_ids: bool) -> String {
    vm_table(vms, show_ids, Some(projects))
}

/// `vm list -o wide`: [`vms`] (with `PROJECT` first when `projects` is given) plus `IP`,
/// the guest's first address as its guest agent reports it.
pub fn vms_wide(vms: &[Vm], show_ids: bool, projects: Option<&[String]>) -> String {
    let mut columns = vm_columns(show_ids);
    columns.push(col("IP", 0));
    let mut rows: Vec<Vec<String>> = vms
        .iter()
        .map(|vm| {
            let mut row = vm_row(vm, show_ids);
            row.push(or_none(primary_address(&vm.status.addresses)));
            row
        })
        .collect();
    with_projects(&mut columns, &mut rows, projects);
    render(&columns, &rows)
}

/// `PROJECT` as the first column, when listing across projects.
fn with_projects(columns: &mut Vec<Column>, rows: &mut [Vec<String>], projects: Option<&[String]>) {
    let Some(projects) = projects else { return };
    columns.insert(0, col("PROJECT", 0));
    for (i, row) in rows.iter_mut().enumerate() {
        let p = projects.get(i).map_or(NONE, String::as_str);
        row.insert(0, p.to_owned());
    }
}

fn vm_table(vms: &[Vm], show_ids: bool, projects: Option<&[String]>) -> String {
    let mut columns = vm_columns(show_ids);
    let mut rows: Vec<Vec<String>> = vms.iter().map(|vm| vm_row(vm, show_ids)).collect();
    with_projects(&mut columns, &mut rows, projects);
    render(&columns, &rows)
}

fn vm_columns(show_ids: bool) -> Vec<Column> {
    // Minimum widths keep short names aligned like the documented example.
    let mut columns = vec![
        col("NAME", 9),
        col("STATUS", 0),
        col("ARCH", 0),
        col("NODE", 8),
        col("POOL", 8),
        col("NETWORK", 0),
    ];
    if show_ids {
        columns.insert(0, col("ID", 0));
    }
    columns
}

fn vm_row(vm: &Vm, show_ids: bool) -> Vec<String> {
    let mut row = vec![
        vm.name.clone(),
        vm.status.phase.to_string(),
        vm.spec.arch.to_string(),
        or_none(vm.status.node.as_deref()),
        or_none(vm.status.pool.as_deref()),
        or_none(vm.spec.network.as_deref()),
    ];
    if show_ids {
        row.insert(0, vm.id.to_string());
    }
    row
}

/// `task list`: `ID KIND STATUS VM NODE CREATED`.
pub fn tasks(tasks: &[Task]) -> String {
    task_table(tasks, None)
}

/// `task list --all-projects`: [`tasks`] with a `PROJECT` column first.
pub fn tasks_in_projects(tasks: &[Task], projects: &[String]) -> String {
    task_table(tasks, Some(projects))
}

fn task_table(tasks: &[Task], projects: Option<&[String]>) -> String {
    let mut columns = vec![
        col("ID", 0),
        col("KIND", 0),
        col("STATUS", 0),
        col("VM", 0),
        col("NODE", 0),
        col("CREATED", 0),
    ];
    let mut rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.kind.to_string(),
                t.status.to_string(),
                or_none(t.vm_name.as_deref()),
                or_none(t.node.as_deref()),
                t.created_at.clone(),
            ]
        })
        .collect();
    with_projects(&mut columns, &mut rows, projects);
    render(&columns, &rows)
}

/// `node list`: `NAME STATUS ARCH ACCEL VCPUS MEMORY POOLS`; VCPUS and MEMORY are
/// `allocated/capacity`, memory in MiB.
pub fn nodes(nodes: &[Node]) -> String {
    let columns = [
        col("NAME", 0),
        col("STATUS", 0),
        col("ARCH", 0),
        col("ACCEL", 0),
        col("VCPUS", 0),
        col("MEMORY", 0),
        col("POOLS", 0),
    ];
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.status.as_str().to_owned(),
                n.arch.clone(),
                n.accel.clone(),
                format!("{}/{}", n.allocated_vcpus, n.schedulable_vcpus),
                format!("{}/{}MiB", n.allocated_memory_mb, n.schedulable_memory_mb),
                join_or_none(&n.pools),
            ]
        })
        .collect();
    render(&columns, &rows)
}

/// `pool list`: `NAME NODES DESCRIPTION`; NODES are the nodes serving the pool.
pub fn pools(pools: &[Pool]) -> String {
    let columns = [col("NAME", 0), col("NODES", 0), col("DESCRIPTION", 0)];
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            let nodes: Vec<String> = p.instances.iter().map(|i| i.node.clone()).collect();
            vec![
                p.name.clone(),
                join_or_none(&nodes),
                or_none(p.spec.description.as_deref()),
            ]
        })
        .collect();
    render(&columns, &rows)
}

/// `pool images`: `NODE SHA256 SIZE LAST-USED USED-BY URL`; SHA256 shortened to 12 hex
/// digits, SIZE in binary units.
pub fn images(images: &[CachedImage]) -> String {
    let columns = [
        col("NODE", 0),
        col("SHA256", 0),
        col("SIZE", 0),
        col("LAST-USED", 0),
        col("USED-BY", 0),
        col("URL", 0),
    ];
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            vec![
                i.node.clone(),
                short_sha(&i.sha256).to_owned(),
                human_size(i.size),
                or_none(i.last_used.as_deref()),
                i.used_by.to_string(),
                i.url.clone(),
            ]
        })
        .collect();
    render(&columns, &rows)
}

/// `network list`: `NAME TYPE BRIDGE`.
pub fn networks(networks: &[Network]) -> String {
    let columns = [col("NAME", 0), col("TYPE", 0), col("BRIDGE", 0)];
    let rows: Vec<Vec<String>> = networks
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                super::network_type(n.spec.network_type).to_owned(),
                or_none(n.spec.bridge.as_deref()),
            ]
        })
        .collect();
    render(&columns, &rows)
}

/// `firmware list`: `NAME ARCH TYPE BUILTIN CODE`.
pub fn firmware(firmware: &[Firmware]) -> String {
    let columns = [
        col("NAME", 0),
        col("ARCH", 0),
        col("TYPE", 0),
        col("BUILTIN", 0),
        col("CODE", 0),
    ];
    let rows: Vec<Vec<String>> = firmware
        .iter()
        .map(|f| {
            vec![
                f.name.clone(),
                f.spec.arch.to_string(),
                super::firmware_type(f.spec.firmware_type).to_owned(),
                super::yes_no(f.builtin).to_owned(),
                or_none(f.spec.code.as_deref()),
            ]
        })
        .collect();
    render(&columns, &rows)
}

/// `token list`: `NAME PROJECT ROLE EXPIRES CREATED-BY`.
pub fn tokens(tokens: &[Token]) -> String {
    let columns = [
        col("NAME", 0),
        col("PROJECT", 0),
        col("ROLE", 0),
        col("EXPIRES", 0),
        col("CREATED-BY", 0),
    ];
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.project.clone(),
                t.role.clone(),
                or_none(t.expires_at.as_deref()),
                or_none(t.created_by.as_deref()),
            ]
        })
        .collect();
    render(&columns, &rows)
}

/// `usage/limit`, `-` for no limit: `2/10`, `4/-`.
pub fn usage_of(usage: u64, limit: Option<u64>) -> String {
    format!("{usage}/{}", or_none(limit))
}

/// Memory `usage/limit` in MiB like `node list`: `2048/4096MiB`, `2048/-` when unlimited.
fn memory_usage(usage: u64, limit: Option<u64>) -> String {
    match limit {
        Some(l) => format!("{usage}/{l}MiB"),
        None => usage_of(usage, None),
    }
}

/// `project list`: `NAME VMS VCPUS MEMORY`, each `usage/limit` (memory in MiB).
pub fn projects(projects: &[Project]) -> String {
    let columns = [
        col("NAME", 0),
        col("VMS", 0),
        col("VCPUS", 0),
        col("MEMORY", 0),
    ];
    let rows: Vec<Vec<String>> = projects
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                usage_of(p.usage.vms, p.spec.max_vms),
                usage_of(p.usage.vcpus, p.spec.max_vcpus),
                memory_usage(p.usage.memory_mb, p.spec.max_memory_mb),
            ]
        })
        .collect();
    render(&columns, &rows)
}

/// `remote list`: `NAME URL PROJECT CURRENT`, `*` marking the current remote.
pub fn remotes(config: &Config) -> String {
    let columns = [
        col("NAME", 0),
        col("URL", 0),
        col("PROJECT", 0),
        col("CURRENT", 0),
    ];
    let rows: Vec<Vec<String>> = config
        .remotes
        .iter()
        .map(|(name, r)| {
            let current = config.current_remote.as_deref() == Some(name.as_str());
            vec![
                name.clone(),
                r.url.clone(),
                or_none(r.project.as_deref()),
                if current { "*" } else { "" }.to_owned(),
            ]
        })
        .collect();
    render(&columns, &rows)
}

/// `a,b,c`, or `-` when empty.
pub fn join_or_none(items: &[String]) -> String {
    if items.is_empty() {
        NONE.to_owned()
    } else {
        items.join(",")
    }
}

/// The address the IP column shows: the first IPv4 one (as `kubectl get -o wide` shows a
/// pod's), else the first.
fn primary_address(addresses: &[String]) -> Option<&String> {
    addresses
        .iter()
        .find(|a| !a.contains(':'))
        .or(addresses.first())
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use otherix_api::manifest::{FirmwareSpec, FirmwareType, NetworkSpec, NetworkType, PoolSpec};
    use otherix_api::{Arch, NodeStatus, PoolInstance, TaskKind, TaskStatus};
    use uuid::Uuid;

    #[test]
    fn vms_single_vm_matches_documented_example() {
        assert_eq!(
            vms(&[vm()], false),
            "NAME       STATUS   ARCH   NODE      POOL      NETWORK\n\
             web-1      running  arm64  node-1    default   -\n"
        );
    }

    #[test]
    fn vms_two_vms_without_ids_prints_exact_table() {
        assert_eq!(
            vms(&[vm(), vm2()], false),
            "NAME              STATUS   ARCH   NODE      POOL      NETWORK\n\
             web-1             running  arm64  node-1    default   -\n\
             database-primary  pending  amd64  -         -         br-lan\n"
        );
    }

    #[test]
    fn vms_two_vms_with_ids_prints_id_column_first() {
        assert_eq!(
            vms(&[vm(), vm2()], true),
            format!(
                "ID                                    NAME              STATUS   ARCH   NODE      POOL      NETWORK\n\
                 {VM_ID}  web-1             running  arm64  node-1    default   -\n\
                 {VM2_ID}  database-primary  pending  amd64  -         -         br-lan\n"
            )
        );
    }

    #[test]
    fn vms_wide_adds_first_guest_address_as_ip() {
        let mut a = vm();
        // IPv4 first in the column even when the guest lists an IPv6 address first.
        a.status.addresses = vec!["2001:db8::5/64".into(), "10.0.2.15/24".into()];
        assert_eq!(
            vms_wide(&[a.clone(), vm2()], false, None),
            "NAME              STATUS   ARCH   NODE      POOL      NETWORK  IP\n\
             web-1             running  arm64  node-1    default   -        10.0.2.15/24\n\
             database-primary  pending  amd64  -         -         br-lan   -\n"
        );
        assert!(vms_wide(&[a.clone()], true, None).starts_with("ID "));
        assert!(
            vms_wide(&[a], false, Some(&["dev".into()])).starts_with("PROJECT  NAME "),
            "PROJECT first, IP last"
        );
    }

    #[test]
    fn vms_in_projects_prints_project_column_first() {
        assert_eq!(
            vms_in_projects(&[vm(), vm2()], &["default".into(), "dev".into()], false),
            "PROJECT  NAME              STATUS   ARCH   NODE      POOL      NETWORK\n\
             default  web-1             running  arm64  node-1    default   -\n\
             dev      database-primary  pending  amd64  -         -         br-lan\n"
        );
        // A missing project (older server) shows as none rather than shifting columns.
        assert!(vms_in_projects(&[vm()], &[], true).starts_with("PROJECT  ID "));
        assert!(vms_in_projects(&[vm()], &[], false).contains("\n-        web-1"));
    }

    #[test]
    fn tasks_in_projects_prints_project_column_first() {
        let t = task(TaskStatus::Success);
        assert_eq!(
            tasks_in_projects(&[t], &["dev".into()]),
            format!(
                "PROJECT  ID                                    KIND       STATUS   VM     NODE  CREATED\n\
                 dev      {TASK_ID}  vm.create  success  web-1  -     2026-05-01T10:00:00Z\n"
            )
        );
    }

    #[test]
    fn remotes_mark_current_with_star() {
        let mut c = Config::default();
        let r = |url: &str| crate::config::Remote {
            url: url.into(),
            ..Default::default()
        };
        assert_eq!(remotes(&c), "NAME  URL  PROJECT  CURRENT\n");
        c.add_remote("b", r("https://b:7080")).unwrap();
        c.add_remote("a", r("http://127.0.0.1:7080")).unwrap();
        assert_eq!(
            remotes(&c),
            "NAME  URL                    PROJECT  CURRENT\n\
             a     http://127.0.0.1:7080  -\n\
             b     https://b:7080         -        *\n"
        );
    }

    #[test]
    fn usage_of_shows_limit_or_none() {
        assert_eq!(usage_of(2, Some(10)), "2/10");
        assert_eq!(usage_of(4, None), "4/-");
        assert_eq!(memory_usage(2048, Some(4096)), "2048/4096MiB");
        assert_eq!(memory_usage(2048, None), "2048/-");
    }

    #[test]
    fn vms_empty_list_prints_header_only() {
        assert_eq!(
            vms(&[], false),
            "NAME       STATUS  ARCH  NODE      POOL      NETWORK\n"
        );
    }

    #[test]
    fn tasks_one_task_prints_exact_table() {
        let mut t = task(TaskStatus::Running);
        t.kind = TaskKind::VmStop;
        t.node = Some("node-1".into());
        assert_eq!(
            tasks(&[t]),
            format!(
                "ID                                    KIND     STATUS   VM     NODE    CREATED\n\
                 {TASK_ID}  vm.stop  running  web-1  node-1  2026-05-01T10:00:00Z\n"
            )
        );
    }

    #[test]
    fn nodes_one_node_prints_allocation_columns() {
        let n = Node {
            id: Uuid::nil(),
            name: "node-1".into(),
            status: NodeStatus::NotReady,
            arch: "arm64".into(),
            guest_arches: vec!["arm64".into()],
            accel: "kvm".into(),
            vcpus: 8,
            memory_mb: 16384,
            allocated_vcpus: 2,
            allocated_memory_mb: 2048,
            schedulable_vcpus: 32,
            schedulable_memory_mb: 16384,
            pools: vec!["default".into(), "fast".into()],
            last_heartbeat: None,
            allow_file_urls: false,
        };
        assert_eq!(
            nodes(&[n]),
            "NAME    STATUS     ARCH   ACCEL  VCPUS  MEMORY         POOLS\n\
             node-1  not_ready  arm64  kvm    2/32   2048/16384MiB  default,fast\n"
        );
    }

    #[test]
    fn pools_without_instances_prints_none() {
        let p = |name: &str, nodes: &[&str]| Pool {
            resource_version: 1,
            id: Uuid::nil(),
            name: name.into(),
            annotations: Default::default(),
            spec: PoolSpec {
                description: (name == "default").then(|| "local disks".into()),
            },
            instances: nodes
                .iter()
                .map(|n| PoolInstance {
                    id: Uuid::nil(),
                    node: (*n).into(),
                    path: "/p".into(),
                })
                .collect(),
        };
        assert_eq!(
            pools(&[p("default", &["node-1", "node-2"]), p("empty", &[])]),
            "NAME     NODES          DESCRIPTION\n\
             default  node-1,node-2  local disks\n\
             empty    -              -\n"
        );
    }

    #[test]
    fn images_two_nodes_prints_short_sha_and_sizes() {
        let img = |node: &str, sha: char, size, last: Option<&str>, used| CachedImage {
            node: node.into(),
            sha256: sha.to_string().repeat(64),
            url: "http://images.local/debian-12.qcow2".into(),
            size,
            last_used: last.map(Into::into),
            used_by: used,
        };
        assert_eq!(
            images(&[
                img("node-1", 'a', 349_372_416, Some("2026-05-01T10:00:00Z"), 2),
                img("node-2", 'b', 512, None, 0),
            ]),
            "NODE    SHA256        SIZE      LAST-USED             USED-BY  URL\n\
             node-1  aaaaaaaaaaaa  333.2MiB  2026-05-01T10:00:00Z  2        http://images.local/debian-12.qcow2\n\
             node-2  bbbbbbbbbbbb  512B      -                     0        http://images.local/debian-12.qcow2\n"
        );
        assert_eq!(images(&[]), "NODE  SHA256  SIZE  LAST-USED  USED-BY  URL\n");
    }

    #[test]
    fn networks_bridge_and_nat_prints_exact_table() {
        let n = |name: &str, t, bridge: Option<&str>| Network {
            resource_version: 1,
            id: Uuid::nil(),
            name: name.into(),
            annotations: Default::default(),
            spec: NetworkSpec {
                network_type: t,
                bridge: bridge.map(Into::into),
            },
        };
        assert_eq!(
            networks(&[
                n("lan", NetworkType::Bridge, Some("br0")),
                n("outbound", NetworkType::Nat, None),
                n("lab", NetworkType::Isolated, None),
            ]),
            "NAME      TYPE      BRIDGE\n\
             lan       bridge    br0\n\
             outbound  nat       -\n\
             lab       isolated  -\n"
        );
    }

    #[test]
    fn firmware_builtins_and_custom_prints_exact_table() {
        let f = |name: &str, arch, t, code: Option<&str>, builtin| Firmware {
            resource_version: 1,
            id: Uuid::nil(),
            name: name.into(),
            annotations: Default::default(),
            spec: FirmwareSpec {
                arch,
                firmware_type: t,
                code: code.map(Into::into),
                vars_template: None,
            },
            builtin,
        };
        assert_eq!(
            firmware(&[
                f("seabios", Arch::Amd64, FirmwareType::Bios, None, true),
                f(
                    "ovmf",
                    Arch::Amd64,
                    FirmwareType::Uefi,
                    Some("/usr/share/OVMF/OVMF_CODE_4M.fd"),
                    true
                ),
                f(
                    "edk2-secure",
                    Arch::Arm64,
                    FirmwareType::Uefi,
                    Some("/opt/fw/code.fd"),
                    false
                ),
            ]),
            "NAME         ARCH   TYPE  BUILTIN  CODE\n\
             seabios      amd64  bios  yes      -\n\
             ovmf         amd64  uefi  yes      /usr/share/OVMF/OVMF_CODE_4M.fd\n\
             edk2-secure  arm64  uefi  no       /opt/fw/code.fd\n"
        );
    }
}
