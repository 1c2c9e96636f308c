//! Data directories of other layouts are refused with what to do, never read as empty.

use std::path::Path;

use m3_storage::{Error, Store};

use crate::{namespaces, open, tmp};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// `tests/fixtures/fjall-format-1` was written by the store of one key per sample (fjall),
/// with two namespaces and three samples.
#[test]
fn a_store_of_the_earlier_format_is_refused_naming_the_directory_and_the_way_out() {
    let dir = tmp();
    let data = dir.path().join("data");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fjall-format-1"),
        &data,
    );
    let before: Vec<_> = walk(&data);
    let error = Store::open(&data, namespaces()).unwrap_err();
    assert!(matches!(error, Error::OldFormat { .. }), "{error:?}");
    let text = error.to_string();
    let shown = data.display().to_string();
    assert!(
        text.starts_with(&format!("{shown} holds a store in an earlier format")),
        "{text}"
    );
    assert!(text.contains("fjall"), "{text}");
    assert!(text.contains(&format!("mv {shown} {shown}.old")), "{text}");
    assert_eq!(
        walk(&data),
        before,
        "nothing in the old directory was touched"
    );
}

#[test]
fn a_directory_of_an_unknown_layout_version_is_refused() {
    let dir = tmp();
    drop(open(dir.path()));
    std::fs::write(dir.path().join("FORMAT"), "m3-rs tsdb 9\n").unwrap();
    let error = Store::open(dir.path(), namespaces()).unwrap_err();
    assert!(
        error.to_string().contains("FORMAT says \"m3-rs tsdb 9\""),
        "{error}"
    );
}

#[test]
fn a_new_directory_is_marked_and_opens_again() {
    let dir = tmp();
    drop(open(dir.path()));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("FORMAT")).unwrap(),
        "m3-rs tsdb 1\n"
    );
    drop(open(dir.path()));
}

/// Every file under `dir` with its size.
fn walk(dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            out.extend(walk(&entry.path()));
        } else {
            out.push((entry.path(), entry.metadata().unwrap().len()));
        }
    }
    out.sort();
    out
}
