//! Watch mode, shared by `otherix create -f DIR --watch` and `otherixd --manifests-dir`:
//! apply a directory at start, then again after every change (filesystem events from
//! `notify`, debounced). A directory that does not load (a half-written or invalid file)
//! reports its errors and changes nothing, keeping the last good state; with `prune`,
//! objects this directory applied (its source annotation) whose documents are gone are
//! deleted. Everything that happens is reported as a [`WatchEvent`].

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher as _};
use otherix_api::{ApplyOutcome, ManifestError, Object};

use crate::apply::{apply_one, in_apply_order, stamp_source, ApplyFailure, ApplyLine};
use crate::diff::{live_projection, ObjectDiff};
use crate::load::{is_manifest_file_name, load_path, source_id};
use crate::prune::{declared_refs, delete_all, owned_refs, plan_prune, DeleteLine, DeleteVerb};
use crate::{ApplyTarget, Error, ObjectRef};

/// How often a waiting watcher looks at its [`StopSignal`].
const STOP_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchOptions {
    /// Delete owned objects whose documents were removed.
    pub prune: bool,
    /// Quiet time after the last filesystem event before reloading.
    pub debounce: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            prune: false,
            debounce: Duration::from_millis(100),
        }
    }
}

/// Something the watcher did or saw; the CLI prints these, the server logs them.
#[derive(Debug)]
pub enum WatchEvent {
    /// One object applied: `vm/web-1 configured`.
    Applied(ApplyLine),
    /// The change a `configured` object went through (live before vs file).
    Diff { reference: String, diff: String },
    /// One owned object deleted because its document is gone.
    Pruned(DeleteLine),
    /// The directory does not load; nothing was applied, the last good state stays.
    Invalid(Vec<ManifestError>),
    /// The server refused or failed an object; later objects were not applied.
    Failed(ApplyFailure),
    /// Anything else that went wrong (reading the directory, listing, the watcher).
    Error(Error),
    /// The directory is applied (and pruned): `objects` declared objects are live.
    Synced { objects: usize },
}

/// Tells a running watcher to return; cloning shares the signal.
#[derive(Debug, Clone, Default)]
pub struct StopSignal(Arc<AtomicBool>);

