//! The allocator gives freed memory back to the system at once.

#[global_allocator]
static ALLOCATOR: sekisho_alloc::Allocator = sekisho_alloc::Allocator;

/// This process's resident memory, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

#[test]
fn memory_freed_after_a_burst_leaves_the_process_without_waiting_for_more_allocations() {
    sekisho_alloc::return_empty_pages_at_once();
    // 8,192 buffers of 8 KiB, the size of hyper's HTTP/1 read buffer: 64 MiB, every page
    // touched so that it is resident.
    const BUFFERS: usize = 8192;
    const SIZE: usize = 8192;
    let before = rss_kib();
    let buffers: Vec<Vec<u8>> = (0..BUFFERS).map(|i| vec![i as u8 | 1; SIZE]).collect();
    let held = rss_kib();
    let burst_kib = (BUFFERS * SIZE / 1024) as u64;
    assert!(
        held >= before + burst_kib * 9 / 10,
        "the burst was not resident: {before} KiB before, {held} KiB while held"
    );
    drop(buffers);
    // No further allocation: an idle daemon makes none.
    let after = rss_kib();
    assert!(
        after <= before + burst_kib / 10,
        "{} of {burst_kib} KiB freed stayed resident ({before} KiB before, {held} KiB held, \
         {after} KiB after)",
        after.saturating_sub(before),
    );
}
