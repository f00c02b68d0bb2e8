//! Protocol frames (v1 and the 1.1 additions): parsing and validating what clients send,
//! encoding what the server sends.
//!
//! Parsing goes through `serde_json::Value` rather than derived structs because the protocol's
//! error rules are finer than serde's: `null` counts as absent, unknown fields are ignored, a
//! wrong type is `bad_request`, an over-long text is `too_long`, and every error carries a `ref`
//! (the frame's `cid`, else its `type`). Outgoing frames are plain `Serialize` structs; the
//! server encodes each once and shares the bytes among recipients.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::rules::{self, dm_participants, valid_room_name, TextError, MAX_ID};

/// The protocol version `welcome` announces.
pub const PROTOCOL_VERSION: &str = "1.1";

/// Close codes the server uses.
pub mod close {
    /// Server shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Binary frame received.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Invalid UTF-8 in a text frame.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Auth timeout or failure, ban, kick, abuse.
    pub const POLICY: u16 = 1008;
    /// Message larger than the configured maximum.
    pub const TOO_BIG: u16 = 1009;
    /// The account already holds its most connections: try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The server failed to complete a reply it had started.
    pub const INTERNAL: u16 = 1011;
    /// Nothing received for the idle timeout.
    pub const IDLE: u16 = 4000;
    /// The client did not read fast enough.
    pub const TOO_SLOW: u16 = 4008;
}

/// Error codes of `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Malformed frame or field.
    BadRequest,
    /// A frame other than `auth` before authenticating.
    Unauthorized,
    /// Wrong credentials or expired token.
    AuthFailed,
    /// Registration of a taken name.
    UserExists,
    /// Registration while the server does not allow it.
    RegistrationClosed,
    /// The user is banned.
    Banned,
    /// A room frame for a room the connection has not joined.
    NotJoined,
    /// Text longer than the limit.
    TooLong,
    /// Over the send rate.
    RateLimited,
    /// A server fault.
    Internal,
    /// Not allowed to act on this (a DM room of others, a message of another author).
    Forbidden,
    /// No such user, room or message.
    NotFound,
}

impl ErrorCode {
    /// Every code, for metrics.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::AuthFailed,
        ErrorCode::UserExists,
        ErrorCode::RegistrationClosed,
        ErrorCode::Banned,
        ErrorCode::NotJoined,
        ErrorCode::TooLong,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::UserExists => "user_exists",
            ErrorCode::RegistrationClosed => "registration_closed",
            ErrorCode::Banned => "banned",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::TooLong => "too_long",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
        }
    }
}

/// A refused frame: the `error` frame to send back.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// Error code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// The offending frame's `cid` or `type`.
    pub reference: Option<String>,
}

impl Rejection {
    /// A rejection with the given code and message, without a `ref`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Rejection {
        Rejection {
            code,
            message: message.into(),
            reference: None,
        }
    }

    /// Sets the `ref`.
    pub fn with_ref(mut self, reference: Option<&str>) -> Rejection {
        self.reference = reference.map(str::to_owned);
        self
    }
}

/// How an `auth` frame identifies the user.
#[derive(Debug, Clone, PartialEq)]
pub enum Auth {
    /// Name and password; `register` creates the account.
    Password {
        /// User name as typed.
        user: String,
        /// Password.
        password: String,
        /// Create the account.
        register: bool,
    },
    /// Resume with a token from an earlier `welcome`.
    Token(String),
}

/// Which page of history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryPage {
    /// The newest messages.
    Newest,
    /// Messages with smaller ids than this.
    Before(u64),
    /// Messages with larger ids than this.
    After(u64),
}

