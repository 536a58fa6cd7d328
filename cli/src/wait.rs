//! The task waiter behind every `--wait` and `task wait`: long-polls a task until it is
//! terminal, one progress dot per poll on the progress writer (stderr).

use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};

use otherix_api::{ErrorBody, Task, TaskStatus};
use uuid::Uuid;

use crate::client::{Client, ClientError};
use crate::output;

/// `wait_secs` of each long-poll: the server answers as soon as the status moves, or
/// after this long with the unchanged task.
pub const POLL_WAIT_SECS: u32 = 1;

/// Polls never come closer together than this while the status does not move, even if
/// the server answers a long-poll early.
const MIN_POLL_INTERVAL: Duration = Duration::from_secs(POLL_WAIT_SECS as u64);

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The task ended `failed` or `cancelled`.
    #[error("{}", output::task_failed_line(*id, *status, error.as_ref()))]
    Failed {
        id: Uuid,
        status: TaskStatus,
        error: Option<ErrorBody>,
    },
    /// `--wait-timeout` ran out; the task itself is untouched.
    #[error("{}", output::timed_out_message(*after, *id, *status))]
    TimedOut {
        after: Duration,
        id: Uuid,
        status: TaskStatus,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Waits until `task` is terminal or `timeout` has passed. Writes one `.` to `progress`
/// per poll and, if it polled at all, a final newline. Returns the successful task.
pub fn wait_for_task(
    client: &Client,
    task: Task,
    timeout: Duration,
    progress: &mut dyn Write,
) -> Result<Task, WaitError> {
    let start = Instant::now();
    let mut task = task;
    let mut polls = 0u32;
    let result = loop {
        if task.status.is_terminal() {
            break Ok(task);
        }
        if start.elapsed() >= timeout {
            break Err(WaitError::TimedOut {
                after: timeout,
                id: task.id,
                status: task.status,
            });
        }
        let polled_at = Instant::now();
        let answer = client.get_task(task.id, Some((POLL_WAIT_SECS, Some(task.status))));
        polls += 1;
        // Progress is best effort: a closed stderr must not fail the wait.
        let _ = progress.write_all(b".").and_then(|_| progress.flush());
        let next = match answer {
            Ok(fetched) => fetched.value,
            Err(e) => break Err(e.into()),
        };
        let moved = next.status != task.status;
        task = next;
        if !moved && !task.status.is_terminal() {
            let spent = polled_at.elapsed();
            let left = timeout.saturating_sub(start.elapsed());
            thread::sleep(MIN_POLL_INTERVAL.saturating_sub(spent).min(left));
        }
    };
    if polls > 0 {
        let _ = progress.write_all(b"\n").and_then(|_| progress.flush());
    }
    let task = result?;
    match task.status {
        TaskStatus::Success => Ok(task),
        status => Err(WaitError::Failed {
            id: task.id,
            status,
            error: task.error,
        }),
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A tiny HTTP/1.1 server on 127.0.0.1 answering canned responses in order (the last
    //! one repeats), recording each request line.

    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};
    use std::thread;

    pub struct FakeServer {
        pub url: String,
        requests: Arc<Mutex<Vec<String>>>,
        auths: Arc<Mutex<Vec<Option<String>>>>,
        if_matches: Arc<Mutex<Vec<Option<String>>>>,
    }

    impl FakeServer {
        /// Starts serving `(status, body)` answers, one per request.
        pub fn start(answers: Vec<(u16, String)>) -> FakeServer {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let requests = Arc::new(Mutex::new(vec![]));
            let seen = Arc::clone(&requests);
            let auths = Arc::new(Mutex::new(vec![]));
            let seen_auth = Arc::clone(&auths);
            let if_matches = Arc::new(Mutex::new(vec![]));
            let seen_if_match = Arc::clone(&if_matches);
            thread::spawn(move || {
                for (n, conn) in listener.incoming().enumerate() {
                    let Ok(mut conn) = conn else { return };
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    let mut len = 0usize;
                    let mut auth = None;
                    let mut if_match = None;
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).unwrap();
                        if h.trim().is_empty() {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                        if h.to_ascii_lowercase().starts_with("authorization:") {
                            auth = Some(h["authorization:".len()..].trim().to_owned());
                        }
                        if h.to_ascii_lowercase().starts_with("if-match:") {
                            if_match = Some(h["if-match:".len()..].trim().to_owned());
                        }
                    }
                    let mut body = vec![0; len];
                    reader.read_exact(&mut body).unwrap();
                    let mut req = line.trim_end().trim_end_matches(" HTTP/1.1").to_owned();
                    if len > 0 {
                        req.push(' ');
                        req.push_str(&String::from_utf8_lossy(&body));
                    }
                    seen.lock().unwrap().push(req);
                    seen_auth.lock().unwrap().push(auth);
                    seen_if_match.lock().unwrap().push(if_match);
                    let (status, body) = &answers[n.min(answers.len() - 1)];
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(resp.as_bytes());
                }
            });
            FakeServer {
                url,
                requests,
                auths,
                if_matches,
            }
        }

        /// The `Authorization` header of each request seen so far.
        pub fn auths(&self) -> Vec<Option<String>> {
            self.auths.lock().unwrap().clone()
        }

        /// The `If-Match` header of each request seen so far.
        pub fn if_matches(&self) -> Vec<Option<String>> {
            self.if_matches.lock().unwrap().clone()
        }

        /// Request lines seen so far: `GET /path?query` (plus ` body` when there is one).
        pub fn requests(&self) -> Vec<String> {
            self.requests.lock().unwrap().clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeServer;
    use super::*;
    use crate::output::fixtures::{task, TASK_ID};
    use otherix_api::ErrorCode;

    fn answer(status: TaskStatus, error: Option<ErrorBody>) -> (u16, String) {
        let mut t = task(status);
        t.error = error;
        (200, serde_json::to_string(&t).unwrap())
    }

    #[test]
    fn wait_for_task_failed_after_polls_prints_dot_per_poll_and_failure_line() {
        let server = FakeServer::start(vec![
            answer(TaskStatus::Running, None),
            answer(TaskStatus::Running, None),
            answer(
                TaskStatus::Failed,
                Some(ErrorBody {
                    code: ErrorCode::ImageDownloadFailed,
                    message: "GET http://x/i.img: 404 Not Found".into(),
                }),
            ),
        ]);
        let client = Client::new(&server.url).unwrap();
        let mut dots = vec![];
        let err = wait_for_task(
            &client,
            task(TaskStatus::Pending),
            Duration::from_secs(30),
            &mut dots,
        )
        .unwrap_err();
        assert_eq!(String::from_utf8(dots).unwrap(), "...\n");
        assert_eq!(
            err.to_string(),
            format!(
                "task {TASK_ID} failed: image_download_failed: GET http://x/i.img: 404 Not Found"
            )
        );
        assert_eq!(
            server.requests(),
            vec![
                format!("GET /v1/tasks/{TASK_ID}?wait_secs=1&status=pending"),
                format!("GET /v1/tasks/{TASK_ID}?wait_secs=1&status=running"),
                format!("GET /v1/tasks/{TASK_ID}?wait_secs=1&status=running"),
            ]
        );
    }

    #[test]
    fn wait_for_task_success_returns_task_and_ends_dots_with_newline() {
        let server = FakeServer::start(vec![
            answer(TaskStatus::Running, None),
            answer(TaskStatus::Success, None),
        ]);
        let client = Client::new(&server.url).unwrap();
        let mut dots = vec![];
        let done = wait_for_task(
            &client,
            task(TaskStatus::Pending),
            Duration::from_secs(30),
            &mut dots,
        )
        .unwrap();
        assert_eq!(done.status, TaskStatus::Success);
        assert_eq!(String::from_utf8(dots).unwrap(), "..\n");
    }

    #[test]
    fn wait_for_task_already_terminal_does_not_poll() {
        let client = Client::new("http://127.0.0.1:9").unwrap();
        let mut dots = vec![];
        let done = wait_for_task(
            &client,
            task(TaskStatus::Success),
            Duration::from_secs(1),
            &mut dots,
        )
        .unwrap();
        assert_eq!(done.status, TaskStatus::Success);
        assert!(dots.is_empty());
    }

    #[test]
    fn wait_for_task_never_terminal_times_out_with_last_status() {
        let server = FakeServer::start(vec![answer(TaskStatus::Running, None)]);
        let client = Client::new(&server.url).unwrap();
        let mut dots = vec![];
        let started = Instant::now();
        let err = wait_for_task(
            &client,
            task(TaskStatus::Pending),
            Duration::from_millis(1500),
            &mut dots,
        )
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(matches!(err, WaitError::TimedOut { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("timed out after 1500ms waiting for task {TASK_ID} (status running); the task keeps running")
        );
        let dots = String::from_utf8(dots).unwrap();
        assert!(dots.ends_with(".\n"), "{dots:?}");
        assert!(dots.trim_end().chars().all(|c| c == '.'), "{dots:?}");
    }

    #[test]
    fn wait_for_task_cancelled_reports_cancelled() {
        let server = FakeServer::start(vec![answer(TaskStatus::Cancelled, None)]);
        let client = Client::new(&server.url).unwrap();
        let err = wait_for_task(
            &client,
            task(TaskStatus::Running),
            Duration::from_secs(5),
            &mut vec![],
        )
        .unwrap_err();
        assert_eq!(err.to_string(), format!("task {TASK_ID} cancelled"));
    }

    #[test]
    fn wait_for_task_server_error_envelope_surfaces_code() {
        let server = FakeServer::start(vec![(
            404,
            r#"{"error":{"code":"not_found","message":"task not found"}}"#.into(),
        )]);
        let client = Client::new(&server.url).unwrap();
        let err = wait_for_task(
            &client,
            task(TaskStatus::Running),
            Duration::from_secs(5),
            &mut vec![],
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "not_found: task not found");
    }
}
