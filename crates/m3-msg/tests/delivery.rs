//! End-to-end delivery over real TCP on 127.0.0.1: producer → consumer servers → acks.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use m3_msg::*;
use m3_proto::msgpb;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SHARDS: u32 = 8;
const WAIT: Duration = Duration::from_secs(5);
/// A message retry backoff no test lives to see: under it a second copy of a message can only
/// come from a bug, never from an ack that was slow on a loaded machine.
const NO_RETRY: Duration = Duration::from_secs(60);

/// Short timings so tests finish quickly; retries are slow enough not to fire before acks
/// unless a test wants them.
fn producer_config(initial_backoff: Duration) -> ProducerConfig {
    let mut config = ProducerConfig::default();
    config.writer.message_retry = RetryPolicy {
        initial_backoff,
        backoff_factor: 2.0,
        max_backoff: initial_backoff * 4,
        jitter: false,
    };
    config.writer.message_queue_new_writes_scan_interval = Duration::from_millis(10);
    config.writer.connection.flush_interval = Duration::from_millis(2);
    config.writer.connection.dial_timeout = Duration::from_millis(500);
    config.writer.connection.retry = RetryPolicy {
        initial_backoff: Duration::from_millis(20),
        backoff_factor: 2.0,
        max_backoff: Duration::from_millis(100),
        jitter: false,
    };
    config
}

fn consumer_config() -> ConsumerConfig {
    ConsumerConfig {
        ack_flush_interval: Duration::from_millis(5),
        ..ConsumerConfig::default()
    }
}

/// A message as seen by a consumer.
#[derive(Debug, Clone)]
struct Seen {
    meta: msgpb::Metadata,
    value: Bytes,
}

struct TestConsumer {
    endpoint: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    metrics: ConsumerMetrics,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
}

impl TestConsumer {
    /// Starts a server whose handler records every delivery and applies `decide`.
    async fn start(decide: impl Fn(&Seen) -> Decision + Send + Sync + 'static) -> Self {
        Self::serve_on(listen_any().await, move |s, msg| msg.finish(decide(s)))
    }

    /// Starts a server on `listener` whose handler records every delivery, then hands the
    /// message to `handle`.
    fn serve_on(
        listener: TcpListener,
        handle: impl Fn(&Seen, ConsumedMessage) + Send + Sync + 'static,
    ) -> Self {
        let endpoint = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let handler = move |msg: ConsumedMessage| {
            let s = Seen {
                meta: msg.metadata(),
                value: msg.value().clone(),
            };
            record.lock().push(s.clone());
            handle(&s, msg);
        };
        let server = ConsumerServer::new(consumer_config(), Arc::new(handler));
        let metrics = server.metrics().clone();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(server.serve(listener, shutdown.clone()));
        Self {
            endpoint,
            seen,
            metrics,
            shutdown,
            server,
        }
    }

    async fn acking() -> Self {
        Self::start(|_| Decision::Ack).await
    }

    fn acking_on(listener: TcpListener) -> Self {
        Self::serve_on(listener, |_, msg| msg.ack())
    }

    /// Stops the server and returns once every connection it had is closed and its listener
    /// is gone, so the address is free and the producer sees its connection break.
    async fn kill(&mut self) {
        self.shutdown.cancel();
        (&mut self.server).await.unwrap();
    }

    fn instance(&self, id: &str, shards: Option<Vec<u32>>) -> ConsumerInstance {
        ConsumerInstance {
            id: id.into(),
            endpoint: self.endpoint.clone(),
            shards,
        }
    }

    fn values(&self) -> Vec<Bytes> {
        self.seen.lock().iter().map(|s| s.value.clone()).collect()
    }
}

impl Drop for TestConsumer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn spec(name: &str, consumption: ConsumptionType, ttl: Option<Duration>) -> ConsumerServiceSpec {
    ConsumerServiceSpec {
        name: name.into(),
        consumption,
        message_ttl: ttl,
    }
}

async fn listen_any() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

fn instances(list: Vec<ConsumerInstance>) -> ConsumerInstances {
    ConsumerInstances { instances: list }
}

fn payload(i: usize) -> Bytes {
    Bytes::from(format!("message-{i}"))
}

