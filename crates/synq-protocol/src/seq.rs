//! 32-bit wrapping sequence numbers.

/// True iff `b` comes after `a` in the reflector's wrapping order.
///
/// Same window as the Croquet reflector (`0 < b - a < 2^27`), so that buffer truncation on
/// snapshot agrees with it exactly.
pub fn after(a: u32, b: u32) -> bool {
    let d = b.wrapping_sub(a);
    d > 0 && d < 0x0800_0000
}

/// How many of `seqs` (in stream order) a snapshot taken at `snapshot_seq` contains: the
/// leading messages that do not come after it. A reflector drops exactly these.
pub fn covered_by_snapshot(snapshot_seq: u32, seqs: impl IntoIterator<Item = u32>) -> usize {
    seqs.into_iter()
        .take_while(|s| !after(snapshot_seq, *s))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_wraps_around_zero() {
        assert!(after(0xFFFF_FFFF, 0));
        assert!(after(0xFFFF_FFF0, 0xFFFF_FFF1));
        assert!(!after(5, 5));
        assert!(!after(6, 5));
        assert!(!after(0, 0xFFFF_FFFF));
    }

    #[test]
    fn a_snapshot_covers_messages_up_to_its_seq_across_the_wrap() {
        assert_eq!(
            covered_by_snapshot(0xFFFF_FFFF, [0xFFFF_FFFE, 0xFFFF_FFFF, 0, 1]),
            2
        );
        assert_eq!(covered_by_snapshot(5, [6, 7]), 0);
        assert_eq!(covered_by_snapshot(7, [6, 7]), 2);
    }
}