/// A valid client frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `auth`.
    Auth(Auth),
    /// `join`, optionally resuming after `since`.
    Join {
        /// Room name.
        room: String,
        /// Last id the client saw.
        since: Option<u64>,
    },
    /// `leave`.
    Leave {
        /// Room name.
        room: String,
    },
    /// `send`.
    Send {
        /// Room name.
        room: String,
        /// Message text.
        text: String,
        /// Idempotency key.
        cid: Option<String>,
    },
    /// `history`.
    History {
        /// Room name.
        room: String,
        /// Which page.
        page: HistoryPage,
        /// Page size.
        limit: usize,
    },
    /// `who`.
    Who {
        /// Room name.
        room: String,
    },
    /// Application-level `ping`.
    Ping {
        /// Echoed back.
        t: Option<Value>,
    },
    /// `read`: the user has read `room` up to `id`.
    Read {
        /// Room name.
        room: String,
        /// Newest id read.
        id: u64,
    },
    /// `rooms`: the user's conversation list.
    Rooms,
    /// `typing` in a joined room.
    Typing {
        /// Room name.
        room: String,
    },
    /// `edit` of one's own message.
    Edit {
        /// Room name.
        room: String,
        /// The message's id.
        id: u64,
        /// The new text.
        text: String,
        /// Idempotency key.
        cid: Option<String>,
    },
    /// `delete` of one's own message.
    Delete {
        /// Room name.
        room: String,
        /// The message's id.
        id: u64,
        /// Idempotency key.
        cid: Option<String>,
    },
}

impl Request {
    /// The room a frame names, if it names one.
    pub fn room(&self) -> Option<&str> {
        match self {
            Request::Join { room, .. }
            | Request::Leave { room }
            | Request::Send { room, .. }
            | Request::History { room, .. }
            | Request::Who { room }
            | Request::Read { room, .. }
            | Request::Typing { room }
            | Request::Edit { room, .. }
            | Request::Delete { room, .. } => Some(room),
            Request::Auth(_) | Request::Ping { .. } | Request::Rooms => None,
        }
    }
}

/// A parsed frame and the `ref` its errors carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// What the client asked for.
    pub request: Request,
    /// The frame's `cid`, else its `type`.
    pub reference: String,
}

/// Checks message text: `Ok` or the rejection (`bad_request` for blank, `too_long`).
pub fn check_text(text: &str) -> Result<(), (ErrorCode, &'static str)> {
    rules::check_text(text).map_err(|e| {
        let code = match e {
            TextError::Blank => ErrorCode::BadRequest,
            TextError::TooLong => ErrorCode::TooLong,
        };
        (code, e.reason())
    })
}

fn valid_cid(cid: &str) -> bool {
    (1..=64).contains(&cid.len()) && cid.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// Fields of one JSON object, with the protocol's rules for absent, `null` and wrong types.
struct Fields<'a> {
    object: &'a Map<String, Value>,
    reference: &'a str,
}

impl<'a> Fields<'a> {
    fn bad(&self, message: impl Into<String>) -> Rejection {
        Rejection::new(ErrorCode::BadRequest, message).with_ref(Some(self.reference))
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.object.get(name).filter(|v| !v.is_null())
    }