/// Polls `cond` until true or the test deadline passes.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn counts(values: impl IntoIterator<Item = Bytes>) -> HashMap<Bytes, usize> {
    let mut counts = HashMap::new();
    for v in values {
        *counts.entry(v).or_insert(0) += 1;
    }
    counts
}

fn payloads(n: usize) -> HashSet<Bytes> {
    (0..n).map(payload).collect()
}

/// Messages dropped for any reason.
fn dropped_total(m: &ProducerMetrics) -> u64 {
    [
        DropReason::BufferFull,
        DropReason::TtlExpired,
        DropReason::NoConsumerInstance,
        DropReason::NoConsumerService,
        DropReason::EncodeError,
        DropReason::Closed,
    ]
    .into_iter()
    .map(|reason| m.dropped(reason))
    .sum()
}

/// SHARED with two connected owners of every shard: each message is delivered exactly once,
/// both instances get some, and per shard queue the message IDs increase.
#[tokio::test]
async fn shared_delivers_each_message_once_across_instances() {
    let a = TestConsumer::acking().await;
    let b = TestConsumer::acking().await;
    let producer = Producer::new(producer_config(NO_RETRY), SHARDS);
    let (_tx, rx) = watch::channel(instances(vec![
        a.instance("a", None),
        b.instance("b", None),
    ]));
    producer
        .add_consumer_service(spec("coord", ConsumptionType::Shared, None), rx)
        .unwrap();
    // Wait for both connections so the split is not decided by dial order.
    eventually("both connected", || {
        a.metrics.connections() == 1 && b.metrics.connections() == 1
    })
    .await;

    const N: usize = 300;
    for i in 0..N {
        producer
            .produce((i % SHARDS as usize) as u32, payload(i))
            .unwrap();
    }
    assert!(producer.flush(WAIT).await, "buffer did not drain");

    let all = counts(a.values().into_iter().chain(b.values()));
    assert_eq!(all.len(), N);
    assert!(
        all.values().all(|&c| c == 1),
        "a message was delivered twice"
    );
    assert!(
        !a.values().is_empty() && !b.values().is_empty(),
        "one instance got nothing"
    );
    let m = producer.metrics();
    assert_eq!(m.produced(), N as u64);
    assert_eq!(m.acks_received(), N as u64);
    assert_eq!(m.sent(), N as u64);
    assert_eq!(m.retries(), 0);
    assert_eq!(producer.buffered_bytes(), 0);
    assert_eq!(a.metrics.acks_sent() + b.metrics.acks_sent(), N as u64);

    // IDs increase monotonically per shard queue.
    for c in [&a, &b] {
        let seen = c.seen.lock();
        let mut last: HashMap<u64, u64> = HashMap::new();
        for s in seen.iter() {
            if let Some(prev) = last.insert(s.meta.shard, s.meta.id) {
                assert!(s.meta.id > prev);
            }
            assert!(s.meta.sent_at_nanos > 0);
        }
    }
    assert_eq!(producer.close(Duration::from_secs(1)).await, 0);
}

/// SHARED sends each message only to an instance that owns its shard.
#[tokio::test]
async fn shared_routes_by_shard_ownership() {
    let a = TestConsumer::acking().await;
    let b = TestConsumer::acking().await;
    let producer = Producer::new(producer_config(Duration::from_secs(5)), SHARDS);
    let (_tx, rx) = watch::channel(instances(vec![
        a.instance("a", Some(vec![0, 2, 4, 6])),
        b.instance("b", Some(vec![1, 3, 5, 7])),
    ]));
    producer
        .add_consumer_service(spec("coord", ConsumptionType::Shared, None), rx)
        .unwrap();
    for i in 0..80 {
        producer.produce(i % SHARDS, payload(i as usize)).unwrap();
    }
    assert!(producer.flush(WAIT).await);
    assert!(a.seen.lock().iter().all(|s| s.meta.shard % 2 == 0));
    assert!(b.seen.lock().iter().all(|s| s.meta.shard % 2 == 1));
    assert_eq!(a.values().len() + b.values().len(), 80);
}

