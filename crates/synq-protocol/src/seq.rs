//! 32-bit wrapping sequence numbers.

/// True iff `b` comes after `a` in the reflector's wrapping order.
///
/// Same window as the Croquet reflector (`0 < b - a < 2^27`), so that buffer truncation on
/// snapshot agrees with it exactly.
pub fn after(a: u32, b: u32) -> bool {
    let d = b.wrapping_sub(a);
    d > 0 && d < 0x0800_0000
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
}
