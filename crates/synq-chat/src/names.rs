//! Random room names, passwords and friendly display names, as the browser page and
//! `synq chat` make them up.

// Not model code: OS randomness for a view's own choices (a room nobody can guess, a
// display name), never for the replicated state.
#![allow(clippy::disallowed_methods)]

const ADJECTIVES: &[&str] = &[
    "Amber", "Brave", "Calm", "Clever", "Cosmic", "Daring", "Eager", "Gentle", "Golden", "Happy",
    "Jolly", "Kind", "Lucky", "Mellow", "Nimble", "Quiet", "Rapid", "Sunny", "Swift", "Witty",
];
const ANIMALS: &[&str] = &[
    "Badger", "Beaver", "Crane", "Dolphin", "Falcon", "Fox", "Heron", "Koala", "Lynx", "Otter",
    "Owl", "Panda", "Puffin", "Rabbit", "Raven", "Seal", "Tiger", "Turtle", "Whale", "Wolf",
];

/// The browser's `crypto.getRandomValues` (the OS's random source natively).
fn random_bytes<const N: usize>() -> Result<[u8; N], getrandom::Error> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b)?;
    Ok(b)
}

/// 128 random bits in base-32 (Crockford alphabet, lowercase): URL-safe and easy to read.
/// Fails if the random source does: a room made up without it would be guessable.
pub fn random_token() -> Result<String, String> {
    const ALPHABET: &[u8] = b"0123456789abcdefghjkmnpqrstvwxyz";
    // 136 bits, 26 characters of 5 bits = 130 bits
    let bytes = random_bytes::<17>().map_err(|e| {
        format!("This browser gave no secure random numbers ({e}), so no private room can be made up. Open a link someone shared, or use another browser.")
    })?;
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
    Ok(out)
}

/// "Sunny Otter" and the like.
pub fn friendly_name() -> String {
    // Not a secret: without a random source everybody is an Amber Badger.
    let b = random_bytes::<2>().unwrap_or_default();
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
        let a = random_token().unwrap();
        assert_eq!(a.len(), 26, "26 × 5 bits = 130 bits");
        assert_ne!(a, random_token().unwrap());
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn friendly_names_are_an_adjective_and_an_animal() {
        for _ in 0..20 {
            let name = friendly_name();
            let (adjective, animal) = name.split_once(' ').expect("two words");
            assert!(ADJECTIVES.contains(&adjective), "{name}");
            assert!(ANIMALS.contains(&animal), "{name}");
        }
    }
}