/// REPLICATED delivers every message exactly once to every owner of its shard, each owner in
/// its own replica slot of the ack key.
#[tokio::test]
async fn replicated_delivers_every_message_to_every_owner() {
    let a = TestConsumer::acking().await;
    let b = TestConsumer::acking().await;
    let producer = Producer::new(producer_config(NO_RETRY), SHARDS);
    let all: Vec<u32> = (0..SHARDS).collect();
    let (_tx, rx) = watch::channel(instances(vec![
        a.instance("a", Some(all.clone())),
        b.instance("b", Some(all)),
    ]));
    producer
        .add_consumer_service(spec("agg", ConsumptionType::Replicated, None), rx)
        .unwrap();

    const N: usize = 100;
    for i in 0..N {
        producer
            .produce((i % SHARDS as usize) as u32, payload(i))
            .unwrap();
    }
    assert!(producer.flush(WAIT).await);
    let expected: HashSet<Bytes> = (0..N).map(payload).collect();
    for c in [&a, &b] {
        let got = counts(c.values());
        assert_eq!(got.keys().cloned().collect::<HashSet<_>>(), expected);
        assert!(got.values().all(|&n| n == 1));
    }
    assert_eq!(producer.metrics().acks_received(), 2 * N as u64);
    assert_eq!(producer.metrics().retries(), 0);
    // Ack keys are replica × shards + shard, one replica slot per instance.
    let slots = |c: &TestConsumer| -> HashSet<u64> {
        c.seen
            .lock()
            .iter()
            .map(|s| s.meta.shard / u64::from(SHARDS))
            .collect()
    };
    let (sa, sb) = (slots(&a), slots(&b));
    assert_eq!(sa.len(), 1);
    assert_eq!(sb.len(), 1);
    assert_ne!(sa, sb);
}

/// A message the consumer declines is delivered again after the retry backoff until acked.
#[tokio::test]
async fn no_ack_is_redelivered_until_acked() {
    let first_seen = Arc::new(Mutex::new(HashSet::new()));
    let c = TestConsumer::start(move |s| {
        if first_seen.lock().insert(s.meta.id) {
            Decision::NoAck
        } else {
            Decision::Ack
        }
    })
    .await;
    let producer = Producer::new(producer_config(Duration::from_millis(30)), SHARDS);
    let (_tx, rx) = watch::channel(instances(vec![c.instance("c", None)]));
    producer
        .add_consumer_service(spec("coord", ConsumptionType::Shared, None), rx)
        .unwrap();
    for i in 0..10 {
        producer.produce(i % SHARDS, payload(i as usize)).unwrap();
    }
    assert!(producer.flush(WAIT).await);
    let got = counts(c.values());
    assert_eq!(got.len(), 10);
    assert!(got.values().all(|&n| n >= 2));
    assert_eq!(c.metrics.no_acks(), 10);
    assert!(producer.metrics().retries() >= 10);
    assert_eq!(producer.metrics().acks_received(), 10);
}

/// A `handler_fn` handler runs each message on its own task and acks from there.
#[tokio::test]
async fn async_handler_acks_off_the_read_loop() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    let handled = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&handled);
    let handler = handler_fn(move |_value, _meta| {
        let h = Arc::clone(&h);
        async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            h.fetch_add(1, Ordering::SeqCst);
            Decision::Ack
        }
    });
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(
        listener,
        handler,
        consumer_config(),
        shutdown.clone(),
    ));
    let producer = Producer::new(producer_config(Duration::from_secs(5)), SHARDS);
    let (_tx, rx) = watch::channel(instances(vec![ConsumerInstance {
        id: "c".into(),
        endpoint,
        shards: None,
    }]));
    producer
        .add_consumer_service(spec("coord", ConsumptionType::Shared, None), rx)
        .unwrap();
    for i in 0..20 {
        producer.produce(i % SHARDS, payload(i as usize)).unwrap();
    }
    assert!(producer.flush(WAIT).await);
    assert_eq!(handled.load(Ordering::SeqCst), 20);
    shutdown.cancel();
}

