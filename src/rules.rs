//! The rules for names, ids and message text that every layer must agree on.
//!
//! The protocol enforces them on what clients send, the store's import enforces them on export
//! files, and the admin commands on what operators type. They live here, below all of those, so
//! the store does not depend on the wire protocol to know what a valid room name is, and so the
//! rules cannot drift apart: a name the protocol accepts is exactly a name the store accepts.
//!
//! Two rules guard against impersonation and guessing rather than malformed input: a name's
//! [`name_skeleton`] (two names with the same skeleton look alike, and only one may exist), and
//! [`password_problem`] for new passwords (never applied to logins, so old accounts keep working).

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

/// Prefix of direct-message room names. Ordinary room names cannot contain `:`, so the two
/// kinds never collide.
pub const DM_PREFIX: &str = "dm:";

/// Why a name starting with [`DM_PREFIX`] is not a valid direct-message room name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadDmName;

/// The two user keys of a direct-message room name (`dm:` + both names in lower case, sorted,
/// joined by `+`): `Ok(None)` for a name without the prefix, `Err` for a malformed one (wrong
/// order, upper case, one name, the same name twice). There is exactly one valid name per pair.
pub fn dm_participants(name: &str) -> Result<Option<(&str, &str)>, BadDmName> {
    let Some(pair) = name.strip_prefix(DM_PREFIX) else {
        return Ok(None);
    };
    let (a, b) = pair.split_once('+').ok_or(BadDmName)?;
    let lower_name = |n: &str| valid_user_name(n) && !n.bytes().any(|b| b.is_ascii_uppercase());
    if lower_name(a) && lower_name(b) && a < b {
        Ok(Some((a, b)))
    } else {
        Err(BadDmName)
    }
}

/// The direct-message room of two users (their names in any case).
pub fn dm_room_name(one: &str, other: &str) -> String {
    let (one, other) = (one.to_ascii_lowercase(), other.to_ascii_lowercase());
    let (a, b) = if one <= other {
        (one, other)
    } else {
        (other, one)
    };
    format!("{DM_PREFIX}{a}+{b}")
}

/// Whether `name` is any valid room name: an ordinary one or a direct-message one.
pub fn valid_any_room_name(name: &str) -> bool {
    valid_room_name(name) || matches!(dm_participants(name), Ok(Some(_)))
}

/// The names `text` mentions, as written (compare case-insensitively): `@` + a name, where the
/// `@` starts the text or follows a character that is not a letter, digit, `_`, `-` or `.`, and
/// the name runs over letters, digits, `_`, `-` and `.`s that a letter or digit follows (so a
/// sentence's full stop ends it). A name is only a mention if what follows it cannot continue
/// it, which the longest such run guarantees.
pub fn mentioned_names(text: &str) -> impl Iterator<Item = &str> {
    let continues_word = |c: char| c.is_alphanumeric() || c == '_' || c == '-';
    let mut previous: Option<char> = None;
    let mut chars = text.char_indices().peekable();
    std::iter::from_fn(move || {
        while let Some((at, c)) = chars.next() {
            let starts = c == '@' && !previous.is_some_and(|p| continues_word(p) || p == '.');
            previous = Some(c);
            if !starts {
                continue;
            }
            let start = at + 1;
            let mut end = start;
            while let Some(&(i, c)) = chars.peek() {
                let dot_inside = c == '.'
                    && text[i + 1..]
                        .chars()
                        .next()
                        .is_some_and(char::is_alphanumeric);
                if !(continues_word(c) || dot_inside) {
                    break;
                }
                chars.next();
                previous = Some(c);
                end = i + c.len_utf8();
            }
            if end > start {
                return Some(&text[start..end]);
            }
        }
        None
    })
}

/// Whether `text` mentions the user whose key (lower-cased name) is `user_key`.
pub fn mentions(text: &str, user_key: &str) -> bool {
    // Most texts mention nobody: one scan for `@` settles them.
    text.contains('@') && mentioned_names(text).any(|name| name.eq_ignore_ascii_case(user_key))
}

/// Whether `password` has an acceptable length (8 to 128 characters).
pub fn valid_password(password: &str) -> bool {
    (8..=128).contains(&password.chars().count())
}

/// Passwords that lists of leaked passwords show people pick most: 8,359 entries of 8 characters
/// or more, lower-cased, from Royce Williams' list of the 20,000 most common passwords as shipped
/// by Django (`django/contrib/auth/common-passwords.txt.gz`, BSD licence). Shorter ones are
/// refused by length already.
const COMMON_PASSWORDS: &str = include_str!("common-passwords.txt");

fn is_common_password(password: &str) -> bool {
    static COMMON: std::sync::OnceLock<std::collections::HashSet<&'static str>> =
        std::sync::OnceLock::new();
    COMMON
        .get_or_init(|| COMMON_PASSWORDS.lines().collect())
        .contains(password.to_lowercase().as_str())
}

