//! The rawtcp server over real loopback TCP: framed counters, gauges and batch timers reach
//! the engine; a garbage frame closes only its own connection.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use m3_aggregator::metadata::build;
use m3_aggregator::rawtcp::unix_nanos_now;
use m3_aggregator::{
    AggregatedOutput, Aggregator, AggregatorOptions, FlushMode, RejectReason, ShardAssignment,
    serve_rawtcp,
};
use m3_metric::{AggregationId, MetricType};
use m3_proto::framing::{DEFAULT_RAWTCP_MAX_MESSAGE_SIZE, put_rawtcp_frame};
use m3_proto::metricpb::{self, metric_with_metadatas::Type};

fn counter(id: &str, value: i64) -> metricpb::MetricWithMetadatas {
    metricpb::MetricWithMetadatas {
        r#type: Type::CounterWithMetadatas as i32,
        counter_with_metadatas: Some(metricpb::CounterWithMetadatas {
            counter: Some(metricpb::Counter {
                id: id.as_bytes().to_vec().into(),
                value,
                ..Default::default()
            }),
            metadatas: Some(build::simple(
                AggregationId::DEFAULT,
                &["10s:2d".parse().unwrap()],
            )),
        }),
        ..Default::default()
    }
}

fn gauge(id: &str, value: f64) -> metricpb::MetricWithMetadatas {
    metricpb::MetricWithMetadatas {
        r#type: Type::GaugeWithMetadatas as i32,
        gauge_with_metadatas: Some(metricpb::GaugeWithMetadatas {
            gauge: Some(metricpb::Gauge {
                id: id.as_bytes().to_vec().into(),
                value,
                ..Default::default()
            }),
            metadatas: None,
        }),
        ..Default::default()
    }
}

fn timer(id: &str, values: Vec<f64>) -> metricpb::MetricWithMetadatas {
    metricpb::MetricWithMetadatas {
        r#type: Type::BatchTimerWithMetadatas as i32,
        batch_timer_with_metadatas: Some(metricpb::BatchTimerWithMetadatas {
            batch_timer: Some(metricpb::BatchTimer {
                id: id.as_bytes().to_vec().into(),
                values,
                ..Default::default()
            }),
            metadatas: None,
        }),
        ..Default::default()
    }
}

fn frames(msgs: &[metricpb::MetricWithMetadatas]) -> BytesMut {
    let mut buf = BytesMut::new();
    for m in msgs {
        put_rawtcp_frame(m, &mut buf, DEFAULT_RAWTCP_MAX_MESSAGE_SIZE).unwrap();
    }
    buf
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_loopback_reach_the_engine_and_garbage_closes_one_connection() {
    let agg = Arc::new(Aggregator::new(
        AggregatorOptions::default(),
        Arc::new(|id: &[u8]| u32::from(id.first().copied().unwrap_or(0)) % 2),
    ));
    agg.set_shards(
        vec![ShardAssignment::unbounded(0), ShardAssignment::unbounded(1)],
        0,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_rawtcp(
        listener,
        Arc::clone(&agg),
        DEFAULT_RAWTCP_MAX_MESSAGE_SIZE,
        m3_server::tcp::ListenerLimits::default(),
        shutdown.clone(),
    ));

    let mut good = TcpStream::connect(addr).await.unwrap();
    let batch = frames(&[
        counter("requests", 3),
        counter("requests", 4),
        gauge("temperature", 21.5),
        timer("latency", vec![1.0, 2.0, 3.0]),
    ]);
    // Write in two pieces that split a frame, as TCP may.
    let (a, b) = batch.split_at(batch.len() / 2 + 1);
    good.write_all(a).await.unwrap();
    good.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    good.write_all(b).await.unwrap();
    wait_for("first batch", || {
        agg.metrics().added(MetricType::Counter) == 2
            && agg.metrics().added(MetricType::Gauge) == 1
            && agg.metrics().added(MetricType::Timer) == 3
    })
    .await;

    // A frame whose payload is not protobuf closes that connection only.
    let mut bad = TcpStream::connect(addr).await.unwrap();
    bad.write_all(&[6, 0xff, 0xff, 0xff]).await.unwrap();
    let mut sink = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), bad.read(&mut sink))
        .await
        .expect("server closes the bad connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing is ever written back");
    assert_eq!(agg.metrics().rejected(RejectReason::DecodeError), 1);

    // The good connection still works.
    good.write_all(&frames(&[counter("requests", 10)]))
        .await
        .unwrap();
    wait_for("second batch", || {
        agg.metrics().added(MetricType::Counter) == 3
    })
    .await;

    // A message of an unknown type, and one lacking the field its type names, are counted,
    // and the connection stays open.
    let unknown = metricpb::MetricWithMetadatas {
        r#type: 99,
        ..Default::default()
    };
    let empty_passthrough = metricpb::MetricWithMetadatas {
        r#type: Type::TimedMetricWithStoragePolicy as i32,
        ..Default::default()
    };
    good.write_all(&frames(&[
        unknown,
        empty_passthrough,
        counter("requests", 1),
    ]))
    .await
    .unwrap();
    wait_for("after the bad messages", || {
        agg.metrics().added(MetricType::Counter) == 4
    })
    .await;
    assert_eq!(
        agg.metrics().rejected(RejectReason::UnsupportedMessageType),
        1
    );
    assert_eq!(agg.metrics().rejected(RejectReason::MalformedMessage), 1);

    let mut out: Vec<AggregatedOutput> = Vec::new();
    agg.flush(
        unix_nanos_now() + 3600 * 1_000_000_000,
        FlushMode::Leader,
        &mut out,
    );
    let sum_of = |id: &[u8]| -> f64 { out.iter().filter(|o| o.id == id).map(|o| o.value).sum() };
    assert_eq!(sum_of(b"requests"), 18.0);
    assert_eq!(sum_of(b"temperature"), 21.5);
    assert_eq!(sum_of(b"latency.sum"), 6.0);
    assert_eq!(sum_of(b"latency.count"), 3.0);
    assert_eq!(sum_of(b"latency.upper"), 3.0);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stops on shutdown")
        .unwrap()
        .unwrap();
}