impl StopSignal {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What the last reload saw, so an unchanged directory is not re-applied on every event.
#[derive(Debug, PartialEq)]
enum Last {
    Good(Vec<Object>),
    /// Did not load; the next good load is applied (and reported) even if unchanged.
    Broken,
}

/// Watches `dir` (non-recursive) and applies it to `target` at start and after every
/// change until `stop` is signalled. Objects are stamped with the source annotation
/// [`source_id`]`(dir)`. Only setting up (the source id, the filesystem watcher) fails;
/// every later problem is an event and the watch goes on. Blocks the calling thread
/// (a server runs it with `spawn_blocking`).
pub fn run_watch(
    dir: &Path,
    target: &mut dyn ApplyTarget,
    opts: &WatchOptions,
    on_event: &mut dyn FnMut(WatchEvent),
    stop: &StopSignal,
) -> Result<(), Error> {
    let source = source_id(dir)?;
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |res| {
        let _ = tx.send(res);
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    let mut last = None;
    reload(dir, &source, target, opts, &mut last, on_event);
    loop {
        if stop.is_stopped() {
            return Ok(());
        }
        match rx.recv_timeout(STOP_POLL) {
            Ok(Err(e)) => on_event(WatchEvent::Error(Error::Watch(e))),
            Ok(Ok(event)) if is_relevant(&event) => {
                // Debounce: wait for quiet, so a burst of writes is one reload.
                loop {
                    match rx.recv_timeout(opts.debounce) {
                        Ok(_) => continue,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return Ok(()),
                    }
                }
                if stop.is_stopped() {
                    return Ok(());
                }
                reload(dir, &source, target, opts, &mut last, on_event);
            }
            Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
}

/// Whether a filesystem event may change what the directory declares: a change to a
/// manifest file name (reads, including our own, are not changes).
fn is_relevant(event: &notify::Event) -> bool {
    let changes = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    };
    changes && event.paths.iter().any(|p| is_manifest_file_name(p))
}

/// One reload: load, and unless it is what was last seen, apply (and prune).
fn reload(
    dir: &Path,
    source: &str,
    target: &mut dyn ApplyTarget,
    opts: &WatchOptions,
    last: &mut Option<Last>,
    on_event: &mut dyn FnMut(WatchEvent),
) {
    let objects: Vec<Object> = match load_path(dir) {
        Ok(parsed) => parsed.into_iter().map(|p| p.object).collect(),
        Err(Error::Invalid(errors)) => {
            // Reported on every change (the user is fixing it), never applied.
            on_event(WatchEvent::Invalid(errors));
            *last = Some(Last::Broken);
            return;
        }
        Err(e) => {
            on_event(WatchEvent::Error(e));
            *last = Some(Last::Broken);
            return;
        }
    };
    if matches!(last, Some(Last::Good(prev)) if *prev == objects) {
        return;
    }
    // Until this reload completes, any later event reloads again.
    *last = None;
    for object in in_apply_order(&objects) {
        let stamped = stamp_source(object, Some(source));
        let live = match live_projection(target, &stamped) {
            Ok(live) => live,
            Err(error) => {
                on_event(WatchEvent::Failed(ApplyFailure::new(
                    &ObjectRef::of(object),
                    error,
                )));
                return;
            }
        };
        match apply_one(object, target, Some(source)) {
            Ok(line) => {
                let configured = line.outcome == ApplyOutcome::Configured;
                on_event(WatchEvent::Applied(line));
                if configured {
                    match ObjectDiff::new(&stamped, live) {
                        Ok(d) if !d.is_same() => on_event(WatchEvent::Diff {
                            reference: d.reference,
                            diff: d.diff,
                        }),
                        Ok(_) => {}
                        Err(e) => on_event(WatchEvent::Error(e)),
                    }
                }
            }
            Err(failure) => {
                on_event(WatchEvent::Failed(failure));
                return;
            }
        }
    }
    if opts.prune {
        let (owned, default_project) = match owned_refs(target, source, &objects) {
            Ok(owned) => owned,
            Err(e) => {
                on_event(WatchEvent::Error(e));
                return;
            }
        };
        let declared = declared_refs(&objects, &default_project);
        let report = delete_all(
            &plan_prune(&declared, &owned),
            target,
            DeleteVerb::Pruned,
            &mut |line| on_event(WatchEvent::Pruned(line.clone())),
        );
        if let Some(failure) = report.failure {
            on_event(WatchEvent::Failed(failure));
            return;
        }
    }
    on_event(WatchEvent::Synced {
        objects: objects.len(),
    });
    *last = Some(Last::Good(objects));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Call, FakeTarget};
    use otherix_api::manifest::Kind;
    use serde_json::json;
    use std::path::PathBuf;
    use std::thread;
    use std::time::Instant;

    const WAIT: Duration = Duration::from_secs(20);

    fn vm(name: &str, vcpus: u32) -> String {
        format!(
            "apiVersion: otherix.dev/v1\nkind: VM\nmetadata:\n  name: {name}\nspec:\n  image_url: http://i/x.qcow2\n  arch: amd64\n  vcpus: {vcpus}\n"
        )
    }

    struct Running {
        events: mpsc::Receiver<String>,
        stop: StopSignal,
        handle: thread::JoinHandle<Result<(), Error>>,
    }

    /// Events as one-line strings, so the test can compare them.
    fn describe(e: WatchEvent) -> String {
        match e {
            WatchEvent::Applied(l) => format!("applied {l}"),
            WatchEvent::Diff { reference, diff } => format!("diff {reference}\n{diff}"),
            WatchEvent::Pruned(l) => format!("pruned {l}"),
            WatchEvent::Invalid(errs) => format!(
                "invalid {}",
                errs.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" | ")
            ),
            WatchEvent::Failed(f) => format!("failed {}: {}", f.reference(), f.error),
            WatchEvent::Error(e) => format!("error {e}"),
            WatchEvent::Synced { objects } => format!("synced {objects}"),
        }
    }

    fn start(dir: PathBuf, target: FakeTarget, prune: bool) -> Running {
        let (tx, events) = mpsc::channel();
        let stop = StopSignal::new();
        let stop2 = stop.clone();
        let handle = thread::spawn(move || {
            let mut target = target;
            // A longer quiet time than the default keeps a loaded CI machine from
            // splitting the test's burst of writes.
            let opts = WatchOptions {
                prune,
                debounce: Duration::from_millis(250),
            };
            run_watch(
                &dir,
                &mut target,
                &opts,
                &mut |e| {
                    let _ = tx.send(describe(e));
                },
                &stop2,
            )
        });
        Running {
            events,
            stop,
            handle,
        }
    }

    impl Running {
        /// Events up to and including the next one starting with `until`.
        fn until(&self, until: &str) -> Vec<String> {
            let deadline = Instant::now() + WAIT;
            let mut seen = vec![];
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.events.recv_timeout(left) {
                    Ok(e) => {
                        let done = e.starts_with(until);
                        seen.push(e);
                        if done {
                            return seen;
                        }
                    }
                    Err(_) => panic!("no {until:?} event; saw {seen:?}"),
                }
            }
        }

        /// Asserts nothing is reported for a while.
        fn quiet(&self, for_: Duration) {
            if let Ok(e) = self.events.recv_timeout(for_) {
                panic!("unexpected event {e:?}");
            }
        }

        fn finish(self) {
            self.stop.stop();
            self.handle.join().unwrap().unwrap();
        }
    }