    fn opt_str(&self, name: &str) -> Result<Option<&'a str>, Rejection> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.bad(format!("`{name}` must be a string"))),
        }
    }

    fn str(&self, name: &str) -> Result<&'a str, Rejection> {
        self.opt_str(name)?
            .ok_or_else(|| self.bad(format!("`{name}` is required")))
    }

    fn opt_u64(&self, name: &str, max: u64) -> Result<Option<u64>, Rejection> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n <= max => Ok(Some(n)),
                _ => Err(self.bad(format!("`{name}` must be an integer from 0 to {max}"))),
            },
        }
    }

    fn opt_bool(&self, name: &str) -> Result<Option<bool>, Rejection> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.bad(format!("`{name}` must be true or false"))),
        }
    }

    fn room(&self) -> Result<String, Rejection> {
        let room = self.str("room")?;
        match dm_participants(room) {
            Ok(Some(_)) => {}
            Err(_) => {
                return Err(self.bad(
                    "a direct-message room is `dm:` + both user names in lower case, sorted, joined by `+`",
                ))
            }
            Ok(None) if !valid_room_name(room) => {
                return Err(self.bad("`room` must be 1 to 64 characters of a-z 0-9 _ -"))
            }
            Ok(None) => {}
        }
        Ok(room.to_owned())
    }

    fn cid(&self) -> Result<Option<String>, Rejection> {
        let cid = self.opt_str("cid")?;
        if cid.is_some_and(|c| !valid_cid(c)) {
            return Err(self.bad("`cid` must be 1 to 64 printable ASCII characters without spaces"));
        }
        Ok(cid.map(str::to_owned))
    }

    fn text(&self) -> Result<String, Rejection> {
        let text = self.str("text")?;
        if let Err((code, message)) = check_text(text) {
            return Err(Rejection::new(code, message).with_ref(Some(self.reference)));
        }
        Ok(text.to_owned())
    }

    fn id(&self, name: &str) -> Result<u64, Rejection> {
        self.opt_u64(name, MAX_ID)?
            .ok_or_else(|| self.bad(format!("`{name}` is required")))
    }
}

/// A frame that is a JSON object with a string `type`, its fields not validated yet. The
/// session looks at the type before the fields: before authentication every frame but `auth`
/// is `unauthorized`, however malformed its fields.
#[derive(Debug)]
pub struct Envelope {
    object: Map<String, Value>,
    kind: String,
    reference: String,
}

impl Envelope {
    /// The frame's `type`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The `ref` errors about this frame carry: its `cid`, else its `type`.
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// Validates the fields into a request.
    pub fn request(self) -> Result<Frame, Rejection> {
        let Envelope {
            object,
            kind,
            reference,
        } = self;
        let fields = Fields {
            object: &object,
            reference: &reference,
        };
        let request = fields.request(&kind)?;
        Ok(Frame { request, reference })
    }
}

/// Checks that a text frame is a JSON object with a string `type`.
pub fn envelope(text: &str) -> Result<Envelope, Rejection> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Rejection::new(ErrorCode::BadRequest, format!("frame is not JSON: {e}")))?;
    let Value::Object(object) = value else {
        return Err(Rejection::new(
            ErrorCode::BadRequest,
            "frame must be a JSON object",
        ));
    };
    let cid_ref = object.get("cid").and_then(Value::as_str);
    let Some(kind) = object.get("type").and_then(Value::as_str) else {
        return Err(
            Rejection::new(ErrorCode::BadRequest, "frame needs a string field `type`")
                .with_ref(cid_ref),
        );
    };
    let reference = cid_ref.unwrap_or(kind).to_owned();
    let kind = kind.to_owned();
    Ok(Envelope {
        object,
        kind,
        reference,
    })
}

