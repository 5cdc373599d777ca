use super::*;
use crate::config::parse_pbtxt;
use crate::datatype::DataType;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::time::Duration;

fn policy(text: &str) -> Policy {
    Policy::from_config(&parse_pbtxt(text, "t/config.pbtxt").unwrap(), "t").unwrap()
}

fn rows(values: &[u8]) -> Vec<Tensor> {
    vec![Tensor::new("x", DataType::U8, vec![values.len() as i64, 1], values.to_vec())]
}

/// Echoes its input, panics on an empty input list; with `gated`, each batch waits for the
/// test to release it. Records every batch's first-dimension size.
struct Probe {
    gated: bool,
    release: parking_lot::Mutex<mpsc::Receiver<()>>,
    entered: AtomicUsize,
    batches: parking_lot::Mutex<Vec<i64>>,
}

impl Engine for Probe {
    fn infer(&self, inputs: &[Tensor], _: &mut Phases) -> Result<Vec<Tensor>> {
        if inputs.is_empty() {
            panic!("deliberate test panic");
        }
        self.entered.fetch_add(1, Ordering::SeqCst);
        if self.gated {
            let _ = self.release.lock().recv();
        }
        self.batches.lock().push(inputs[0].shape[0]);
        Ok(inputs.to_vec())
    }
}

fn probe(gated: bool) -> (Arc<Probe>, mpsc::Sender<()>) {
    let (tx, rx) = mpsc::channel();
    let p = Probe {
        gated,
        release: parking_lot::Mutex::new(rx),
        entered: AtomicUsize::new(0),
        batches: parking_lot::Mutex::new(Vec::new()),
    };
    (Arc::new(p), tx)
}

async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..5000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("condition not reached: {what}");
}

fn submit(s: &Arc<Scheduler>, inputs: Vec<Tensor>, a: Admission) -> tokio::task::JoinHandle<Completed> {
    let s = s.clone();
    tokio::spawn(async move { s.run(inputs, a).await })
}

fn with_priority(p: u64) -> Admission {
    Admission { priority: Some(p), ..Admission::now() }
}

#[tokio::test]
async fn a_panic_fails_the_batch_and_the_instance_is_replaced() {
    let (engine, _) = probe(false);
    let s = Scheduler::start(engine, policy("max_batch_size: 4"), 2, "echo/1").unwrap();
    let done = s.run(rows(&[7]), Admission::now()).await;
    assert_eq!(done.outputs.unwrap(), rows(&[7]));
    // that run measured the engine as cheap: the next request runs on this task, and its panic
    // turns inline runs off instead of retiring a thread
    let failed = s.run(vec![], Admission::now()).await;
    assert!(!failed.instance_replaced);
    assert!(failed.outputs.unwrap_err().message.contains("deliberate test panic"));
    assert!(!s.shared.inline.load(Ordering::SeqCst));
    for _ in 0..3 {
        let failed = s.run(vec![], Admission::now()).await;
        assert!(failed.instance_replaced);
        let err = failed.outputs.unwrap_err();
        assert!(err.message.contains("deliberate test panic") && err.message.contains("echo/1"), "{err}");
    }
    for _ in 0..4 {
        assert!(s.run(rows(&[1]), Admission::now()).await.outputs.is_ok());
    }
    wait_for("both instances running again", || s.shared.live.load(Ordering::SeqCst) == 2).await;
}

#[tokio::test]
async fn full_queue_rejects_at_once_and_deadlines_and_cancellations_skip_the_engine() {
    let (engine, release) = probe(true);
    let s = Arc::new(
        Scheduler::start(
            engine.clone(),
            policy("dynamic_batching { default_queue_policy { max_queue_size: 1 } }"),
            1,
            "gate/1",
        )
        .unwrap(),
    );
    let one = || vec![Tensor::new("x", DataType::U8, vec![1], vec![1u8])];
    // One running (blocked in the engine), one waiting: the queue (max 1) is full.
    let running = submit(&s, one(), Admission::now());
    wait_for("first in the engine", || engine.entered.load(Ordering::SeqCst) == 1).await;
    // Its timeout (1 µs) has passed by the time an instance takes it.
    let waiting = submit(&s, one(), Admission { timeout_us: Some(1), ..Admission::now() });
    wait_for("second queued", || s.queued() == 1).await;
    let rejected = s.run(one(), Admission::now()).await.outputs.unwrap_err();
    assert_eq!(rejected.kind, ErrorKind::ResourceExhausted);
    assert!(rejected.message.contains("max_queue_size 1"), "{rejected}");
    assert_eq!(s.full().map(|e| e.kind), Some(ErrorKind::ResourceExhausted), "adapters can shed before decoding");
    release.send(()).unwrap();
    let first = running.await.unwrap().outputs;
    assert!(first.is_ok(), "{first:?}");
    let late = waiting.await.unwrap().outputs.unwrap_err();
    assert_eq!(late.kind, ErrorKind::DeadlineExceeded, "{late}");
    assert_eq!(engine.batches.lock().len(), 1, "the late request must not run");
    assert!(s.full().is_none());

    // A queued request whose caller went away leaves the queue at once.
    let blocker = submit(&s, one(), Admission::now());
    wait_for("blocker in the engine", || engine.entered.load(Ordering::SeqCst) == 2).await;
    let abandoned = submit(&s, one(), Admission::now());
    wait_for("abandoned queued", || s.queued() == 1).await;
    abandoned.abort();
    let _ = abandoned.await;
    assert_eq!(s.queued(), 0, "the abandoned request left the queue");
    release.send(()).unwrap();
    assert!(blocker.await.unwrap().outputs.is_ok());
    let after = submit(&s, one(), Admission::now());
    release.send(()).unwrap();
    assert!(after.await.unwrap().outputs.is_ok());
    assert_eq!(engine.batches.lock().len(), 3, "the abandoned request must not run");
}