/// A consumer that works through a backlog slowly but steadily is waited for by
/// `flush_while_progressing` and `close` however long the whole backlog takes, while a plain
/// `flush` with the same timeout gives up.
#[tokio::test]
async fn waiting_while_progressing_outlasts_a_slow_steady_consumer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    let handled = Arc::new(AtomicUsize::new(0));
    let one_at_a_time = Arc::new(tokio::sync::Mutex::new(()));
    let h = Arc::clone(&handled);
    let handler = handler_fn(move |_value, _meta| {
        let h = Arc::clone(&h);
        let one_at_a_time = Arc::clone(&one_at_a_time);
        async move {
            let _turn = one_at_a_time.lock().await;
            tokio::time::sleep(Duration::from_millis(15)).await;
            h.fetch_add(1, Ordering::SeqCst);
            Decision::Ack
        }
    });
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(
        listener,
        handler,
        consumer_config(),
        shutdown.clone(),
    ));
    let producer = Producer::new(producer_config(Duration::from_secs(30)), SHARDS);
    let (_tx, rx) = watch::channel(instances(vec![ConsumerInstance {
        id: "c".into(),
        endpoint,
        shards: None,
    }]));
    producer
        .add_consumer_service(spec("coord", ConsumptionType::Shared, None), rx)
        .unwrap();
    const MESSAGES: usize = 60;
    for i in 0..MESSAGES {
        producer.produce(i as u32 % SHARDS, payload(i)).unwrap();
    }
    // The backlog takes about 60 x 15 ms = 900 ms; no ack is ever more than ~15 ms apart.
    let stall = Duration::from_millis(400);
    assert!(
        !producer.flush(stall).await,
        "a fixed 400 ms wait cannot see a 900 ms backlog through"
    );
    assert!(producer.flush_while_progressing(stall).await);
    assert_eq!(handled.load(Ordering::SeqCst), MESSAGES);

    for i in 0..MESSAGES {
        producer.produce(i as u32 % SHARDS, payload(i)).unwrap();
    }
    assert_eq!(
        producer.close(stall).await,
        0,
        "close gave up on a steady backlog"
    );
    assert_eq!(handled.load(Ordering::SeqCst), 2 * MESSAGES);
    assert_eq!(producer.metrics().dropped(DropReason::Closed), 0);
    shutdown.cancel();
}

/// An address nothing listens on. Keep the socket while the address is in use: it holds the
/// port (bound, never listening), so a listener of a test running alongside cannot take it.
fn dead_endpoint() -> (TcpSocket, String) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let endpoint = socket.local_addr().unwrap().to_string();
    (socket, endpoint)
}

/// With the only instance unreachable, every message is dropped as `ttl_expired` once its
/// TTL passes.
#[tokio::test]
async fn ttl_expiry_is_counted_when_no_consumer_is_reachable() {
    let producer = Producer::new(producer_config(Duration::from_millis(20)), SHARDS);
    let (_dead, endpoint) = dead_endpoint();
    let (_tx, rx) = watch::channel(instances(vec![ConsumerInstance {
        id: "gone".into(),
        endpoint,
        shards: None,
    }]));
    producer
        .add_consumer_service(
            spec(
                "coord",
                ConsumptionType::Shared,
                Some(Duration::from_millis(150)),
            ),
            rx,
        )
        .unwrap();
    for i in 0..5 {
        producer.produce(i, payload(i as usize)).unwrap();
    }
    assert_eq!(producer.buffered_messages(), 5);
    assert!(producer.flush(WAIT).await);
    let m = producer.metrics();
    assert_eq!(m.dropped(DropReason::TtlExpired), 5);
    assert_eq!(m.acks_received(), 0);
    assert!(m.connection_errors() > 0);
}

/// A full buffer drops its oldest messages (counted `buffer_full`); an instance that appears
/// later receives exactly the messages still buffered.
#[tokio::test]
async fn drop_oldest_when_full_then_late_instance_gets_the_rest() {
    let mut config = producer_config(Duration::from_secs(5));
    config.buffer.max_buffer_size = 100;
    let producer = Producer::new(config, SHARDS);
    let (tx, rx) = watch::channel(ConsumerInstances::default());
    producer
        .add_consumer_service(spec("coord", ConsumptionType::Shared, None), rx)
        .unwrap();
    // 30-byte values: three fit in 100 bytes, every later one pushes out the oldest.
    let value = |i: usize| Bytes::from(format!("{i:030}"));
    for i in 0..10 {
        producer.produce(0, value(i)).unwrap();
    }
    let m = producer.metrics();
    assert_eq!(m.dropped(DropReason::BufferFull), 7);
    assert_eq!(producer.buffered_messages(), 3);
    assert_eq!(producer.buffered_bytes(), 90);

    // An instance appearing at runtime receives what is still buffered: the newest three.
    let c = TestConsumer::acking().await;
    tx.send(instances(vec![c.instance("late", None)])).unwrap();
    assert!(producer.flush(WAIT).await);
    let mut got = c.values();
    got.sort();
    assert_eq!(got, vec![value(7), value(8), value(9)]);
}

