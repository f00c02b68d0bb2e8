//! What goes to all of a user's connections, whichever nodes they are on: the read marker in
//! force after a `read` (so the user's other devices clear their unread state) and `notify`
//! (protocol 1.1); and an admin's requests to every node (`online`, kicks and bans, a deleted
//! room). One channel, `chatd:notices`, that every node subscribes to; each node acts on its
//! own connections.

/// Why an admin closes a user's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// `chatd admin kick`.
    Kick,
    /// `chatd admin users ban`.
    Ban,
    /// `chatd admin users delete`.
    Delete,
}

/// A notice for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The user's read marker in `room` is now `read`.
    Read {
        /// The user's key.
        user_key: String,
        /// The room.
        room: String,
        /// The marker in force.
        read: u64,
    },
    /// An admin closes the user's connections on every node; each node reports into
    /// `chatd:closing:{request}` (fields `nodes`, `closed`).
    Close {
        /// The admin's request id.
        request: String,
        /// The user's key.
        user_key: String,
        /// Why.
        how: Closing,
    },
    /// An admin asks every node for its connections; each node appends a JSON array of them to
    /// the list `chatd:online:{request}`.
    Online {
        /// The admin's request id.
        request: String,
    },
    /// An admin deleted `room`: every node drops it (its members there get `left`).
    RoomDeleted {
        /// The room.
        room: String,
    },
    /// A message the user should hear of: in one of their DM rooms, or mentioning them.
    Notify {
        /// The user's key.
        user_key: String,
        /// The room.
        room: String,
        /// The message's id.
        id: u64,
        /// Its author, as displayed.
        author: String,
        /// Its time.
        ts: u64,
        /// Its text.
        text: String,
    },
}

impl Notice {
    /// The notice as published.
    pub fn payload(&self) -> String {
        match self {
            Notice::Read {
                user_key,
                room,
                read,
            } => format!("R\n{user_key}\n{room}\n{read}"),
            Notice::Notify {
                user_key,
                room,
                id,
                author,
                ts,
                text,
            } => format!("N\n{user_key}\n{room}\n{id}\n{ts}\n{author}\n{text}"),
            Notice::Close {
                request,
                user_key,
                how,
            } => {
                let how = match how {
                    Closing::Kick => "kick",
                    Closing::Ban => "ban",
                    Closing::Delete => "delete",
                };
                format!("C\n{request}\n{user_key}\n{how}")
            }
            Notice::Online { request } => format!("O\n{request}"),
            Notice::RoomDeleted { room } => format!("D\n{room}"),
        }
    }

    /// Parses a published notice; `None` for anything else.
    pub fn parse(payload: &[u8]) -> Option<Notice> {
        let payload = std::str::from_utf8(payload).ok()?;
        let (kind, rest) = payload.split_once('\n')?;
        match kind {
            "R" => {
                let mut parts = rest.splitn(3, '\n');
                Some(Notice::Read {
                    user_key: parts.next()?.to_string(),
                    room: parts.next()?.to_string(),
                    read: parts.next()?.parse().ok()?,
                })
            }
            "N" => {
                let mut parts = rest.splitn(6, '\n');
                Some(Notice::Notify {
                    user_key: parts.next()?.to_string(),
                    room: parts.next()?.to_string(),
                    id: parts.next()?.parse().ok()?,
                    ts: parts.next()?.parse().ok()?,
                    author: parts.next()?.to_string(),
                    text: parts.next()?.to_string(),
                })
            }
            "O" => Some(Notice::Online {
                request: rest.to_string(),
            }),
            "D" => Some(Notice::RoomDeleted {
                room: rest.to_string(),
            }),
            "C" => {
                let mut parts = rest.splitn(3, '\n');
                let request = parts.next()?.to_string();
                let user_key = parts.next()?.to_string();
                let how = match parts.next()? {
                    "kick" => Closing::Kick,
                    "ban" => Closing::Ban,
                    "delete" => Closing::Delete,
                    _ => return None,
                };
                Some(Notice::Close {
                    request,
                    user_key,
                    how,
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_reads_back_as_published() {
        let notices = [
            Notice::Read {
                user_key: "alice".into(),
                room: "dm:alice+bob".into(),
                read: 42,
            },
            Notice::Notify {
                user_key: "bob".into(),
                room: "general".into(),
                id: 7,
                author: "Alice".into(),
                ts: 1_764_255_000_000,
                text: "@bob look\nat this".into(),
            },
            Notice::Close {
                request: "00ff".into(),
                user_key: "carol".into(),
                how: Closing::Ban,
            },
            Notice::Online {
                request: "00fe".into(),
            },
            Notice::RoomDeleted {
                room: "dm:alice+bob".into(),
            },
        ];
        for notice in notices {
            assert_eq!(Notice::parse(notice.payload().as_bytes()), Some(notice));
        }
        assert_eq!(Notice::parse(b"R\nalice\nroom\nnot a number"), None);
    }
}
