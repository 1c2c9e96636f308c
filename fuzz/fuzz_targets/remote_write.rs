//! A remote-write body, compressed or not, through the decoder with small limits: it must
//! never panic, never allocate past its limits, and hand out only valid series as valid.
#![no_main]

use libfuzzer_sys::fuzz_target;
use m3_coordinator::remote_write::{DecodeLimits, RemoteWriteDecoder};

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits {
        max_decompressed_size: 1 << 20,
        max_samples: 1000,
        max_series: 100,
        max_labels: 1000,
        label_limit: 16,
        label_name_length_limit: 64,
        label_value_length_limit: 256,
    };
    let mut decoder = RemoteWriteDecoder::with_limits(limits);
    if let Ok(request) = decoder.decode(data) {
        walk(&request);
    }
    if let Ok(request) = decoder.decode_snappy(data) {
        walk(&request);
    }
    assert!(decoder.retained_bytes() < 64 << 20);
});

fn walk(request: &m3_coordinator::remote_write::DecodedRequest<'_>) {
    assert!(request.sample_count() <= 1000 && request.len() <= 100);
    for series in request.series() {
        let labels: Vec<_> = series.labels().collect();
        if series.invalid().is_none() {
            assert!(!labels.is_empty() && labels.len() <= 16);
            for pair in labels.windows(2) {
                assert!(
                    pair[0].0 < pair[1].0,
                    "valid series have sorted, unique names"
                );
            }
            for (name, value) in &labels {
                assert!(name.len() <= 64 && value.len() <= 256);
                assert!(std::str::from_utf8(value).is_ok());
            }
            let mut id = Vec::new();
            let _ = m3_metric::id::encode_tags(series.labels(), &mut id);
        }
        let _ = series.samples().len();
    }
}