impl Fields<'_> {
    /// Validates the fields of a frame of type `kind`.
    fn request(&self, kind: &str) -> Result<Request, Rejection> {
        let fields = self;
        let request = match kind {
            "auth" => Request::Auth(match fields.opt_str("token")? {
                Some(token) => Auth::Token(token.to_owned()),
                None => Auth::Password {
                    user: fields.str("user")?.to_owned(),
                    password: fields.str("password")?.to_owned(),
                    register: fields.opt_bool("register")?.unwrap_or(false),
                },
            }),
            "join" => Request::Join {
                room: fields.room()?,
                since: fields.opt_u64("since", MAX_ID)?,
            },
            "leave" => Request::Leave {
                room: fields.room()?,
            },
            "send" => {
                let room = fields.room()?;
                let cid = fields.cid()?;
                Request::Send {
                    room,
                    text: fields.text()?,
                    cid,
                }
            }
            "read" => Request::Read {
                room: fields.room()?,
                id: fields.id("id")?,
            },
            "rooms" => Request::Rooms,
            "typing" => Request::Typing {
                room: fields.room()?,
            },
            "edit" => {
                let room = fields.room()?;
                let cid = fields.cid()?;
                let id = fields.id("id")?;
                Request::Edit {
                    room,
                    id,
                    text: fields.text()?,
                    cid,
                }
            }
            "delete" => {
                let room = fields.room()?;
                let cid = fields.cid()?;
                Request::Delete {
                    room,
                    id: fields.id("id")?,
                    cid,
                }
            }
            "history" => {
                let room = fields.room()?;
                let page = match (
                    fields.opt_u64("before", MAX_ID)?,
                    fields.opt_u64("after", MAX_ID)?,
                ) {
                    (Some(_), Some(_)) => {
                        return Err(fields.bad("give at most one of `before` and `after`"))
                    }
                    (Some(b), None) => HistoryPage::Before(b),
                    (None, Some(a)) => HistoryPage::After(a),
                    (None, None) => HistoryPage::Newest,
                };
                let limit = match fields.get("limit") {
                    None => 50,
                    Some(v) => match v.as_u64() {
                        Some(n @ 1..=200) => n as usize,
                        _ => return Err(fields.bad("`limit` must be an integer from 1 to 200")),
                    },
                };
                Request::History { room, page, limit }
            }
            "who" => Request::Who {
                room: fields.room()?,
            },
            // `t` is echoed whatever it is, `null` included: the "null is absent" rule is for
            // fields the server interprets, and `t` is opaque.
            "ping" => Request::Ping {
                t: fields.object.get("t").cloned(),
            },
            other => {
                return Err(fields.bad(format!("unknown frame type `{other}`")));
            }
        };
        Ok(request)
    }
}

/// The limits announced in `welcome`.
#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    /// Longest text, in Unicode scalar values.
    pub max_text: usize,
    /// Largest frame in bytes.
    pub max_frame: usize,
    /// Send rate per second.
    pub rate_per_sec: u32,
    /// Send burst.
    pub rate_burst: u32,
}

/// A message as carried by `message` events and `history` replies.
#[derive(Debug, Clone, Serialize)]
pub struct MessageEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    /// Room name.
    pub room: &'a str,
    /// Message id.
    pub id: u64,
    /// Author.
    pub user: &'a str,
    /// Text.
    pub text: &'a str,
    /// Acceptance time.
    pub ts: u64,
    /// Sender's idempotency key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cid: Option<&'a str>,
    /// When the text was last edited, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edited_ts: Option<u64>,
}

impl<'a> MessageEvent<'a> {
    /// A `message` event. Built from plain fields so the protocol does not depend on how the
    /// store keeps messages.
    pub fn new(
        room: &'a str,
        id: u64,
        user: &'a str,
        text: &'a str,
        ts: u64,
        cid: Option<&'a str>,
    ) -> Self {
        MessageEvent {
            kind: "message",
            room,
            id,
            user,
            text,
            ts,
            cid,
            edited_ts: None,
        }
    }

    /// The same event, marked as edited at `edited_ts`.
    pub fn edited(mut self, edited_ts: Option<u64>) -> Self {
        self.edited_ts = edited_ts;
        self
    }