#[tokio::test]
async fn queued_requests_are_joined_into_one_batch_and_split_back() {
    let (engine, release) = probe(true);
    let s =
        Arc::new(Scheduler::start(engine.clone(), policy("max_batch_size: 8 dynamic_batching { }"), 1, "b/1").unwrap());
    let blocker = submit(&s, rows(&[0]), Admission::now());
    wait_for("blocker in the engine", || engine.entered.load(Ordering::SeqCst) == 1).await;
    let mut handles = Vec::new();
    for i in 1..=5u8 {
        let values: Vec<u8> = (0..i).map(|k| i * 10 + k).collect();
        handles.push((values.clone(), submit(&s, rows(&values), Admission::now())));
        wait_for("queued", || s.queued() == i as usize).await;
    }
    for _ in 0..4 {
        release.send(()).unwrap();
    }
    assert!(blocker.await.unwrap().outputs.is_ok());
    let mut records = 0;
    for (values, h) in handles {
        let done = h.await.unwrap();
        records += usize::from(done.records_batch);
        assert_eq!(done.outputs.unwrap(), rows(&values), "each request gets its own rows back");
    }
    // 1+2+3+4+5 = 15 rows; max 8 rows a batch, whole requests only: [1,2,3] = 6, then [4] (4+5 > 8), then [5].
    assert_eq!(*engine.batches.lock(), vec![1, 6, 4, 5]);
    assert_eq!(records, 3, "one request per batch records the execution");
}

#[tokio::test]
async fn preferred_sizes_cut_the_batch_and_incompatible_shapes_wait_their_turn() {
    let (engine, release) = probe(true);
    let s = Arc::new(
        Scheduler::start(
            engine.clone(),
            policy("max_batch_size: 8 dynamic_batching { preferred_batch_size: 2 }"),
            1,
            "p/1",
        )
        .unwrap(),
    );
    let blocker = submit(&s, rows(&[0]), Admission::now());
    wait_for("blocker in the engine", || engine.entered.load(Ordering::SeqCst) == 1).await;
    let wide = vec![Tensor::new("x", DataType::U8, vec![1, 2], vec![9u8, 9])];
    let mut hs = vec![];
    for (i, inputs) in [rows(&[1]), rows(&[2]), rows(&[3]), wide.clone(), rows(&[4])].into_iter().enumerate() {
        hs.push(submit(&s, inputs, Admission::now()));
        wait_for("queued", || s.queued() == i + 1).await;
    }
    for _ in 0..6 {
        release.send(()).unwrap();
    }
    assert!(blocker.await.unwrap().outputs.is_ok());
    for h in hs {
        assert!(h.await.unwrap().outputs.is_ok());
    }
    // [1,2] is a preferred size; [3] stops at the wider request; the wide one alone; then [4].
    assert_eq!(*engine.batches.lock(), vec![1, 2, 1, 1, 1]);
}

#[tokio::test]
async fn an_idle_engine_runs_a_lone_request_without_waiting_for_the_queue_delay() {
    let (engine, _) = probe(false);
    let p = policy("max_batch_size: 8 dynamic_batching { max_queue_delay_microseconds: 60000000 }");
    let s = Scheduler::start(engine, p, 1, "d/1").unwrap();
    for _ in 0..3 {
        // A minute of allowed delay; the answer must come long before.
        let done = tokio::time::timeout(Duration::from_secs(20), s.run(rows(&[1]), Admission::now())).await;
        assert!(done.expect("no delay added").outputs.is_ok());
    }
}