/// Every refused `produce` hands the value back and counts the reason; `close` drops and
/// counts what is left, then refuses messages and new services.
#[tokio::test]
async fn return_error_strategy_hands_back_the_value() {
    let mut config = producer_config(Duration::from_secs(5));
    config.buffer.max_buffer_size = 10;
    config.buffer.on_full_strategy = OnFull::ReturnError;
    let producer = Producer::new(config, SHARDS);
    let (_tx, rx) = watch::channel(ConsumerInstances::default());
    producer
        .add_consumer_service(spec("coord", ConsumptionType::Shared, None), rx)
        .unwrap();
    producer
        .produce(0, Bytes::from_static(b"12345678"))
        .unwrap();
    let err = producer.produce(0, Bytes::from_static(b"abc")).unwrap_err();
    assert!(matches!(err, ProduceError::BufferFull { .. }), "{err}");
    assert_eq!(err.into_value(), Bytes::from_static(b"abc"));

    let err = producer
        .produce(SHARDS, Bytes::from_static(b"x"))
        .unwrap_err();
    assert!(matches!(err, ProduceError::InvalidShard { shard: 8, .. }));
    let err = producer.produce(0, Bytes::from(vec![0; 11])).unwrap_err();
    assert!(matches!(
        err,
        ProduceError::TooLarge {
            size: 11,
            max: 10,
            ..
        }
    ));
    let m = producer.metrics();
    assert_eq!(m.rejected(RejectReason::BufferFull), 1);
    assert_eq!(m.rejected(RejectReason::InvalidShard), 1);
    assert_eq!(m.rejected(RejectReason::TooLarge), 1);

    // Closing gives up on the un-deliverable message and counts it.
    assert_eq!(producer.close(Duration::from_millis(20)).await, 1);
    assert_eq!(m.dropped(DropReason::Closed), 1);
    assert!(matches!(
        producer.produce(0, Bytes::from_static(b"x")),
        Err(ProduceError::Closed { .. })
    ));
    assert_eq!(
        producer.add_consumer_service(
            spec("other", ConsumptionType::Shared, None),
            watch::channel(ConsumerInstances::default()).1
        ),
        Err(ServiceError::Closed)
    );
}

/// A message produced with no consumer service is accepted and counted as dropped.
#[tokio::test]
async fn producing_without_services_is_counted() {
    let producer = Producer::new(ProducerConfig::default(), SHARDS);
    producer.produce(0, Bytes::from_static(b"x")).unwrap();
    assert_eq!(producer.metrics().dropped(DropReason::NoConsumerService), 1);
    assert_eq!(producer.buffered_messages(), 0);
}

/// An instance added by a topology update receives the shards it now owns, and the old owner
/// stops receiving them.
#[tokio::test]
async fn instance_added_at_runtime_starts_receiving() {
    let a = TestConsumer::acking().await;
    let b = TestConsumer::acking().await;
    let producer = Producer::new(producer_config(Duration::from_secs(5)), SHARDS);
    let (tx, rx) = watch::channel(instances(vec![a.instance("a", None)]));
    producer
        .add_consumer_service(spec("coord", ConsumptionType::Shared, None), rx)
        .unwrap();
    producer.produce(5, payload(0)).unwrap();
    assert!(producer.flush(WAIT).await);
    assert_eq!(a.values(), vec![payload(0)]);

    // Shard 5 moves to the new instance b.
    tx.send(instances(vec![
        a.instance("a", Some(vec![0, 1, 2, 3])),
        b.instance("b", Some(vec![4, 5, 6, 7])),
    ]))
    .unwrap();
    // Give the writer a moment to apply the update before producing.
    eventually("b connected", || b.metrics.connections() == 1).await;
    producer.produce(5, payload(1)).unwrap();
    producer.produce(1, payload(2)).unwrap();
    assert!(producer.flush(WAIT).await);
    assert_eq!(b.values(), vec![payload(1)]);
    assert_eq!(a.values(), vec![payload(0), payload(2)]);
}