    /// Its length as JSON, counted without building it.
    pub fn encoded_len(&self) -> usize {
        struct Count(usize);
        impl std::io::Write for Count {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0 += bytes.len();
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut count = Count(0);
        serde_json::to_writer(&mut count, self).map_or(0, |()| count.0)
    }
}

/// Frames the server sends. Serialized with `"type"` as the tag.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame<'a> {
    /// Successful `auth`.
    Welcome {
        /// Name as registered.
        user: &'a str,
        /// Session token.
        token: &'a str,
        /// Server clock.
        server_time: u64,
        /// Limits in force.
        limits: Limits,
        /// The protocol version spoken ([`PROTOCOL_VERSION`]).
        protocol: &'static str,
    },
    /// First reply to `join`.
    Joined {
        /// Room.
        room: &'a str,
        /// Users online in the room.
        members: Vec<&'a str>,
        /// The user's read marker in the room.
        read: u64,
    },
    /// End of a join replay.
    Synced {
        /// Room.
        room: &'a str,
        /// Newest id in the room.
        last_id: u64,
        /// Replay stopped at its limit.
        more: bool,
    },
    /// Reply to `leave`.
    Left {
        /// Room.
        room: &'a str,
    },
    /// A send was stored.
    Ack {
        /// Room.
        room: &'a str,
        /// The send's cid.
        #[serde(skip_serializing_if = "Option::is_none")]
        cid: Option<&'a str>,
        /// Assigned id.
        id: u64,
        /// Acceptance time.
        ts: u64,
    },
    /// Reply to `history`.
    History {
        /// Room.
        room: &'a str,
        /// Messages ascending by id.
        messages: Vec<MessageEvent<'a>>,
        /// More exist in that direction.
        more: bool,
    },
    /// A user came online or went offline in a room.
    Presence {
        /// Room.
        room: &'a str,
        /// User.
        user: &'a str,
        /// `online` or `offline`.
        state: &'a str,
    },
    /// Reply to `who`.
    Members {
        /// Room.
        room: &'a str,
        /// Users online in the room.
        users: Vec<&'a str>,
    },
    /// Reply to `ping`.
    Pong {
        /// The ping's `t`.
        #[serde(skip_serializing_if = "Option::is_none")]
        t: Option<&'a Value>,
    },
    /// A message's text was replaced.
    Edited {
        /// Room.
        room: &'a str,
        /// The message's id.
        id: u64,
        /// The event's own id.
        seq: u64,
        /// Who edited it.
        user: &'a str,
        /// The new text.
        text: &'a str,
        /// When.
        ts: u64,
    },
    /// A message was deleted (by its author, or by an admin as `[system]`).
    Deleted {
        /// Room.
        room: &'a str,
        /// The message's id.
        id: u64,
        /// The event's own id.
        seq: u64,
        /// Who deleted it.
        user: &'a str,
        /// When.
        ts: u64,
    },
    /// The user's read marker in force in a room (reply to `read`, and to every other
    /// connection of the user).
    Read {
        /// Room.
        room: &'a str,
        /// The marker.
        id: u64,
    },
    /// Reply to `rooms`.
    Rooms {
        /// The user's conversations, newest activity first.
        rooms: Vec<RoomSummary<'a>>,
    },
    /// A DM or a mention in a room this connection has not joined.
    Notify {
        /// Room.
        room: &'a str,
        /// The message's id.
        id: u64,
        /// Its author.
        user: &'a str,
        /// Its text.
        text: &'a str,
        /// Its acceptance time.
        ts: u64,
    },
    /// Someone is typing in a joined room.
    Typing {
        /// Room.
        room: &'a str,
        /// Who.
        user: &'a str,
    },
    /// A refused frame.
    Error {
        /// Error code.
        code: &'a str,
        /// Explanation.
        message: &'a str,
        /// The offending frame's cid or type.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
}

/// One conversation of a `rooms` reply.
#[derive(Debug, Serialize)]
pub struct RoomSummary<'a> {
    /// Room name.
    pub room: &'a str,
    /// Newest id or seq in the room.
    pub last_id: u64,
    /// The user's read marker.
    pub read: u64,
    /// Other users' messages above the marker (capped).
    pub unread: u64,
    /// Those of them that mention the user.
    pub mentions: u64,
    /// The newest message, or `null`.
    pub last: Option<MessageEvent<'a>>,
}

/// An encoded frame: complete WebSocket bytes, cheap to clone and share among connections.
pub use crate::wire::Encoded;

