//! The `Origin` check on WebSocket upgrades.
//!
//! Browsers let any page open a WebSocket to any host, and say which page did in `Origin`.
//! Without a check, any web site could use its visitors' browsers to flood logins and
//! registrations here. Clients that are not browsers usually send no `Origin`; they are never
//! refused for that (they could send any `Origin` they like anyway).
//!
//! Invariants: origins are compared normalised (scheme and host lower-cased, the scheme's default
//! port left out), so `https://Chat.Example.com:443` and `https://chat.example.com` are one
//! origin; an `Origin` that is not `http(s)://host[:port]` (for example `null`, sent by sandboxed
//! pages) matches nothing but `*`.

use crate::config::AllowedOrigins;

/// `origin` as `scheme://host[:port]`, lower-cased and without its scheme's default port, or
/// `None` if it is not an http(s) origin.
pub(crate) fn normalize(origin: &str) -> Option<String> {
    let (scheme, authority) = origin.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = authority.to_ascii_lowercase();
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (address, rest) = bracketed.split_once(']')?;
            (
                format!("[{address}]"),
                rest.strip_prefix(':').or(rest.is_empty().then_some("")),
            )
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (authority.clone(), Some("")),
        },
    };
    let port = port?;
    let valid_host = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b));
    if !valid_host {
        return None;
    }
    let port: u16 = if port.is_empty() {
        default_port
    } else {
        port.parse().ok()?
    };
    Some(if port == default_port {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}:{port}")
    })
}

/// Whether a WebSocket upgrade with this `Origin` (if any) and `Host` (if any) may proceed.
pub(crate) fn allowed(allowed: &AllowedOrigins, origin: Option<&str>, host: Option<&str>) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    match allowed {
        AllowedOrigins::Any => true,
        AllowedOrigins::List(list) => normalize(origin).is_some_and(|o| list.contains(&o)),
        AllowedOrigins::SameOrigin => {
            let (Some(origin), Some(host)) = (normalize(origin), host) else {
                return false;
            };
            // `Host` carries no scheme: read it with the page's, so that a default port left out
            // of one and not the other still matches.
            let scheme = origin.split("://").next().unwrap_or_default();
            normalize(&format!("{scheme}://{host}")) == Some(origin)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalised() {
        assert_eq!(
            normalize("HTTPS://Chat.Example.com:443").as_deref(),
            Some("https://chat.example.com")
        );
        assert_eq!(
            normalize("http://localhost:8000").as_deref(),
            Some("http://localhost:8000")
        );
        assert_eq!(
            normalize("http://[::1]:8000").as_deref(),
            Some("http://[::1]:8000")
        );
        assert_eq!(normalize("http://[::1]").as_deref(), Some("http://[::1]"));
        for bad in [
            "null",
            "file://x",
            "http://",
            "http://a:b",
            "http://a/path",
            "http://u@a",
            "http://a:70000",
        ] {
            assert_eq!(normalize(bad), None, "{bad}");
        }
    }

    #[test]
    fn same_origin_compares_host_and_port() {
        let same = AllowedOrigins::SameOrigin;
        assert!(allowed(&same, None, Some("x:1")));
        assert!(allowed(
            &same,
            Some("http://127.0.0.1:8000"),
            Some("127.0.0.1:8000")
        ));
        assert!(allowed(
            &same,
            Some("https://chat.example.com"),
            Some("Chat.Example.com")
        ));
        assert!(allowed(
            &same,
            Some("https://chat.example.com"),
            Some("chat.example.com:443")
        ));
        assert!(!allowed(
            &same,
            Some("https://evil.example"),
            Some("chat.example.com")
        ));
        assert!(!allowed(
            &same,
            Some("http://127.0.0.1:9000"),
            Some("127.0.0.1:8000")
        ));
        assert!(!allowed(&same, Some("null"), Some("127.0.0.1:8000")));
        assert!(!allowed(&same, Some("http://127.0.0.1:8000"), None));
    }

    #[test]
    fn a_list_replaces_the_default() {
        let list: AllowedOrigins = "https://chat.example.com, http://localhost:3000"
            .parse()
            .unwrap();
        assert!(allowed(
            &list,
            Some("https://chat.example.com:443"),
            Some("other")
        ));
        assert!(allowed(&list, Some("http://localhost:3000"), Some("other")));
        assert!(!allowed(
            &list,
            Some("http://127.0.0.1:8000"),
            Some("127.0.0.1:8000")
        ));
        assert!(allowed(&AllowedOrigins::Any, Some("null"), None));
        assert!("https://x/path".parse::<AllowedOrigins>().is_err());
    }
}
