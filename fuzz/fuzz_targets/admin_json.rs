//! Request bodies for every admin endpoint, sent through the real router over an in-memory
//! KV: placement init, add, remove, replace, set, set-up of topics. The answer must be an HTTP
//! response (never a panic), and a 5xx only for a store failure, which the in-memory KV has
//! none of.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Method, Request};
use libfuzzer_sys::fuzz_target;
use m3_cluster::kv::memory::MemoryKv;
use m3_coordinator::admin::{AdminState, router};
use tower::ServiceExt;

const PATHS: &[(&str, &str)] = &[
    ("POST", "/api/v1/services/m3aggregator/placement/init"),
    ("POST", "/api/v1/services/m3aggregator/placement"),
    ("POST", "/api/v1/services/m3aggregator/placement/remove"),
    ("POST", "/api/v1/services/m3aggregator/placement/replace"),
    ("POST", "/api/v1/services/m3aggregator/placement/set"),
    ("POST", "/api/v1/services/m3coordinator/placement/init"),
    ("POST", "/api/v1/services/m3db/placement/init"),
    ("POST", "/api/v1/topic/init"),
    ("POST", "/api/v1/topic"),
    ("PUT", "/api/v1/topic"),
];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let (method, path) = PATHS[usize::from(selector) % PATHS.len()];
    let state = AdminState::new(Arc::new(MemoryKv::new()));
    let app = router(state);
    runtime().block_on(async move {
        let request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).expect("method"))
            .uri(path)
            .body(Body::from(body.to_vec()))
            .expect("request");
        let response = app.oneshot(request).await.expect("infallible");
        assert!(
            !response.status().is_server_error(),
            "{method} {path} answered {} for {:?}",
            response.status(),
            String::from_utf8_lossy(body)
        );
    });
});
