//! Path resolution while other threads rename and mount: openat2(2) with
//! RESOLVE_IN_ROOT returns EAGAIN when a rename anywhere in the system may
//! have raced with a `..` step, and a resolution must retry rather than
//! fail the request.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::path::{resolve_in_root, NodeKind};

#[test]
fn resolve_in_root_retries_rename_races() {
    let directory = tempfile::tempdir().unwrap();
    let rootfs = directory.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    // A `..` step, which the kernel checks against concurrent renames.
    std::os::unix::fs::symlink("../..", rootfs.join("etc/up")).unwrap();
    let first = directory.path().join("first");
    let second = directory.path().join("second");
    std::fs::create_dir(&first).unwrap();
    std::fs::create_dir(&second).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let renamer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &first,
                    rustix::fs::CWD,
                    &second,
                    rustix::fs::RenameFlags::EXCHANGE,
                )
                .unwrap();
            }
        })
    };
    let started = Instant::now();
    let mut failure = None;
    let mut resolutions = 0;
    while started.elapsed() < Duration::from_secs(2) && failure.is_none() {
        let result = resolve_in_root(
            "destination",
            &rootfs,
            Path::new("etc/up/etc"),
            Some(NodeKind::Directory),
        );
        resolutions += 1;
        failure = result.err();
    }
    stop.store(true, Ordering::Relaxed);
    renamer.join().unwrap();
    assert!(
        failure.is_none(),
        "resolution {resolutions} failed: {failure:?}"
    );
}