/// Why a new password is refused, or `None` if it is acceptable: the length rule, then blank or
/// one repeated character, then the list of common passwords.
pub fn password_problem(password: &str) -> Option<&'static str> {
    if !valid_password(password) {
        return Some("passwords are 8 to 128 characters");
    }
    if password.chars().all(char::is_whitespace) {
        return Some("a password must not be only white space");
    }
    let mut chars = password.chars();
    let first = chars.next();
    if chars.all(|c| Some(c) == first) {
        return Some("a password must not be one character repeated");
    }
    if is_common_password(password) {
        return Some("that password is on a list of common passwords; choose another");
    }
    None
}

/// The skeleton of a user name: what it looks like, so that names that look alike get the same
/// one (Unicode TR39's idea, applied to the ASCII user names allow). `I`, `l`, `1` and `|` become
/// `l`; `O` and `0` become `o`; `rn` becomes `m` and `vv` `w`; the separators `_ . -` are dropped;
/// the rest is lower-cased. The mapping happens before lower-casing because `I` looks like `l`,
/// not like `i`.
pub fn name_skeleton(name: &str) -> String {
    let mapped: String = name
        .chars()
        .filter(|c| !matches!(c, '_' | '.' | '-'))
        .map(|c| match c {
            'I' | 'l' | '1' | '|' => 'l',
            'O' | '0' => 'o',
            other => other.to_ascii_lowercase(),
        })
        .collect();
    mapped.replace("rn", "m").replace("vv", "w")
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
    fn look_alike_names_share_a_skeleton() {
        for look_alike in ["aIice", "a1ice", "al.ice", "alice_", "a_l-i.c-e"] {
            assert_eq!(
                name_skeleton(look_alike),
                name_skeleton("alice"),
                "{look_alike}"
            );
        }
        // In capitals it is `L` that looks different: AIICE passes for ALICE, not for alice
        // (which is the same account as ALICE anyway).
        assert_eq!(name_skeleton("AIICE"), name_skeleton("ALICE"));
        assert_eq!(name_skeleton("b0b"), name_skeleton("BOB"));
        assert_eq!(name_skeleton("rnallory"), name_skeleton("mallory"));
        assert_eq!(name_skeleton("vvendy"), name_skeleton("wendy"));
        assert_eq!(name_skeleton("___"), "");
        for distinct in ["alicia", "aiice", "alice2", "bob", "malice"] {
            assert_ne!(
                name_skeleton(distinct),
                name_skeleton("alice"),
                "{distinct}"
            );
        }
    }

    #[test]
    fn weak_passwords_are_refused_with_a_reason() {
        assert!(password_problem("correct-horse-battery").is_none());
        assert!(password_problem("Tr0ub4dour&3x").is_none());
        for weak in [
            "password",
            "PASSWORD",
            "        ",
            "\t\t\t\t\t\t\t\t",
            "aaaaaaaaaa",
            "12345678",
            "iloveyou",
        ] {
            assert!(password_problem(weak).is_some(), "{weak:?} was accepted");
        }
        assert_eq!(
            password_problem("short"),
            Some("passwords are 8 to 128 characters")
        );
        assert!(password_problem(&"x".repeat(129)).is_some());
    }

    #[test]
    fn dm_names_have_one_valid_spelling_per_pair() {
        assert_eq!(dm_participants("general"), Ok(None));
        assert_eq!(dm_participants("dm:alice+bob"), Ok(Some(("alice", "bob"))));
        assert_eq!(
            dm_participants("dm:al.ice+b_o-b"),
            Ok(Some(("al.ice", "b_o-b")))
        );
        for bad in [
            "dm:",
            "dm:alice",
            "dm:bob+alice",
            "dm:Alice+bob",
            "dm:alice+alice",
            "dm:alice+",
            "dm:+bob",
            "dm:alice+bob+carol",
            "dm:al ice+bob",
            "dm:alice+bobé",
        ] {
            assert_eq!(dm_participants(bad), Err(BadDmName), "{bad}");
        }
        let long = format!("dm:{}+{}", "a".repeat(32), "b".repeat(32));
        assert!(valid_any_room_name(&long));
        assert_eq!(dm_room_name("Bob", "alice"), "dm:alice+bob");
        assert!(!valid_any_room_name("dm:bob+alice"));
        assert!(valid_any_room_name("general"));
    }

    #[test]
    fn mentions_follow_the_word_rules() {
        for yes in [
            "@alice",
            "hi @alice",
            "@ALICE!",
            "(@alice)",
            "@alice.",
            "@alice, hi",
            "x:@alice",
            "@alice...",
            "hey @Alice?",
            "@bob @alice",
            "@alice's",
        ] {
            assert!(mentions(yes, "alice"), "{yes}");
        }
        for no in [
            "alice",
            "@alicex",
            "@alice_",
            "@alice-x",
            "bob@alice",
            "a.@alice",
            "_@alice",
            "-@alice",
            "@alice.x",
            "@alice2",
            "é@alice",
            "@aliceé",
            "@ alice",
            "@al",
        ] {
            assert!(!mentions(no, "alice"), "{no}");
        }
        assert!(mentions("@al.ice hi", "al.ice"));
        assert!(!mentions("@al.ice hi", "al"));
        assert_eq!(
            mentioned_names("@a @b.c. @d-e").collect::<Vec<_>>(),
            ["a", "b.c", "d-e"]
        );
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
