//! The cluster cookie: a shared secret that every node proves it holds,
//! never sends, and that must be strong enough to resist offline guessing
//! (a recorded handshake lets anyone test guesses against a proof).

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::hmac;

/// Least estimated strength of an accepted cookie.
pub const MIN_BITS: f64 = 128.0;
/// Least number of distinct characters (refuses "aaaa…", "abab…").
const MIN_DISTINCT: usize = 12;

/// How to make a good one, for error messages.
pub const HOW_TO_MAKE_ONE: &str = "make one with: head -c 32 /dev/urandom | base64";

/// A checked cookie; its text is never logged or shown.
pub struct Cookie {
    key: hmac::Key,
}

impl std::fmt::Debug for Cookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cookie(..)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CookieError {
    #[error("the cluster cookie is empty; {HOW_TO_MAKE_ONE}")]
    Empty,
    #[error(
        "the cluster cookie is too weak (about {bits:.0} bits, {distinct} distinct characters; \
         at least {MIN_BITS:.0} bits and {MIN_DISTINCT} distinct characters are needed): {HOW_TO_MAKE_ONE}"
    )]
    Weak { bits: f64, distinct: usize },
}

/// A conservative estimate of a cookie's strength: the bits of the
/// character classes it uses (capped by how many distinct characters it
/// has: a long run of few symbols is not strong) for each character that
/// does not continue a run ("abcd", "4321", "aaaa" count one bit a
/// character after their first two). It cannot see dictionary words: use
/// random cookies.
pub fn estimated_bits(cookie: &str) -> (f64, usize) {
    let chars: Vec<char> = cookie.chars().collect();
    let mut pool = 0u32;
    if chars.iter().any(char::is_ascii_lowercase) {
        pool += 26;
    }
    if chars.iter().any(char::is_ascii_uppercase) {
        pool += 26;
    }
    if chars.iter().any(char::is_ascii_digit) {
        pool += 10;
    }
    if chars.iter().any(|c| !c.is_ascii_alphanumeric()) {
        pool += 33;
    }
    let distinct = chars.iter().collect::<std::collections::BTreeSet<_>>().len();
    let per_char = f64::from(pool.max(1))
        .log2()
        .min((distinct.max(1) as f64).log2().max(0.0) + 1.0);
    let in_run = chars
        .windows(3)
        .filter(|w| {
            let (a, b, c) = (w[0] as i64, w[1] as i64, w[2] as i64);
            b - a == c - b && (b - a).abs() <= 1
        })
        .count();
    let free = chars.len() - in_run;
    (free as f64 * per_char + in_run as f64, distinct)
}

impl Cookie {
    /// The cookie in `text` (surrounding whitespace ignored), if strong enough.
    pub fn new(text: &str) -> Result<Self, CookieError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(CookieError::Empty);
        }
        let (bits, distinct) = estimated_bits(text);
        if bits < MIN_BITS || distinct < MIN_DISTINCT {
            return Err(CookieError::Weak { bits, distinct });
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, text.as_bytes()),
        })
    }

    /// HMAC-SHA256 under the cookie of the length-prefixed `parts`.
    pub fn proof(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        for part in parts {
            ctx.update(&(part.len() as u32).to_be_bytes());
            ctx.update(part);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Whether `claimed` is the proof of `parts`, compared in constant time.
    pub fn verify(&self, parts: &[&[u8]], claimed: &[u8]) -> bool {
        verify_slices_are_equal(&self.proof(parts), claimed).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_cookies_are_refused_with_how_to_make_one() {
        for weak in [
            "test-cluster-cookie",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "abababababababababababababababababababababababababababab",
            "password123",
            "abcdefghijklmnopqrstuvwxyzabcdefghijkl",
            "0123456789012345678901234567890123456789",
        ] {
            let e = Cookie::new(weak).unwrap_err();
            assert!(e.to_string().contains("too weak"), "{weak}: {e}");
            assert!(e.to_string().contains("/dev/urandom"), "{e}");
        }
        assert_eq!(Cookie::new("  \n").unwrap_err(), CookieError::Empty);
    }

    #[test]
    fn random_cookies_are_accepted() {
        // 24 random bytes in base64 (the README's recipe), and 16 in hex.
        Cookie::new("k3J9vQ1xW8pL0aZt+R7mN2cY5hF6eD4s").unwrap();
        Cookie::new("9f86d081884c7d659a2feaa0c55ad015").unwrap();
    }

    #[test]
    fn proofs_are_hmac_sha256_of_the_length_prefixed_parts() {
        // RFC 4231 test case 2 ("Jefe" is too weak a cookie, so the key is
        // built directly): HMAC-SHA256 of one part with its 4-byte prefix.
        let cookie = Cookie {
            key: hmac::Key::new(hmac::HMAC_SHA256, b"Jefe"),
        };
        let mut prefixed = 28u32.to_be_bytes().to_vec();
        prefixed.extend_from_slice(b"what do ya want for nothing?");
        let direct = hmac::sign(&cookie.key, &prefixed);
        assert_eq!(
            cookie.proof(&[b"what do ya want for nothing?"]).as_slice(),
            direct.as_ref()
        );
        // And that plain HMAC is RFC 4231's value.
        let rfc = hmac::sign(&cookie.key, b"what do ya want for nothing?");
        assert_eq!(
            rfc.as_ref()[..8],
            [0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e]
        );
        // Parts are separated: ("ab","c") and ("a","bc") differ.
        assert_ne!(cookie.proof(&[b"ab", b"c"]), cookie.proof(&[b"a", b"bc"]));
        assert!(cookie.verify(&[b"x"], &cookie.proof(&[b"x"])));
        assert!(!cookie.verify(&[b"x"], &cookie.proof(&[b"y"])));
        assert!(!cookie.verify(&[b"x"], b"short"));
    }
}