#[tokio::test]
async fn higher_priority_requests_run_first() {
    let (engine, release) = probe(true);
    let p = policy("dynamic_batching { priority_levels: 3 default_priority_level: 2 }");
    let s = Arc::new(Scheduler::start(engine.clone(), p, 1, "pr/1").unwrap());
    let blocker = submit(&s, rows(&[0]), Admission::now());
    wait_for("blocker in the engine", || engine.entered.load(Ordering::SeqCst) == 1).await;
    let mut hs = vec![];
    for (i, (value, a)) in
        [(30, with_priority(3)), (20, Admission::now()), (10, with_priority(1)), (21, with_priority(99))]
            .into_iter()
            .enumerate()
    {
        let inputs = vec![Tensor::new("x", DataType::U8, vec![value as i64], vec![value])];
        hs.push(submit(&s, inputs, a));
        wait_for("queued", || s.queued() == i + 1).await;
    }
    for _ in 0..5 {
        release.send(()).unwrap();
    }
    blocker.await.unwrap().outputs.unwrap();
    for h in hs {
        h.await.unwrap().outputs.unwrap();
    }
    // Without batching, the engine sees each request's first dimension: its value.
    assert_eq!(
        *engine.batches.lock(),
        vec![1, 10, 20, 21, 30],
        "level 1, then default level 2 (in arrival order), then 3"
    );
}

#[tokio::test]
async fn delay_action_moves_late_requests_behind_and_still_runs_them() {
    let (engine, release) = probe(true);
    let p =
        policy("dynamic_batching { default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 1 } }");
    let s = Arc::new(Scheduler::start(engine.clone(), p, 1, "dl/1").unwrap());
    let blocker = submit(&s, rows(&[0]), Admission::now());
    wait_for("blocker in the engine", || engine.entered.load(Ordering::SeqCst) == 1).await;
    let late = submit(&s, vec![Tensor::new("x", DataType::U8, vec![5], vec![5u8])], Admission::now());
    wait_for("late queued", || s.queued() == 1).await;
    for _ in 0..3 {
        release.send(()).unwrap();
    }
    blocker.await.unwrap().outputs.unwrap();
    assert!(late.await.unwrap().outputs.is_ok(), "DELAY runs the request anyway");
}