/// A removed instance's un-acked message goes to the instance that replaces it at once,
/// without waiting out the (long) retry backoff.
#[tokio::test]
async fn removed_instance_unacked_messages_move_to_another_owner() {
    let a = TestConsumer::start(|_| Decision::NoAck).await;
    let b = TestConsumer::acking().await;
    let producer = Producer::new(producer_config(Duration::from_secs(30)), SHARDS);
    let (tx, rx) = watch::channel(instances(vec![a.instance("a", None)]));
    producer
        .add_consumer_service(spec("coord", ConsumptionType::Shared, None), rx)
        .unwrap();
    producer.produce(3, payload(0)).unwrap();
    eventually("a got the message", || a.values().len() == 1).await;
    tx.send(instances(vec![b.instance("b", None)])).unwrap();
    assert!(producer.flush(Duration::from_secs(3)).await);
    assert_eq!(a.values(), vec![payload(0)]);
    assert_eq!(b.values(), vec![payload(0)]);
    // Exact: with a 30 s backoff no retry is timer-driven, so the one retry is the move to b.
    let m = producer.metrics();
    assert_eq!((m.sent(), m.retries(), m.acks_received()), (2, 1, 1));
}

/// A REPLICATED replica whose instance leaves with no replacement has its copies dropped as
/// `no_consumer_instance`, releasing messages the other replica already acked.
#[tokio::test]
async fn replicated_replica_lost_without_replacement_is_counted() {
    let a = TestConsumer::acking().await;
    let producer = Producer::new(producer_config(Duration::from_secs(30)), SHARDS);
    let (_dead, endpoint) = dead_endpoint();
    let (tx, rx) = watch::channel(instances(vec![
        a.instance("a", None),
        ConsumerInstance {
            id: "dead".into(),
            endpoint,
            shards: None,
        },
    ]));
    producer
        .add_consumer_service(spec("agg", ConsumptionType::Replicated, None), rx)
        .unwrap();
    producer.produce(2, payload(0)).unwrap();
    eventually("a acked", || producer.metrics().acks_received() == 1).await;
    assert_eq!(producer.buffered_messages(), 1);
    tx.send(instances(vec![a.instance("a", None)])).unwrap();
    assert!(producer.flush(WAIT).await);
    assert_eq!(
        producer.metrics().dropped(DropReason::NoConsumerInstance),
        1
    );
}

/// Names are unique; removing a service drops its outstanding messages as
/// `no_consumer_service`.
#[tokio::test]
async fn removing_a_service_counts_its_outstanding_messages() {
    let producer = Producer::new(producer_config(Duration::from_secs(5)), SHARDS);
    let (_tx, rx) = watch::channel(ConsumerInstances::default());
    producer
        .add_consumer_service(spec("coord", ConsumptionType::Shared, None), rx)
        .unwrap();
    let (_tx2, rx2) = watch::channel(ConsumerInstances::default());
    assert_eq!(
        producer.add_consumer_service(spec("coord", ConsumptionType::Shared, None), rx2),
        Err(ServiceError::AlreadyExists("coord".into()))
    );
    producer.produce(0, payload(0)).unwrap();
    producer.produce(1, payload(1)).unwrap();
    assert!(producer.remove_consumer_service("coord"));
    assert!(producer.flush(WAIT).await);
    assert_eq!(producer.metrics().dropped(DropReason::NoConsumerService), 2);
    assert!(producer.consumer_services().is_empty());
}

/// The public types can be shared across tasks and threads.
#[test]
fn public_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Producer>();
    check::<ConsumerServer>();
    check::<ConsumedMessage>();
    check::<ProduceError>();
    check::<ProducerMetrics>();
    check::<ConsumerMetrics>();
}

