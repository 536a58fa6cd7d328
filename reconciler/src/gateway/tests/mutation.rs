//! Deterministic mutation tests over what an agent sends: well-formed Register, TaskUpdate,
//! VmReport, SyncReply and Heartbeat messages, mutated field by field (empty, huge,
//! path-like and non-UUID strings, extreme numbers, unknown enum values) and byte by byte
//! (their protobuf encoding truncated and mangled, kept when it still decodes), are sent
//! to the real gateway. None may panic it: afterwards the gateway still registers a
//! well-formed agent and drives a VM through its lifecycle, and no panic was recorded.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

use prost::Message;
use uuid::Uuid;

use super::*;

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts panics raised outside test code (the gateway's tasks), keeping the default
/// report.
fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tests = info.location().is_some_and(|l| l.file().contains("/tests"));
            if !in_tests {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

/// xorshift64*: the same sequence every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() as usize) % items.len()]
    }
}

fn strings() -> Vec<String> {
    vec![
        String::new(),
        "x".repeat(70_000),
        "../../etc/shadow".into(),
        "/".into(),
        "\0".into(),
        "not-a-uuid".into(),
        "00000000-0000-0000-0000-000000000000".into(),
        "ünïcödé 🚀".into(),
        "running".into(),
        "image_url_refused".into(),
        "' OR 1=1 --".into(),
    ]
}

const NUMBERS: [u64; 6] = [0, 1, u32::MAX as u64, i64::MAX as u64, u64::MAX, 1 << 63];
const ENUMS: [i32; 6] = [0, 1, 4, 5, 99, i32::MIN];

fn mutate_report(rng: &mut Rng, base: &VmReport) -> VmReport {
    let s = strings();
    let mut r = base.clone();
    match rng.next() % 8 {
        0 => r.vm_id = rng.pick(&s).clone(),
        1 => r.power = *rng.pick(&ENUMS),
        2 => r.pid = *rng.pick(&NUMBERS) as u32,
        3 => r.pool = rng.pick(&s).clone(),
        4 => r.exit_status = Some(*rng.pick(&ENUMS)),
        5 => r.detail = rng.pick(&s).clone(),
        6 => r.serial_log = rng.pick(&s).clone(),
        _ => r.guest_shutdown = !r.guest_shutdown,
    }
    r
}

fn mutate_update(rng: &mut Rng, base: &TaskUpdate, vm: &VmReport) -> TaskUpdate {
    let s = strings();
    let mut u = base.clone();
    for _ in 0..(1 + rng.next() % 3) {
        match rng.next() % 8 {
            0 => u.task_id = rng.pick(&s).clone(),
            1 => u.state = *rng.pick(&ENUMS),
            2 => u.phase = rng.pick(&s).clone(),
            3 => u.bytes_done = *rng.pick(&NUMBERS),
            4 => u.bytes_total = *rng.pick(&NUMBERS),
            5 => u.error_code = rng.pick(&s).clone(),
            6 => u.error_message = rng.pick(&s).clone(),
            _ => u.vm = Some(mutate_report(rng, vm)),
        }
    }
    u
}

fn mutate_register(rng: &mut Rng, base: &Register) -> Register {
    let s = strings();
    let mut r = base.clone();
    match rng.next() % 11 {
        0 => r.host_arch = rng.pick(&s).clone(),
        1 => r.guest_arches = vec![rng.pick(&s).clone(), rng.pick(&s).clone()],
        2 => r.accel = rng.pick(&s).clone(),
        3 => r.vcpus = *rng.pick(&NUMBERS) as u32,
        4 => r.memory_mb = *rng.pick(&NUMBERS),
        5 => {
            r.pools = vec![PoolPath {
                name: rng.pick(&s).clone(),
                path: rng.pick(&s).clone(),
            }]
        }
        6 => r.agent_version = rng.pick(&s).clone(),
        7 => r.firmware_dirs = vec![rng.pick(&s).clone(), "relative/dir".into()],
        8 => {
            let vm = report(&Uuid::new_v4().to_string(), VmPower::Running, 7);
            r.vms = vec![mutate_report(rng, &vm), mutate_report(rng, &vm)];
        }
        9 => r.pools.push(r.pools[0].clone()),
        _ => r.allow_file_urls = !r.allow_file_urls,
    }
    r
}

/// Byte-level damage to an encoded message; `None` when it no longer decodes.
fn mangle<M: Message + Default>(rng: &mut Rng, msg: &M) -> Option<M> {
    let mut bytes = msg.encode_to_vec();
    if bytes.is_empty() {
        return None;
    }
    match rng.next() % 3 {
        0 => bytes.truncate((rng.next() as usize) % bytes.len()),
        1 => {
            for _ in 0..(1 + rng.next() % 4) {
                let i = (rng.next() as usize) % bytes.len();
                bytes[i] = rng.next() as u8;
            }
        }
        _ => {
            let i = (rng.next() as usize) % bytes.len();
            bytes.insert(i, rng.next() as u8);
        }
    }
    M::decode(bytes.as_slice()).ok()
}

