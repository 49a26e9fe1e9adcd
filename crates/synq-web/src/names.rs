//! Random session names, passwords and friendly display names.

const ADJECTIVES: &[&str] = &[
    "Amber", "Brave", "Calm", "Clever", "Cosmic", "Daring", "Eager", "Gentle", "Golden", "Happy",
    "Jolly", "Kind", "Lucky", "Mellow", "Nimble", "Quiet", "Rapid", "Sunny", "Swift", "Witty",
];
const ANIMALS: &[&str] = &[
    "Badger", "Beaver", "Crane", "Dolphin", "Falcon", "Fox", "Heron", "Koala", "Lynx", "Otter",
    "Owl", "Panda", "Puffin", "Rabbit", "Raven", "Seal", "Tiger", "Turtle", "Whale", "Wolf",
];

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The browser's crypto.getRandomValues; if it is missing, the page cannot be private.
    if getrandom::getrandom(&mut b).is_err() {
        b = [0; N];
    }
    b
}

/// 128 random bits in base-32 (Crockford alphabet, lowercase): URL-safe and easy to read.
pub fn random_token() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let bytes = random_bytes::<17>(); // 136 bits, 26 characters of 5 bits = 130 bits
    let mut bits: u128 = u128::from_le_bytes(bytes[..16].try_into().unwrap_or([0; 16]));
    let extra = bytes[16];
    let mut out = String::with_capacity(26);
    for i in 0..26 {
        let v = if i < 25 {
            let v = (bits & 31) as usize;
            bits >>= 5;
            v
        } else {
            ((bits as u8 & 7) | ((extra & 3) << 3)) as usize
        };
        out.push(ALPHABET[v] as char);
    }
    out
}

/// "Sunny Otter" and the like.
pub fn friendly_name() -> String {
    let b = random_bytes::<2>();
    format!(
        "{} {}",
        ADJECTIVES[b[0] as usize % ADJECTIVES.len()],
        ANIMALS[b[1] as usize % ANIMALS.len()]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_at_least_128_bits_and_differ() {
        let a = random_token();
        assert_eq!(a.len(), 26, "26 × 5 bits = 130 bits");
        assert_ne!(a, random_token());
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