/// With no instance owning any shard, a message is retried until M3's recommended 5m TTL
/// and not a moment earlier (on paused time).
#[tokio::test(start_paused = true)]
async fn ttl_of_five_minutes_expires_with_paused_time() {
    let producer = Producer::new(ProducerConfig::default(), SHARDS);
    let (_tx, rx) = watch::channel(ConsumerInstances::default());
    producer
        .add_consumer_service(
            spec(
                "coord",
                ConsumptionType::Shared,
                Some(Duration::from_secs(300)),
            ),
            rx,
        )
        .unwrap();
    producer.produce(1, payload(1)).unwrap();
    let start = tokio::time::Instant::now();
    assert!(!producer.flush(Duration::from_secs(299)).await);
    assert!(producer.flush(Duration::from_secs(2)).await);
    assert!(start.elapsed() >= Duration::from_secs(300));
    assert_eq!(producer.metrics().dropped(DropReason::TtlExpired), 1);
}

/// When its consumer goes away and comes back on the same address, the producer notices the
/// broken connection, reconnects, and delivers a message produced while the consumer was down.
#[tokio::test]
async fn producer_reconnects_after_consumer_restart() {
    let mut first = TestConsumer::acking_on(listen_any().await);
    let addr = first.endpoint.clone();
    let producer = Producer::new(producer_config(Duration::from_millis(100)), SHARDS);
    let (_tx, rx) = watch::channel(instances(vec![first.instance("c", None)]));
    producer
        .add_consumer_service(spec("coord", ConsumptionType::Shared, None), rx)
        .unwrap();
    producer.produce(0, payload(0)).unwrap();
    assert!(producer.flush(WAIT).await);

    first.kill().await;
    producer.produce(1, payload(1)).unwrap();
    // Restart only once the producer has seen the connection break, so the reconnect is
    // really exercised whatever the machine's load.
    eventually("producer saw the connection break", || {
        producer.metrics().connection_errors() > 0
    })
    .await;
    let second = TestConsumer::acking_on(TcpListener::bind(addr.as_str()).await.unwrap());
    assert!(producer.flush(WAIT).await);
    assert!(!first.values().is_empty());
    assert!(first.values().iter().all(|v| *v == payload(0)));
    assert_eq!(
        counts(second.values()).into_keys().collect::<HashSet<_>>(),
        HashSet::from([payload(1)])
    );
    assert_eq!(producer.metrics().acks_received(), 2);
    assert_eq!(dropped_total(producer.metrics()), 0);
}

/// REPLICATED with one owner unreachable: the reachable owner gets every message exactly
/// once, while the unreachable replica's copies stay outstanding: never sent, never sent to
/// the other owner, never dropped.
#[tokio::test]
async fn replicated_with_one_owner_down_delivers_once_to_the_other() {
    let a = TestConsumer::acking().await;
    let (_down, down) = dead_endpoint();
    let producer = Producer::new(producer_config(NO_RETRY), SHARDS);
    let all: Vec<u32> = (0..SHARDS).collect();
    let (_tx, rx) = watch::channel(instances(vec![
        a.instance("a", Some(all.clone())),
        ConsumerInstance {
            id: "b".into(),
            endpoint: down,
            shards: Some(all),
        },
    ]));
    producer
        .add_consumer_service(spec("agg", ConsumptionType::Replicated, None), rx)
        .unwrap();
    const N: usize = 100;
    for i in 0..N {
        producer
            .produce((i % SHARDS as usize) as u32, payload(i))
            .unwrap();
    }
    let m = producer.metrics();
    eventually("a acked every message", || m.acks_received() >= N as u64).await;
    // b's copies are looked at every scan interval while its dials keep failing; let a few
    // more dials fail so that any copy wrongly routed to a would have arrived by now.
    let errors = m.connection_errors();
    eventually("three more failed dials to b", || {
        m.connection_errors() >= errors + 3
    })
    .await;
    let got = counts(a.values());
    assert_eq!(got.len(), N);
    let twice = got.values().filter(|&&n| n > 1).count();
    assert_eq!(twice, 0, "{twice} delivered more than once");
    assert_eq!(m.acks_received(), N as u64);
    assert_eq!((m.sent(), m.retries()), (N as u64, 0));
    assert_eq!(producer.buffered_messages(), N, "b's copies are still owed");
    assert_eq!(dropped_total(m), 0);
}

