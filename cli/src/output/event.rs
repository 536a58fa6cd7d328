//! One line per event, kubectl `-w` style: `CURSOR  TIME  TYPE  KIND/NAME  DETAIL`, where
//! the detail is what changes most (a VM's phase and node, a task's kind, status, VM,
//! error code and progress, a node's status, else the resource_version). A VM or task outside `default` is named
//! `<kind>/<project>/<name>`.

use otherix_api::{Event, EventKind};
use serde_json::Value;

/// The line printed for `e` (no trailing newline).
pub fn line(e: &Event) -> String {
    let o = &e.object;
    let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let name = match e.kind {
        EventKind::Task => s(&o["id"]),
        _ => s(&o["name"]),
    };
    let project = o["project"].as_str().filter(|p| *p != "default");
    let object = match (e.kind, project) {
        (EventKind::Vm | EventKind::Task, Some(p)) => format!("{}/{p}/{name}", e.kind),
        _ => format!("{}/{name}", e.kind),
    };
    let detail = match e.kind {
        EventKind::Vm => {
            let node = o["status"]["node"].as_str().map(|n| format!(" node={n}"));
            format!("{}{}", s(&o["status"]["phase"]), node.unwrap_or_default())
        }
        EventKind::Task => {
            let vm = o["vm_name"].as_str().map(|v| format!(" vm={v}"));
            let error = o["error"]["code"].as_str().map(|c| format!(" error={c}"));
            let progress = o["progress"]["phase"].as_str().map(|p| format!(" ({p})"));
            format!(
                "{} {}{}{}{}",
                s(&o["kind"]),
                s(&o["status"]),
                vm.unwrap_or_default(),
                error.unwrap_or_default(),
                progress.unwrap_or_default()
            )
        }
        EventKind::Node => s(&o["status"]),
        _ => format!("resource_version={}", o["resource_version"]),
    };
    // `at` is RFC 3339 UTC with milliseconds; the time of day is what a watcher reads.
    let time = e.at.get(11..23).unwrap_or(&e.at);
    format!(
        "{:<6} {time}  {:<8}  {object}  {detail}",
        e.cursor,
        e.event_type.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use otherix_api::EventType;
    use serde_json::json;

    fn event(t: EventType, kind: EventKind, object: Value) -> Event {
        Event {
            event_type: t,
            kind,
            object,
            cursor: "42".into(),
            at: "2026-12-04T08:40:01.123Z".into(),
        }
    }

    #[test]
    fn line_table() {
        let table = [
            (
                event(EventType::Added, EventKind::Vm,
                    json!({"name": "web-1", "project": "default", "status": {"phase": "pending"}})),
                "42     08:40:01.123  added     vm/web-1  pending",
            ),
            (
                event(EventType::Modified, EventKind::Vm,
                    json!({"name": "web-1", "project": "dev",
                           "status": {"phase": "running", "node": "node-1"}})),
                "42     08:40:01.123  modified  vm/dev/web-1  running node=node-1",
            ),
            (
                event(EventType::Modified, EventKind::Task,
                    json!({"id": "t1", "kind": "vm.stop", "status": "failed", "project": "default",
                           "vm_name": "web-1", "error": {"code": "stop_timeout", "message": "x"}})),
                "42     08:40:01.123  modified  task/t1  vm.stop failed vm=web-1 error=stop_timeout",
            ),
            (
                event(EventType::Modified, EventKind::Task,
                    json!({"id": "t2", "kind": "vm.create", "status": "running", "project": "dev",
                           "vm_name": "db", "progress": {"phase": "downloading image"}})),
                "42     08:40:01.123  modified  task/dev/t2  vm.create running vm=db (downloading image)",
            ),
            (
                event(EventType::Modified, EventKind::Node,
                    json!({"name": "node-1", "status": "not_ready"})),
                "42     08:40:01.123  modified  node/node-1  not_ready",
            ),
            (
                event(EventType::Deleted, EventKind::Pool,
                    json!({"name": "fast", "resource_version": 2})),
                "42     08:40:01.123  deleted   pool/fast  resource_version=2",
            ),
        ];
        for (e, want) in table {
            assert_eq!(line(&e), want);
        }
    }
}
