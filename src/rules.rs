//! The rules for names, ids and message text that every layer must agree on.
//!
//! The protocol enforces them on what clients send, the store's import enforces them on export
//! files, and the admin commands on what operators type. They live here, below all of those, so
//! the store does not depend on the wire protocol to know what a valid room name is, and so the
//! rules cannot drift apart: a name the protocol accepts is exactly a name the store accepts.

use crate::config::MAX_TEXT;

/// Largest id a client may name (ids are JSON numbers and stay exact in doubles).
pub const MAX_ID: u64 = (1 << 53) - 1;

/// Whether `name` is a valid user name: 1 to 32 of `A-Z a-z 0-9 _ . -`.
pub fn valid_user_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Whether `name` is a valid room name: 1 to 64 of `a-z 0-9 _ -`.
pub fn valid_room_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

/// Whether `password` has an acceptable length (8 to 128 characters).
pub fn valid_password(password: &str) -> bool {
    (8..=128).contains(&password.chars().count())
}

/// Why a message text is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextError {
    /// Empty, or only white space.
    Blank,
    /// More than [`MAX_TEXT`] Unicode scalar values.
    TooLong,
}

impl TextError {
    /// The explanation shown to whoever sent the text.
    pub fn reason(self) -> &'static str {
        match self {
            TextError::Blank => "text must contain a non-white-space character",
            TextError::TooLong => "text is longer than 4000 characters",
        }
    }
}

/// Checks message text: `Ok`, or why it is refused.
pub fn check_text(text: &str) -> Result<(), TextError> {
    if text.chars().all(char::is_whitespace) {
        return Err(TextError::Blank);
    }
    // Cheap upper bound first: a text of at most MAX_TEXT bytes has at most MAX_TEXT chars.
    if text.len() > MAX_TEXT && text.chars().count() > MAX_TEXT {
        return Err(TextError::TooLong);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_user_name("Al.ice_-9"));
        assert!(!valid_user_name(""));
        assert!(!valid_user_name(&"a".repeat(33)));
        assert!(!valid_user_name("al ice"));
        assert!(!valid_user_name("alicé"));
        assert!(valid_room_name("general-2_x"));
        assert!(!valid_room_name("General"));
        assert!(!valid_room_name(&"a".repeat(65)));
    }

    #[test]
    fn text() {
        assert!(check_text("hi\nthere").is_ok());
        assert_eq!(check_text(" \n\t\u{3000}"), Err(TextError::Blank));
        assert_eq!(check_text(""), Err(TextError::Blank));
        assert!(check_text(&"é".repeat(4000)).is_ok());
        assert_eq!(check_text(&"é".repeat(4001)), Err(TextError::TooLong));
    }
}
