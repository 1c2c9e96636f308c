//! The consumer server against hand-written frames: bad input closes only its connection.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use m3_msg::*;
use m3_proto::framing::{DEFAULT_M3MSG_MAX_MESSAGE_SIZE, next_m3msg_frame, put_m3msg_frame};
use m3_proto::msgpb;
use prometheus_client::registry::Registry;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

async fn start() -> (String, ConsumerMetrics, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    let server = ConsumerServer::new(
        ConsumerConfig {
            ack_flush_interval: Duration::from_millis(5),
            ..ConsumerConfig::default()
        },
        Arc::new(|msg: ConsumedMessage| msg.ack()),
    );
    let metrics = server.metrics().clone();
    let shutdown = CancellationToken::new();
    tokio::spawn(server.serve(listener, shutdown.clone()));
    (endpoint, metrics, shutdown)
}

fn frame(id: u64) -> BytesMut {
    let mut buf = BytesMut::new();
    let msg = msgpb::Message {
        metadata: Some(msgpb::Metadata {
            shard: 3,
            id,
            sent_at_nanos: 1,
        }),
        value: Bytes::from_static(b"v"),
    };
    put_m3msg_frame(&msg, &mut buf, DEFAULT_M3MSG_MAX_MESSAGE_SIZE).unwrap();
    buf
}

/// Reads acks until `want` ids were acked.
async fn read_acks(conn: &mut TcpStream, want: usize) -> Vec<u64> {
    let mut buf = BytesMut::new();
    let mut ids = Vec::new();
    while ids.len() < want {
        while let Some(payload) =
            next_m3msg_frame(&mut buf, DEFAULT_M3MSG_MAX_MESSAGE_SIZE).unwrap()
        {
            let ack = msgpb::Ack::decode(payload).unwrap();
            ids.extend(ack.metadata.iter().map(|m| m.id));
        }
        if ids.len() >= want {
            break;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read_buf(&mut buf))
            .await
            .expect("ack timed out")
            .unwrap();
        assert!(n > 0, "connection closed before acks arrived");
    }
    ids
}

/// Asserts the server closes `conn`.
async fn assert_closed(conn: &mut TcpStream) {
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut byte))
        .await
        .expect("server kept the bad connection open");
    assert!(matches!(n, Ok(0) | Err(_)), "unexpected data: {n:?}");
}

#[tokio::test]
async fn garbage_on_one_connection_leaves_others_working() {
    let (endpoint, metrics, shutdown) = start().await;
    let mut good = TcpStream::connect(&endpoint).await.unwrap();
    let mut oversized = TcpStream::connect(&endpoint).await.unwrap();
    let mut undecodable = TcpStream::connect(&endpoint).await.unwrap();

    good.write_all(&frame(1)).await.unwrap();
    assert_eq!(read_acks(&mut good, 1).await, vec![1]);

    oversized.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    assert_closed(&mut oversized).await;
    undecodable
        .write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    assert_closed(&mut undecodable).await;

    assert_eq!(metrics.frame_errors(FrameErrorKind::TooLarge), 1);
    assert_eq!(metrics.frame_errors(FrameErrorKind::Decode), 1);

    // The good connection still works, including a frame split across writes.
    let f = frame(2);
    good.write_all(&f[..3]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    good.write_all(&f[3..]).await.unwrap();
    good.write_all(&frame(3)).await.unwrap();
    let mut ids = read_acks(&mut good, 2).await;
    ids.sort();
    assert_eq!(ids, vec![2, 3]);
    assert_eq!(metrics.messages_received(), 3);
    assert_eq!(metrics.acks_sent(), 3);
    shutdown.cancel();
}

#[tokio::test]
async fn acks_are_batched_up_to_the_buffer_size() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    // A long interval: only a full ack buffer triggers a send.
    let config = ConsumerConfig {
        ack_flush_interval: Duration::from_secs(3600),
        ack_buffer_size: 4,
        ..ConsumerConfig::default()
    };
    let server = ConsumerServer::new(config, Arc::new(|msg: ConsumedMessage| msg.ack()));
    let metrics = server.metrics().clone();
    tokio::spawn(server.serve(listener, shutdown.clone()));
    let mut conn = TcpStream::connect(&endpoint).await.unwrap();
    for id in 0..4 {
        conn.write_all(&frame(id)).await.unwrap();
    }
    let mut ids = read_acks(&mut conn, 4).await;
    ids.sort();
    assert_eq!(ids, vec![0, 1, 2, 3]);

    // On shutdown the pending (not yet full) batch is still sent.
    conn.write_all(&frame(9)).await.unwrap();
    // Shut down once the server has the message (not after a guessed delay).
    while metrics.messages_received() < 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    assert_eq!(read_acks(&mut conn, 1).await, vec![9]);
}

#[test]
fn metrics_register_under_a_prefix() {
    let mut registry = Registry::default();
    ProducerMetrics::default().register(&mut registry, "m3msg_producer");
    let consumer = ConsumerMetrics::default();
    consumer.register(&mut registry, "m3msg_consumer");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for name in [
        "m3msg_producer_produced_total",
        "m3msg_producer_acks_received_total",
        "m3msg_producer_buffer_bytes",
        "m3msg_consumer_messages_received_total",
        "m3msg_consumer_acks_sent_total",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
}