    fn applies(target: &FakeTarget) -> Vec<String> {
        target
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Apply(r, _) => Some(r),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn run_watch_burst_is_one_reload_invalid_keeps_state_fix_applies_and_prunes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let source = source_id(&dir).unwrap();
        let mut target = FakeTarget::default();
        // Another source's object and a hand-made one: never pruned.
        let other = json!({"name": "other", "annotations": {"otherix.dev/source": "/elsewhere"}, "spec": {}});
        target.put_live(Kind::Pool, "other", other);
        target.put_live(Kind::Pool, "manual", json!({"name": "manual", "spec": {}}));
        // An object this directory applied earlier whose document is gone: pruned at start.
        let stale =
            json!({"name": "stale", "annotations": {"otherix.dev/source": source}, "spec": {}});
        target.put_live(Kind::Pool, "stale", stale);

        let w = start(dir.clone(), target.clone(), true);
        assert_eq!(w.until("synced"), ["pruned pool/stale pruned", "synced 0"]);

        // A burst of writes is coalesced into one reload.
        target.clear_calls();
        for name in ["a", "b", "c"] {
            std::fs::write(dir.join(format!("{name}.yaml")), vm(name, 1)).unwrap();
        }
        assert_eq!(
            w.until("synced"),
            [
                "applied vm/a created task=00000000-0000-0000-0000-000000000001",
                "applied vm/b created task=00000000-0000-0000-0000-000000000002",
                "applied vm/c created task=00000000-0000-0000-0000-000000000003",
                "synced 3",
            ]
        );
        assert_eq!(applies(&target), ["vm/a", "vm/b", "vm/c"]);

        // A half-written file and then an invalid one: errors, nothing applied.
        target.clear_calls();
        std::fs::write(
            dir.join("d.yaml"),
            "apiVersion: otherix.dev/v1\nkind: VM\nmetadata: [",
        )
        .unwrap();
        let events = w.until("invalid");
        assert!(
            events[0].starts_with(&format!("invalid {}:", dir.join("d.yaml").display())),
            "{events:?}"
        );
        std::fs::write(dir.join("d.yaml"), vm("d", 0)).unwrap();
        let events = w.until("invalid");
        let want = format!(
            "invalid {}:8:3: spec.vcpus: must be 1..128",
            dir.join("d.yaml").display()
        );
        assert!(events[0].starts_with(&want), "{events:?}");
        w.quiet(Duration::from_millis(400));
        assert!(applies(&target).is_empty(), "{:?}", target.calls());

        // Fixing it applies everything; only the new object changes.
        std::fs::write(dir.join("d.yaml"), vm("d", 2)).unwrap();
        assert_eq!(
            w.until("synced"),
            [
                "applied vm/a unchanged",
                "applied vm/b unchanged",
                "applied vm/c unchanged",
                "applied vm/d created task=00000000-0000-0000-0000-000000000004",
                "synced 4",
            ]
        );

        // Saving an unchanged directory again does nothing.
        target.clear_calls();
        std::fs::write(dir.join("d.yaml"), vm("d", 2)).unwrap();
        w.quiet(Duration::from_millis(400));
        assert!(target.calls().is_empty(), "{:?}", target.calls());

        // A change prints the configured line and its diff.
        std::fs::write(dir.join("a.yaml"), vm("a", 3)).unwrap();
        let events = w.until("synced");
        assert_eq!(events[0], "applied vm/a configured");
        assert!(
            events[1].starts_with("diff vm/a\n--- live/vm/a\n+++ file/vm/a\n"),
            "{events:?}"
        );
        assert!(
            events[1].contains("-  vcpus: 1\n+  vcpus: 3\n"),
            "{events:?}"
        );

        // Removing a document prunes its object, and only it.
        std::fs::remove_file(dir.join("c.yaml")).unwrap();
        let events = w.until("synced");
        assert_eq!(
            &events[events.len() - 2..],
            [
                "pruned vm/c pruned task=00000000-0000-0000-0000-000000000005",
                "synced 3",
            ]
        );
        w.finish();
        assert_eq!(
            target.live_refs(),
            ["pool/manual", "pool/other", "vm/a", "vm/b", "vm/d"]
        );
    }

    #[test]
    fn run_watch_missing_dir_fails_to_start() {
        let err = run_watch(
            Path::new("/nonexistent/manifests"),
            &mut FakeTarget::default(),
            &WatchOptions::default(),
            &mut |_| {},
            &StopSignal::new(),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "cannot read /nonexistent/manifests");
    }
}