/// Encodes a server frame once, as a complete WebSocket text frame.
pub fn encode<T: Serialize + ?Sized>(frame: &T) -> Encoded {
    Encoded::json(frame)
}

impl Rejection {
    /// The `error` frame for this rejection.
    pub fn encode(&self) -> Encoded {
        encode(&ServerFrame::Error {
            code: self.code.as_str(),
            message: &self.message,
            reference: self.reference.as_deref(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the session does with a text frame: the envelope, then its fields.
    fn parse(text: &str) -> Result<Frame, Rejection> {
        envelope(text)?.request()
    }

    fn code(text: &str) -> (ErrorCode, Option<String>) {
        let r = parse(text).unwrap_err();
        (r.code, r.reference)
    }

    #[test]
    fn text_rules() {
        assert!(check_text("hi\nthere").is_ok());
        assert_eq!(
            check_text(" \n\t\u{3000}").unwrap_err().0,
            ErrorCode::BadRequest
        );
        assert_eq!(check_text("").unwrap_err().0, ErrorCode::BadRequest);
        assert!(check_text(&"é".repeat(4000)).is_ok());
        assert_eq!(
            check_text(&"é".repeat(4001)).unwrap_err().0,
            ErrorCode::TooLong
        );
    }

    #[test]
    fn refs_prefer_cid_then_type() {
        assert_eq!(
            code(r#"{"type":"send","room":"Bad","text":"x","cid":"c1"}"#),
            (ErrorCode::BadRequest, Some("c1".into()))
        );
        assert_eq!(
            code(r#"{"type":"nope"}"#),
            (ErrorCode::BadRequest, Some("nope".into()))
        );
        assert_eq!(code("[1]"), (ErrorCode::BadRequest, None));
        assert_eq!(code("not json"), (ErrorCode::BadRequest, None));
        assert_eq!(code(r#"{"type":5}"#).0, ErrorCode::BadRequest);
    }

    #[test]
    fn null_is_absent_and_unknown_fields_are_ignored() {
        let f = parse(r#"{"type":"join","room":"a","since":null,"x":[1]}"#).unwrap();
        assert_eq!(
            f.request,
            Request::Join {
                room: "a".into(),
                since: None
            }
        );
        let f = parse(r#"{"type":"send","room":"a","text":"t","cid":null}"#).unwrap();
        assert_eq!(f.reference, "send");
    }

    #[test]
    fn field_validation() {
        assert_eq!(
            code(r#"{"type":"join","room":"a","since":-1}"#).0,
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"type":"join","room":"a","since":1.5}"#).0,
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"type":"send","room":"a","text":"t","cid":"a b"}"#).0,
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"type":"send","room":"a","text":5}"#).0,
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"type":"history","room":"a","before":1,"after":2}"#).0,
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"type":"history","room":"a","limit":0}"#).0,
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"type":"history","room":"a","limit":201}"#).0,
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"type":"auth","user":"a","password":1}"#).0,
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"type":"auth","user":"a","password":"p","register":"yes"}"#).0,
            ErrorCode::BadRequest
        );
        let long = format!(
            r#"{{"type":"send","room":"a","text":"{}"}}"#,
            "x".repeat(4001)
        );
        assert_eq!(code(&long).0, ErrorCode::TooLong);
    }

    #[test]
    fn encodes_frames_with_optional_fields_absent() {
        let ack = encode(&ServerFrame::Ack {
            room: "a",
            cid: None,
            id: 3,
            ts: 9,
        });
        assert_eq!(
            std::str::from_utf8(ack.payload()).unwrap(),
            r#"{"type":"ack","room":"a","id":3,"ts":9}"#
        );
        let err = Rejection::new(ErrorCode::NotJoined, "m")
            .with_ref(Some("c"))
            .encode();
        assert_eq!(
            std::str::from_utf8(err.payload()).unwrap(),
            r#"{"type":"error","code":"not_joined","message":"m","ref":"c"}"#
        );
    }
}