/// Opens a stream whose first message is `first`; returns whether the gateway answered
/// Registered. The stream is dropped afterwards.
async fn try_register(addr: SocketAddr, first: AgentMessage) -> bool {
    let mut client = AgentGatewayClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(first).await.unwrap();
    let Ok(response) = client.attach(ReceiverStream::new(rx)).await else {
        return false;
    };
    let mut inbound = response.into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), inbound.message()).await;
    matches!(
        first,
        Ok(Ok(Some(ServerMessage {
            body: Some(server_message::Body::Registered(_))
        })))
    )
}

#[tokio::test]
async fn gateway_mutated_agent_messages_never_panic_it() {
    count_panics();
    let h = harness().await;
    let mut rng = Rng(0x5eed_1234_abcd_0001);

    // Registers: field mutations and byte mangling, each on a fresh stream.
    let base = match register("node-m", vec![]).body {
        Some(agent_message::Body::Register(r)) => r,
        _ => unreachable!(),
    };
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..160 {
        let reg = if i % 2 == 0 {
            mutate_register(&mut rng, &base)
        } else {
            match mangle(&mut rng, &base) {
                Some(r) => r,
                None => continue,
            }
        };
        let msg = AgentMessage {
            body: Some(agent_message::Body::Register(reg)),
        };
        if try_register(h.agent_addr, msg).await {
            accepted += 1;
        } else {
            refused += 1;
        }
    }
    // A stream that starts with something other than Register, or with no body.
    for body in [
        None,
        Some(agent_message::Body::Heartbeat(Heartbeat { sent_at_ms: 1 })),
        Some(agent_message::Body::TaskUpdate(TaskUpdate::default())),
    ] {
        assert!(!try_register(h.agent_addr, AgentMessage { body }).await);
    }
    assert!(accepted > 0, "some mutated registers are still valid");
    assert!(refused > 0, "some mutated registers are refused");

    // Messages on a registered stream, about a real VM and its real task.
    let vms = &h.daemon.state.vms;
    let mut agent = FakeAgent::attach(h.agent_addr, "node-1", vec![]).await;
    let acc = vms.create(&actor(), create_req("mut-1")).await.unwrap();
    let task = agent.next_task().await;
    let vm_report = report(&task.vm_id, VmPower::Running, 42);
    let good = TaskUpdate {
        task_id: task.task_id.clone(),
        state: TaskState::Running as i32,
        phase: "downloading image".into(),
        bytes_done: 1,
        bytes_total: 2,
        vm: Some(vm_report.clone()),
        ..Default::default()
    };
    for i in 0..400 {
        let body = match i % 5 {
            0 | 1 => {
                let mut u = mutate_update(&mut rng, &good, &vm_report);
                // Keep the real task running: terminal states only for other task ids.
                if u.task_id == task.task_id && u.state != TaskState::Running as i32 {
                    u.state = TaskState::Running as i32;
                }
                agent_message::Body::TaskUpdate(u)
            }
            2 => agent_message::Body::VmReport(mutate_report(&mut rng, &vm_report)),
            3 => match mangle(&mut rng, &good) {
                Some(mut u) if u.task_id != task.task_id => {
                    u.vm = None;
                    agent_message::Body::TaskUpdate(u)
                }
                _ => agent_message::Body::Heartbeat(Heartbeat {
                    sent_at_ms: rng.next(),
                }),
            },
            _ => agent_message::Body::SyncReply(SyncReply {
                request_id: strings()[(rng.next() % 11) as usize].clone(),
                ok: rng.next().is_multiple_of(2),
                error_code: "conflict".into(),
                ..Default::default()
            }),
        };
        agent.send(body).await;
    }
    agent
        .send(agent_message::Body::Heartbeat(Heartbeat { sent_at_ms: 0 }))
        .await;

    // The gateway is still whole: the same stream completes the task, a new agent
    // registers, and nothing panicked.
    agent
        .update(&task, TaskState::Succeeded, Some(vm_report.clone()))
        .await;
    let done = h.finished(&acc.task.id.to_string()).await;
    assert_eq!(done.status, TaskStatus::Success, "{done:?}");
    h.eventually_phase("mut-1", VmPhase::Running).await;
    let _again = FakeAgent::attach(h.agent_addr, "node-2", vec![]).await;
    assert!(h.daemon.gateway.sessions.is_attached("node-2"));
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "the gateway panicked");
}
