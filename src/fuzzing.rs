//! Entry points for the fuzz targets in `fuzz/`, compiled only with the `fuzzing` feature.
//!
//! Each takes raw bytes as an attacker or a damaged disk would hand them over and runs the same
//! code the server runs on them: the HTTP head parser, the client frame decoder and validator,
//! the stored-value decoders, the admin socket's request parser and the import line validator.
//! The invariant a fuzzer checks is the one the server relies on: any input gives a value or a
//! typed error, never a panic, a hang or an allocation sized by the input's claims.

/// An HTTP request head as read from a new connection.
pub fn http_head(bytes: &[u8]) {
    let _ = crate::http::parse_head(bytes);
}

/// A WebSocket text frame from a client: the envelope, then the typed request.
pub fn client_frame(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Ok(envelope) = crate::protocol::envelope(text) {
        let _ = envelope.request();
    }
    // The 1.1 text rules run on what clients send: mentions on every stored text, DM names on
    // every room name.
    let _ = crate::rules::mentioned_names(text).count();
    let _ = crate::rules::dm_participants(text);
}

/// A value read back from the database under some key: every record kind, and a message with
/// its key (the first 16 bytes of the input, when there are that many).
pub fn stored_value(bytes: &[u8]) {
    crate::store::decode_any(bytes);
}

/// One line on the admin socket.
pub fn admin_request(bytes: &[u8]) {
    let _ = serde_json::from_slice::<crate::admin::Request>(bytes);
}

/// One line of an import file: parsed, then checked as `chatd admin import` checks it.
pub fn import_line(bytes: &[u8]) {
    if let Ok(line) = serde_json::from_slice::<crate::store::maintenance::Line>(bytes) {
        let _ = crate::store::maintenance::validate_line(&line);
    }
}
