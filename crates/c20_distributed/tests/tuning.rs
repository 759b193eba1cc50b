//! Process tuning helpers (own test binary: the setting is process-wide).

#[test]
fn disabling_transparent_huge_pages_sticks_for_the_process() {
    c20_distributed::disable_transparent_huge_pages().expect("prctl accepted");
    assert!(c20_distributed::transparent_huge_pages_disabled().expect("prctl answered"));
    // A thread started later sees the same process-wide setting.
    let seen = std::thread::spawn(c20_distributed::transparent_huge_pages_disabled)
        .join()
        .expect("thread ran");
    assert!(seen.expect("prctl answered"));
}
