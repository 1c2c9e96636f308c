//! Packed label sets in a process of their own, so that the process's symbol table holds only
//! what these tests number (the library's unit tests fill it with random names).

use m3_storage::Labels;
use m3_storage::tsdb::packed_labels::PackedLabels;
use m3_storage::tsdb::symbols::{MAX_SYMBOL_BYTES, MAX_VALUES_PER_NAME, Symbols};

const POINTER_AND_COUNTS: usize = 2 * std::mem::size_of::<usize>();

#[test]
fn shared_names_and_values_pack_as_numbers_and_long_values_as_text() {
    let pairs = [
        ("__name__", "http_requests_total"),
        ("instance", "10.0.3.17:9100"),
        ("job", "checkout"),
        ("namespace", "payments"),
        ("region", "eu-west-1"),
        ("env", "production"),
    ];
    let labels = Labels::new(pairs).unwrap();
    let packed = PackedLabels::new(labels.view());
    let text: usize = pairs.iter().map(|(n, v)| n.len() + v.len()).sum();
    let bytes = packed.heap_bytes() - POINTER_AND_COUNTS;
    assert!(
        bytes <= 1 + 4 * pairs.len(),
        "{bytes} bytes for {text} bytes of text"
    );
    assert!(packed.matches(labels.view()));
    assert_eq!(packed.unpack(), labels);
    assert!(Symbols::process().heap_bytes() >= text);

    let long = "v".repeat(MAX_SYMBOL_BYTES + 1);
    let with_long = Labels::new([("job", "checkout"), ("trace", long.as_str())]).unwrap();
    let packed = PackedLabels::new(with_long.view());
    assert!(
        packed.heap_bytes() > long.len(),
        "a long value is kept inline"
    );
    assert!(packed.matches(with_long.view()));
    assert_eq!(packed.get("trace"), Some(long.as_str()));
    assert!(!packed.matches(labels.view()));
}

#[test]
fn a_label_with_more_values_than_are_numbered_packs_the_rest_inline() {
    let sets: Vec<Labels> = (0..MAX_VALUES_PER_NAME + 100)
        .map(|i| {
            Labels::new([
                ("job", "api".to_string()),
                ("request_id", format!("request-{i:08}")),
            ])
            .unwrap()
        })
        .collect();
    let packed: Vec<PackedLabels> = sets.iter().map(|l| PackedLabels::new(l.view())).collect();
    let first = packed[0].heap_bytes() - POINTER_AND_COUNTS;
    let last = packed[packed.len() - 1].heap_bytes() - POINTER_AND_COUNTS;
    assert!(first < 10, "numbered: {first} bytes");
    assert!(last > "request-00000000".len(), "inline: {last} bytes");
    for (labels, packed) in sets.iter().zip(&packed) {
        assert!(packed.matches(labels.view()));
        assert_eq!(&packed.unpack(), labels);
    }
    assert!(!packed[0].matches(sets[1].view()));
    assert!(!packed[packed.len() - 1].matches(sets[0].view()));
}