#[tokio::test]
async fn preserve_ordering_answers_in_arrival_order() {
    // Two instances: the first request blocks, the second finishes first but is held back.
    struct Slow(AtomicBool);
    impl Engine for Slow {
        fn infer(&self, inputs: &[Tensor], _: &mut Phases) -> Result<Vec<Tensor>> {
            if !self.0.swap(true, Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(inputs.to_vec())
        }
    }
    let p = policy("dynamic_batching { preserve_ordering: true }");
    let s = Arc::new(Scheduler::start(Arc::new(Slow(AtomicBool::new(false))), p, 2, "o/1").unwrap());
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut hs = vec![];
    for i in 0..2u8 {
        let (s, order) = (s.clone(), order.clone());
        hs.push(tokio::spawn(async move {
            let done = s.run(vec![Tensor::new("x", DataType::U8, vec![1], vec![i])], Admission::now()).await;
            order.lock().push(i);
            done
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for h in hs {
        h.await.unwrap().outputs.unwrap();
    }
    assert_eq!(*order.lock(), vec![0, 1]);
}

#[tokio::test]
async fn adaptive_limit_turns_requests_away_when_reached() {
    let (engine, release) = probe(true);
    let p = policy(
        r#"parameters { key: "adaptive_concurrency" value { string_value: "gradient" } }
           parameters { key: "adaptive_initial_limit" value { string_value: "2" } }"#,
    );
    let s = Arc::new(Scheduler::start(engine.clone(), p, 1, "a/1").unwrap());
    assert_eq!(s.limit(), Some(2));
    let a = submit(&s, rows(&[1]), Admission::now());
    wait_for("first in the engine", || engine.entered.load(Ordering::SeqCst) == 1).await;
    let b = submit(&s, rows(&[1]), Admission::now());
    wait_for("second queued", || s.queued() == 1).await;
    let e = s.run(rows(&[1]), Admission::now()).await.outputs.unwrap_err();
    assert_eq!(e.kind, ErrorKind::ResourceExhausted);
    assert!(e.message.contains("adaptive concurrency limit of 2"), "{e}");
    release.send(()).unwrap();
    release.send(()).unwrap();
    a.await.unwrap().outputs.unwrap();
    b.await.unwrap().outputs.unwrap();
}

/// Records the name of the thread each execution ran on and the most executions at once.
#[derive(Default)]
struct Where {
    threads: parking_lot::Mutex<Vec<String>>,
    running: AtomicUsize,
    most: AtomicUsize,
    spin: Duration,
}

impl Engine for Where {
    fn infer(&self, inputs: &[Tensor], _: &mut Phases) -> Result<Vec<Tensor>> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        let name = std::thread::current().name().unwrap_or("").to_string();
        self.threads.lock().push(name);
        let start = Instant::now();
        while start.elapsed() < self.spin {
            std::hint::spin_loop();
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(inputs.to_vec())
    }
}

fn on_engine_threads(w: &Where) -> Vec<bool> {
    w.threads.lock().iter().map(|t| t.starts_with("engine-")).collect()
}

#[tokio::test]
async fn cheap_requests_run_on_the_callers_task_once_measured() {
    let w = Arc::new(Where::default());
    let s = Scheduler::start(w.clone(), policy("max_batch_size: 262144"), 1, "cheap/1").unwrap();
    for _ in 0..3 {
        assert_eq!(s.run(rows(&[1, 2]), Admission::now()).await.outputs.unwrap(), rows(&[1, 2]));
    }
    // the first run is measured on an instance thread; then the engine is known to be cheap
    assert_eq!(on_engine_threads(&w), [true, false, false]);
    // a request whose rows would take longer than INLINE_MAX_NS still goes to the thread
    let row_ns = s.shared.row_ns.load(Ordering::SeqCst).max(1);
    let many = (INLINE_MAX_NS / row_ns + 1).min(262_144) as usize;
    if row_ns * many as u64 > INLINE_MAX_NS {
        let big = vec![Tensor::new("x", DataType::U8, vec![many as i64, 1], vec![0u8; many])];
        assert!(s.run(big, Admission::now()).await.outputs.is_ok());
        assert_eq!(on_engine_threads(&w).last(), Some(&true));
    }
}

#[tokio::test]
async fn costly_engines_batching_and_ordering_keep_the_thread_hop() {
    let slow = Arc::new(Where { spin: Duration::from_micros(INLINE_MAX_NS / 1000 * 3), ..Where::default() });
    let s = Scheduler::start(slow.clone(), policy("max_batch_size: 8"), 1, "slow/1").unwrap();
    for _ in 0..3 {
        assert!(s.run(rows(&[1]), Admission::now()).await.outputs.is_ok());
    }
    assert_eq!(on_engine_threads(&slow), [true, true, true]);
    for config in [
        "max_batch_size: 8\ndynamic_batching { }",
        "max_batch_size: 8\ndynamic_batching { preserve_ordering: true }",
        "max_batch_size: 8\nparameters { key: \"inline_max_us\" value { string_value: \"0\" } }",
    ] {
        let w = Arc::new(Where::default());
        let s = Scheduler::start(w.clone(), policy(config), 1, "batched/1").unwrap();
        for _ in 0..3 {
            assert!(s.run(rows(&[1]), Admission::now()).await.outputs.is_ok());
        }
        assert_eq!(on_engine_threads(&w), [true, true, true], "{config}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inline_runs_and_instance_threads_never_exceed_the_instance_count() {
    for count in [1, 2] {
        let w = Arc::new(Where { spin: Duration::from_micros(5), ..Where::default() });
        let s = Arc::new(Scheduler::start(w.clone(), policy("max_batch_size: 8"), count, "count/1").unwrap());
        let callers: Vec<_> = (0..8)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move {
                    for _ in 0..300 {
                        assert!(s.run(rows(&[1]), Admission::now()).await.outputs.is_ok());
                    }
                })
            })
            .collect();
        for c in callers {
            c.await.unwrap();
        }
        let kinds = on_engine_threads(&w);
        assert_eq!(kinds.len(), 2400);
        assert!(kinds.iter().any(|t| !t), "some requests ran inline");
        assert!(
            w.most.load(Ordering::SeqCst) <= count,
            "{} at once with {count} instances",
            w.most.load(Ordering::SeqCst)
        );
    }
}

#[test]
fn inline_max_us_is_checked() {
    let with = |v: &str| {
        let text =
            format!("max_batch_size: 8\nparameters {{ key: \"inline_max_us\" value {{ string_value: \"{v}\" }} }}");
        Policy::from_config(&parse_pbtxt(&text, "t/config.pbtxt").unwrap(), "t").map(|p| p.inline_max_ns)
    };
    assert_eq!(policy("max_batch_size: 8").inline_max_ns, INLINE_MAX_NS);
    assert_eq!(with("0").unwrap(), 0);
    assert_eq!(with(" 200 ").unwrap(), 200_000);
    for bad in ["-1", "1001", "fast", "", "1.5"] {
        let e = with(bad).unwrap_err();
        assert!(e.message.contains("inline_max_us") && e.message.contains("0 to 1000"), "{bad}: {e}");
    }
}