/// A consumer that takes messages and dies before acking any of them loses none: once a new
/// consumer is up on the same address, the producer delivers every message to it. Acks the
/// dead consumer makes after its connection closed never reach the producer.
#[tokio::test]
async fn unacked_messages_are_redelivered_when_the_consumer_dies() {
    // The first consumer holds every message without deciding, as if still processing it.
    let held = Arc::new(Mutex::new(Vec::new()));
    let hold = Arc::clone(&held);
    let mut first = TestConsumer::serve_on(listen_any().await, move |_, msg| {
        hold.lock().push(msg);
    });
    let addr = first.endpoint.clone();
    let producer = Producer::new(producer_config(Duration::from_millis(100)), SHARDS);
    let (_tx, rx) = watch::channel(instances(vec![first.instance("c", None)]));
    producer
        .add_consumer_service(spec("coord", ConsumptionType::Shared, None), rx)
        .unwrap();
    const N: usize = 20;
    for i in 0..N {
        producer
            .produce((i % SHARDS as usize) as u32, payload(i))
            .unwrap();
    }
    eventually("the first consumer saw every message", || {
        counts(first.values()).len() == N
    })
    .await;

    first.kill().await;
    let m = producer.metrics();
    eventually("producer saw the connection break", || {
        m.connection_errors() > 0
    })
    .await;
    assert_eq!(producer.buffered_messages(), N);
    let late: Vec<ConsumedMessage> = std::mem::take(&mut *held.lock());
    let late_count = late.len() as u64;
    late.into_iter().for_each(ConsumedMessage::ack);
    assert_eq!(first.metrics.acks_lost(), late_count);
    assert_eq!(first.metrics.acks_sent(), 0);

    let second = TestConsumer::acking_on(TcpListener::bind(addr.as_str()).await.unwrap());
    assert!(producer.flush(WAIT).await, "buffer did not drain");
    assert_eq!(
        counts(second.values()).into_keys().collect::<HashSet<_>>(),
        payloads(N)
    );
    assert_eq!(m.acks_received(), N as u64);
    // Every first copy went unanswered, so every message was sent at least once more.
    assert!(m.retries() >= N as u64, "retries {}", m.retries());
    assert_eq!(dropped_total(m), 0);
    assert_eq!(producer.buffered_bytes(), 0);
}

/// A consumer that stays connected but declines every message does not keep it forever:
/// each message is dropped as `ttl_expired` once its TTL passes, without any ack.
#[tokio::test]
async fn ttl_expires_while_connected_and_nacking() {
    let c = TestConsumer::start(|_| Decision::NoAck).await;
    let producer = Producer::new(producer_config(Duration::from_millis(20)), SHARDS);
    let (_tx, rx) = watch::channel(instances(vec![c.instance("c", None)]));
    producer
        .add_consumer_service(
            spec(
                "coord",
                ConsumptionType::Shared,
                Some(Duration::from_millis(500)),
            ),
            rx,
        )
        .unwrap();
    // Produce once connected, so the TTL is spent on a live connection, not on dialling.
    eventually("connected", || c.metrics.connections() == 1).await;
    const N: usize = 5;
    for i in 0..N {
        producer.produce(i as u32, payload(i)).unwrap();
    }
    assert!(producer.flush(WAIT).await, "buffer did not drain");
    let m = producer.metrics();
    assert_eq!(m.dropped(DropReason::TtlExpired), N as u64);
    assert_eq!(dropped_total(m), N as u64);
    assert_eq!(m.acks_received(), 0);
    assert_eq!(producer.buffered_bytes(), 0);
    // Every message reached the consumer and was declined there; the connection never broke.
    assert_eq!(
        counts(c.values()).into_keys().collect::<HashSet<_>>(),
        payloads(N)
    );
    assert_eq!(c.metrics.no_acks(), c.values().len() as u64);
    assert_eq!(c.metrics.acks_sent(), 0);
    assert_eq!(m.connection_errors(), 0);
    assert_eq!(c.metrics.connections(), 1);
}
