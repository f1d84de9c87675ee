//! [`Secret`]: a password, API key or token that never prints, and the base64 its
//! `Authorization` headers need. Shared by the publishers that authenticate over HTTP.

use std::fmt;

/// A password, API key or token. Its `Debug` output is `Secret("***")`; it has no `Display`,
/// so it cannot end up in logs or error messages by accident.
///
/// ```
/// # #[cfg(feature = "grafana")] {
/// use pipeline_telemetry::grafana::Secret;
///
/// let key = Secret::new("glc_eyJvIjoi");
/// assert_eq!(format!("{key:?}"), "Secret(\"***\")");
/// assert_eq!(key.expose(), "glc_eyJvIjoi");
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into().into_boxed_str())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(\"***\")")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret::new(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret::new(value)
    }
}

/// Checks a credential that goes into a header verbatim (an API key or token): it must be
/// visible ASCII only. The error is the reason, for the backend's `InvalidCredential`.
pub(crate) fn check_token(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("it is empty");
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("it contains spaces, control characters or non-ASCII characters");
    }
    Ok(())
}

/// `Basic base64(user:password)`, itself a secret.
pub(crate) fn basic_auth(user: &str, password: &Secret) -> Secret {
    Secret::new(format!(
        "Basic {}",
        base64(format!("{user}:{}", password.expose()).as_bytes())
    ))
}

/// Standard base64 with padding (RFC 4648).
pub(crate) fn base64(input: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(TABLE[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(
            basic_auth("test-org", &Secret::new("test-key")).expose(),
            "Basic dGVzdC1vcmc6dGVzdC1rZXk="
        );
    }

    #[test]
    fn tokens_must_be_visible_ascii() {
        assert_eq!(check_token("glc_abc="), Ok(()));
        assert_eq!(check_token(""), Err("it is empty"));
        for bad in ["a b", "a\n", "ключ", "tab\t"] {
            assert_eq!(
                check_token(bad),
                Err("it contains spaces, control characters or non-ASCII characters"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn secrets_never_print() {
        let key = Secret::from("hunter2");
        assert!(!format!("{key:?}").contains("hunter2"));
    }
}
