//! `chatd admin`: argument parsing and terminal I/O. The commands themselves live in
//! `chatd::admin` and run either inside the running server (over its admin socket) or directly
//! on the database when no server runs.

use std::io::{BufRead, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use argh::FromArgs;
use chatd::admin::offline::{self, GenerateSpec, Need, Target};
use chatd::admin::progress::{Mode, Progress, Tick};
use chatd::admin::{format, AdminError, ErrorKind, Reply, Request};
use chatd::cluster::admin::ClusterAdmin;
use chatd::cluster::import::ClusterImport;
use chatd::store::maintenance::{validate_line, Imported, Line, PruneRule, Search};

/// Administer a chatd instance: query, moderate, prune, back up. Works whether or not
/// `chatd serve` is running on the data directory (through its admin socket when it is).
#[derive(FromArgs)]
#[argh(subcommand, name = "admin")]
pub struct Admin {
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Stats(Stats),
    Users(Users),
    Rooms(Rooms),
    Messages(Messages),
    Prune(Prune),
    Online(Online),
    Kick(Kick),
    Announce(Announce),
    Export(Export),
    Import(Import),
    Generate(Generate),
    Compact(Compact),
}

/// Counts, database size, oldest/newest message; uptime and connections when running.
#[derive(FromArgs)]
#[argh(subcommand, name = "stats")]
struct Stats {
    /// act on a cluster through its Redis (redis://HOST:PORT[/DB], or CHATD_CLUSTER): on every
    /// node
    #[argh(option)]
    cluster: Option<String>,
    /// data directory (default ./data, or CHATD_DATA_DIR)
    #[argh(option)]
    data_dir: Option<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

/// Manage accounts.
#[derive(FromArgs)]
#[argh(subcommand, name = "users")]
struct Users {
    #[argh(subcommand)]
    command: UsersCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum UsersCommand {
    List(UsersList),
    Show(UsersShow),
    Add(UsersAdd),
    Passwd(UsersPasswd),
    Ban(UsersBan),
    Unban(UsersUnban),
    Delete(UsersDelete),
    Reads(UsersReads),
}

/// List accounts.
#[derive(FromArgs)]
#[argh(subcommand, name = "list")]
struct UsersList {
    /// act on a cluster through its Redis (redis://HOST:PORT[/DB], or CHATD_CLUSTER): on every
    /// node
    #[argh(option)]
    cluster: Option<String>,
    /// data directory (default ./data, or CHATD_DATA_DIR)
    #[argh(option)]
    data_dir: Option<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

/// Show one account.
#[derive(FromArgs)]
#[argh(subcommand, name = "show")]
struct UsersShow {
    /// user name
    #[argh(positional)]
    name: String,
    /// act on a cluster through its Redis (redis://HOST:PORT[/DB], or CHATD_CLUSTER): on every
    /// node
    #[argh(option)]
    cluster: Option<String>,
    /// data directory (default ./data, or CHATD_DATA_DIR)
    #[argh(option)]
    data_dir: Option<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

/// Create an account; the password is prompted for (no echo) or read from stdin.
#[derive(FromArgs)]
#[argh(subcommand, name = "add")]
struct UsersAdd {
    /// user name
    #[argh(positional)]
    name: String,
    /// read the password from the first line of standard input
    #[argh(switch)]
    password_stdin: bool,
    /// act on a cluster through its Redis (redis://HOST:PORT[/DB], or CHATD_CLUSTER): on every
    /// node
    #[argh(option)]
    cluster: Option<String>,
    /// data directory (default ./data, or CHATD_DATA_DIR)
    #[argh(option)]
    data_dir: Option<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

/// Set an account's password (revokes its session tokens).
#[derive(FromArgs)]
#[argh(subcommand, name = "passwd")]
struct UsersPasswd {
    /// user name
    #[argh(positional)]
    name: String,
    /// read the password from the first line of standard input
    #[argh(switch)]
    password_stdin: bool,
    /// act on a cluster through its Redis (redis://HOST:PORT[/DB], or CHATD_CLUSTER): on every
    /// node
    #[argh(option)]
    cluster: Option<String>,
    /// data directory (default ./data, or CHATD_DATA_DIR)
    #[argh(option)]
    data_dir: Option<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

/// Ban an account: revoke its tokens, refuse logins, close its connections (1008).
#[derive(FromArgs)]
#[argh(subcommand, name = "ban")]
struct UsersBan {
    /// user name
    #[argh(positional)]
    name: String,
    /// act on a cluster through its Redis (redis://HOST:PORT[/DB], or CHATD_CLUSTER): on every
    /// node
    #[argh(option)]
    cluster: Option<String>,
    /// data directory (default ./data, or CHATD_DATA_DIR)
    #[argh(option)]
    data_dir: Option<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

/// Lift a ban.
#[derive(FromArgs)]
#[argh(subcommand, name = "unban")]
struct UsersUnban {
    /// user name
    #[argh(positional)]
    name: String,
    /// act on a cluster through its Redis (redis://HOST:PORT[/DB], or CHATD_CLUSTER): on every
    /// node
    #[argh(option)]
    cluster: Option<String>,
    /// data directory (default ./data, or CHATD_DATA_DIR)
    #[argh(option)]
    data_dir: Option<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

/// Delete an account; say what happens to its messages.
#[derive(FromArgs)]
#[argh(subcommand, name = "delete")]
struct UsersDelete {
    /// user name
    #[argh(positional)]
    name: String,
    /// keep the user's messages (they stay under the old name)
    #[argh(switch)]
    keep_messages: bool,
    /// delete every message the user wrote
    #[argh(switch)]
    delete_messages: bool,
    /// act on a cluster through its Redis (redis://HOST:PORT[/DB], or CHATD_CLUSTER): on every
    /// node
    #[argh(option)]
    cluster: Option<String>,
    /// data directory (default ./data, or CHATD_DATA_DIR)
    #[argh(option)]
    data_dir: Option<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

/// Show a user's read markers (room, marker, the room's newest id, unread, listed), or set
/// them back with `users reads reset USER`.
#[derive(FromArgs)]
#[argh(subcommand, name = "reads")]
struct UsersReads {
    /// user name
    #[argh(positional)]
    name: Option<String>,
    /// only this room
    #[argh(option)]
    room: Option<String>,
    /// act on a cluster through its Redis (redis://HOST:PORT[/DB], or CHATD_CLUSTER): on every
    /// node
    #[argh(option)]
    cluster: Option<String>,
    /// data directory (default ./data, or CHATD_DATA_DIR)
    #[argh(option)]
    data_dir: Option<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
    #[argh(subcommand)]
    command: Option<ReadsCommand>,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum ReadsCommand {
    Reset(ReadsReset),
}

/// Set a user's read markers back, in one room or all (the only way a marker moves
/// backwards); with a server running, the user's connections get the new marker at once.
#[derive(FromArgs)]
#[argh(subcommand, name = "reset")]
struct ReadsReset {
    /// user name
    #[argh(positional)]
    name: Option<String>,
    /// only this room (default: every room the user has a marker in)
    #[argh(option)]
    room: Option<String>,
    /// the marker to set (default 0: nothing read); lowered to each room's newest id
    #[argh(option, default = "0")]
    to: u64,
    /// act on a cluster through its Redis (redis://HOST:PORT[/DB], or CHATD_CLUSTER): on every
    /// node
    #[argh(option)]
    cluster: Option<String>,
    /// data directory (default ./data, or CHATD_DATA_DIR)
    #[argh(option)]
    data_dir: Option<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

/// Manage rooms.
#[derive(FromArgs)]
#[argh(subcommand, name = "rooms")]
struct Rooms {
    #[argh(subcommand)]
    command: RoomsCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum RoomsCommand {
    List(RoomsList),
    Show(RoomsShow),
    Delete(RoomsDelete),
    Prune(RoomsPrune),
}

/// Delete in one go every room without messages and with nobody in it, created before
/// --older-than (e.g. after a room-creation flood); prints how many went.
#[derive(FromArgs)]
#[argh(subcommand, name = "prune")]
struct RoomsPrune {
    /// only rooms without messages (required: the only kind this command removes)
    #[argh(switch)]
    empty: bool,
    /// only rooms created before this age (30d, 12h) or time (RFC 3339)
    #[argh(option)]
    older_than: String,
    /// only count them
    #[argh(switch)]
    dry_run: bool,
    /// only direct-message rooms (dm:USER+USER)
    #[argh(switch)]
    dm: bool,
    /// act on a cluster through its Redis (redis://HOST:PORT[/DB], or CHATD_CLUSTER): on every
    /// node
    #[argh(option)]
    cluster: Option<String>,
    /// data directory (default ./data, or CHATD_DATA_DIR)
    #[argh(option)]
    data_dir: Option<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
    /// no progress output on standard error (errors are still reported)
    #[argh(switch)]
    quiet: bool,
}

/// List rooms (direct-message rooms with their two users).
#[derive(FromArgs)]
#[argh(subcommand, name = "list")]
struct RoomsList {
    /// only direct-message rooms (dm:USER+USER)
    #[argh(switch)]
    dm: bool,
    /// act on a cluster through its Redis (redis://HOST:PORT[/DB], or CHATD_CLUSTER): on every
    /// node
    #[argh(option)]
    cluster: Option<String>,
    /// data directory (default ./data, or CHATD_DATA_DIR)
    #[argh(option)]
    data_dir: Option<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

/// Show one room.
#[derive(FromArgs)]
#[argh(subcommand, name = "show")]
struct RoomsShow {
    /// room name
    #[argh(positional)]
    name: String,
    /// act on a cluster through its Redis (redis://HOST:PORT[/DB], or CHATD_CLUSTER): on every
    /// node
    #[argh(option)]
    cluster: Option<String>,
    /// data directory (default ./data, or CHATD_DATA_DIR)
    #[argh(option)]
    data_dir: Option<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

/// Delete a room and all its messages (its ids are never reused).
#[derive(FromArgs)]
#[argh(subcommand, name = "delete")]
struct RoomsDelete {
    /// room name
    #[argh(positional)]
    name: String,
    /// act on a cluster through its Redis (redis://HOST:PORT[/DB], or CHATD_CLUSTER): on every
    /// node
    #[argh(option)]
    cluster: Option<String>,
    /// data directory (default ./data, or CHATD_DATA_DIR)
    #[argh(option)]
    data_dir: Option<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

/// Search and moderate messages.
#[derive(FromArgs)]
#[argh(subcommand, name = "messages")]
struct Messages {
    #[argh(subcommand)]
    command: MessagesCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum MessagesCommand {
    List(MessagesList),
    Show(MessagesShow),
    Delete(MessagesDelete),
}

/// Show one message: its current state and its edit and delete history.
#[derive(FromArgs)]
#[argh(subcommand, name = "show")]
struct MessagesShow {
    /// room name
    #[argh(positional)]
    room: String,
    /// message id
    #[argh(positional)]
    id: u64,
    /// act on a cluster through its Redis (redis://HOST:PORT[/DB], or CHATD_CLUSTER): on every
    /// node
    #[argh(option)]
    cluster: Option<String>,
    /// data directory (default ./data, or CHATD_DATA_DIR)
    #[argh(option)]
    data_dir: Option<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

/// List messages, newest first.
#[derive(FromArgs)]
#[argh(subcommand, name = "list")]
struct MessagesList {
    /// only this room
    #[argh(option)]
    room: Option<String>,
    /// only messages by this user
    #[argh(option)]
    user: Option<String>,
    /// only messages at or after this time: RFC 3339 (2026-11-01T12:00:00Z) or an age (2h, 7d)
    #[argh(option)]
    since: Option<String>,
    /// only messages at or before this time: RFC 3339 or an age
    #[argh(option)]
    until: Option<String>,
    /// only messages containing this text (case-insensitive)
    #[argh(option)]
    grep: Option<String>,
    /// at most this many (default 50; 0 for all)
    #[argh(option, default = "50")]
    limit: usize,
    /// oldest first
    #[argh(switch)]
    asc: bool,
    /// act on a cluster through its Redis (redis://HOST:PORT[/DB], or CHATD_CLUSTER): on every
    /// node
    #[argh(option)]
    cluster: Option<String>,
    /// data directory (default ./data, or CHATD_DATA_DIR)
    #[argh(option)]
    data_dir: Option<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

/// Delete messages by id; connected clients get a `deleted` event.
#[derive(FromArgs)]
#[argh(subcommand, name = "delete")]
struct MessagesDelete {
    /// message ids
    #[argh(positional)]
    ids: Vec<u64>,
    /// the room the messages are in (faster; otherwise every room is searched)
    #[argh(option)]
    room: Option<String>,
    /// act on a cluster through its Redis (redis://HOST:PORT[/DB], or CHATD_CLUSTER): on every
    /// node
    #[argh(option)]
    cluster: Option<String>,
    /// data directory (default ./data, or CHATD_DATA_DIR)
    #[argh(option)]
    data_dir: Option<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

/// Remove old messages: those older than --older-than and/or beyond the newest --keep-last of
/// each room (a message goes if either rule selects it).
#[derive(FromArgs)]
#[argh(subcommand, name = "prune")]
struct Prune {
    /// remove messages older than this age (30d, 12h) or this time (RFC 3339)
    #[argh(option)]
    older_than: Option<String>,
    /// keep only the newest N messages of each room
    #[argh(option)]
    keep_last: Option<u64>,
    /// only this room
    #[argh(option)]
    room: Option<String>,
    /// only show what would be removed
    #[argh(switch)]
    dry_run: bool,
    /// act on a cluster through its Redis (redis://HOST:PORT[/DB], or CHATD_CLUSTER): on every
    /// node
    #[argh(option)]
    cluster: Option<String>,
    /// data directory (default ./data, or CHATD_DATA_DIR)
    #[argh(option)]
    data_dir: Option<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
    /// no progress output on standard error (errors are still reported)
    #[argh(switch)]
    quiet: bool,
}

/// Who is connected, from where, since when (needs the running server).
#[derive(FromArgs)]
#[argh(subcommand, name = "online")]
struct Online {
    /// act on a cluster through its Redis (redis://HOST:PORT[/DB], or CHATD_CLUSTER): on every
    /// node
    #[argh(option)]
    cluster: Option<String>,
    /// data directory (default ./data, or CHATD_DATA_DIR)
    #[argh(option)]
    data_dir: Option<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

/// Close a user's connections with 1008 (needs the running server; they may reconnect).
#[derive(FromArgs)]
#[argh(subcommand, name = "kick")]
struct Kick {
    /// user name
    #[argh(positional)]
    name: String,
    /// act on a cluster through its Redis (redis://HOST:PORT[/DB], or CHATD_CLUSTER): on every
    /// node
    #[argh(option)]
    cluster: Option<String>,
    /// data directory (default ./data, or CHATD_DATA_DIR)
    #[argh(option)]
    data_dir: Option<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

/// Post a system message to one room or all (needs the running server).
#[derive(FromArgs)]
#[argh(subcommand, name = "announce")]
struct Announce {
    /// the text (several words are joined with spaces)
    #[argh(positional)]
    text: Vec<String>,
    /// only this room (default: every room)
    #[argh(option)]
    room: Option<String>,
    /// act on a cluster through its Redis (redis://HOST:PORT[/DB], or CHATD_CLUSTER): on every
    /// node
    #[argh(option)]
    cluster: Option<String>,
    /// data directory (default ./data, or CHATD_DATA_DIR)
    #[argh(option)]
    data_dir: Option<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

/// Write the database as JSON Lines (consistent even while the server runs).
#[derive(FromArgs)]
#[argh(subcommand, name = "export")]
struct Export {
    /// write to this file (mode 0600) instead of standard output
    #[argh(option)]
    out: Option<String>,
    /// include password hashes and sessions (needed for a full restore)
    #[argh(switch)]
    with_secrets: bool,
    /// export what a cluster's nodes share, from its Redis (redis://HOST:PORT[/DB], or
    /// CHATD_CLUSTER)
    #[argh(option)]
    cluster: Option<String>,
    /// data directory (default ./data, or CHATD_DATA_DIR)
    #[argh(option)]
    data_dir: Option<String>,
    /// no progress output on standard error (errors are still reported)
    #[argh(switch)]
    quiet: bool,
}

/// Restore an export into this database, idempotently (what exists is kept).
#[derive(FromArgs)]
#[argh(subcommand, name = "import")]
struct Import {
    /// the export file (- for standard input)
    #[argh(positional)]
    file: String,
    /// data directory (default ./data, or CHATD_DATA_DIR)
    #[argh(option)]
    data_dir: Option<String>,
    /// import into a cluster's Redis instead (redis://HOST:PORT[/DB], or CHATD_CLUSTER): how a
    /// single-node database moves into a cluster
    #[argh(option)]
    cluster: Option<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
    /// no progress output on standard error (errors are still reported)
    #[argh(switch)]
    quiet: bool,
}

/// Fill a database with synthetic users, rooms and messages (server stopped; for benchmarks).
#[derive(FromArgs)]
#[argh(subcommand, name = "generate")]
struct Generate {
    /// rooms room-001, room-002, …
    #[argh(option)]
    rooms: u32,
    /// messages, spread round-robin over the rooms
    #[argh(option)]
    messages: u64,
    /// authors user-0001, … with password password123 (default 100)
    #[argh(option, default = "100")]
    users: u32,
    /// timestamps spread over this span, ending now (default 30d)
    #[argh(option, default = "String::from(\"30d\")")]
    span: String,
    /// approximate text length in bytes (default 80)
    #[argh(option, default = "80")]
    text_bytes: usize,
    /// data directory (default ./data, or CHATD_DATA_DIR)
    #[argh(option)]
    data_dir: Option<String>,
    /// no progress output on standard error (errors are still reported)
    #[argh(switch)]
    quiet: bool,
}

/// Rewrite the database compactly and swap it in (server stopped): reclaims space sled keeps
/// after many deletions.
#[derive(FromArgs)]
#[argh(subcommand, name = "compact")]
struct Compact {
    /// data directory (default ./data, or CHATD_DATA_DIR)
    #[argh(option)]
    data_dir: Option<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
    /// no progress output on standard error (errors are still reported)
    #[argh(switch)]
    quiet: bool,
}

fn data_dir(flag: &Option<String>) -> PathBuf {
    flag.clone()
        .or_else(|| std::env::var("CHATD_DATA_DIR").ok())
        .map_or_else(|| PathBuf::from("data"), PathBuf::from)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A point in time: an age (`2h`, `7d`: that long ago) or an RFC 3339 time (UTC; a bare date
/// means its midnight).
fn parse_time(flag: &str, text: &str) -> Result<u64, AdminError> {
    let t = text.trim();
    if let Ok(age) = humantime::parse_duration(t) {
        return Ok(now_ms().saturating_sub(age.as_millis() as u64));
    }
    let full = if t.len() == 10 {
        format!("{t}T00:00:00Z")
    } else {
        t.to_owned()
    };
    humantime::parse_rfc3339_weak(&full)
        .map(|time| {
            time.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        })
        .map_err(|_| {
            AdminError::usage(format!(
                "{flag}: `{text}` is neither an age like 2h or 7d nor a time like 2026-11-01T12:00:00Z"
            ))
        })
}

fn read_password(from_stdin: bool, name: &str) -> Result<String, AdminError> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| AdminError::failed(format!("cannot read the password from stdin: {e}")))?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        let no_tty = |e: std::io::Error| {
            AdminError::usage(format!(
                "cannot prompt for a password ({e}); pipe it in with --password-stdin"
            ))
        };
        let first =
            rpassword::prompt_password(format!("New password for {name}: ")).map_err(no_tty)?;
        let again = rpassword::prompt_password("Repeat the password: ").map_err(no_tty)?;
        if first != again {
            return Err(AdminError::usage(
                "the passwords do not match; nothing was changed",
            ));
        }
        first
    };
    if !chatd::rules::valid_password(&password) {
        return Err(AdminError::usage(
            "passwords are 8 to 128 characters; nothing was changed",
        ));
    }
    chatd::auth::hash_password(&password).map_err(|e| AdminError::failed(e.to_string()))
}

fn ask_yes_no(question: &str) -> Option<bool> {
    if !std::io::stdin().is_terminal() {
        return None;
    }
    eprint!("{question} [y/n] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).ok()?;
    match line.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Some(true),
        "n" | "no" => Some(false),
        _ => None,
    }
}

fn print(reply: &Reply, json: bool) -> Result<(), AdminError> {
    let text = if json {
        format::json(reply)
    } else {
        format::human(reply)
    };
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth reporting.
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    Ok(())
}

/// Runs a request any instance can answer (server running or not) and prints the reply.
fn query(data_dir_flag: &Option<String>, request: Request, json: bool) -> Result<(), AdminError> {
    simple(&data_dir(data_dir_flag), Need::Any, false, request, json)
}

/// Runs one request where the instance is, and prints the reply.
/// The cluster a command acts on: `--cluster`, else `CHATD_CLUSTER`.
fn cluster_url(flag: &Option<String>) -> Option<String> {
    flag.clone().or_else(|| std::env::var("CHATD_CLUSTER").ok())
}

/// Runs a cluster-wide command against the cluster's Redis and prints its reply.
fn on_cluster(
    url: &str,
    json: bool,
    command: impl FnOnce(
        &ClusterAdmin,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Reply, AdminError>> + '_>,
    >,
) -> Result<(), AdminError> {
    let reply = smol::block_on(async {
        let admin = ClusterAdmin::connect(url).await?;
        command(&admin).await
    })?;
    print(&reply, json)
}

fn simple(
    dir: &Path,
    need: Need,
    create: bool,
    request: Request,
    json: bool,
) -> Result<(), AdminError> {
    let mut target = offline::open(dir, need, create)?;
    let reply = target.run(request, &mut |_| Ok(()))?;
    print(&reply, json)
}

impl Admin {
    /// Runs the command; the exit code is 0 on success, 1 on failure, 2 on bad arguments.
    pub fn run(self) -> ExitCode {
        match self.dispatch() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("chatd admin: {}", e.message);
                ExitCode::from(e.exit_code())
            }
        }
    }

    fn dispatch(self) -> Result<(), AdminError> {
        match self.command {
            Command::Stats(c) => match cluster_url(&c.cluster) {
                Some(url) => on_cluster(&url, c.json, |admin| Box::pin(admin.stats())),
                None => query(&c.data_dir, Request::Stats, c.json),
            },
            Command::Users(u) => match u.command {
                UsersCommand::List(c) => match cluster_url(&c.cluster) {
                    Some(url) => on_cluster(&url, c.json, |admin| Box::pin(admin.users_list())),
                    None => query(&c.data_dir, Request::UsersList, c.json),
                },
                UsersCommand::Show(c) => match cluster_url(&c.cluster) {
                    Some(url) => on_cluster(&url, c.json, |admin| {
                        Box::pin(async move { admin.users_show(&c.name).await })
                    }),
                    None => query(&c.data_dir, Request::UsersShow { name: c.name }, c.json),
                },
                UsersCommand::Add(c) => {
                    if !chatd::rules::valid_user_name(&c.name) {
                        return Err(AdminError::usage(format!(
                            "`{}` is not a user name (1 to 32 of A-Z a-z 0-9 _ . -)",
                            c.name
                        )));
                    }
                    if let Some(url) = cluster_url(&c.cluster) {
                        let password_hash = read_password(c.password_stdin, &c.name)?;
                        return on_cluster(&url, c.json, |admin| {
                            Box::pin(async move { admin.users_add(&c.name, password_hash).await })
                        });
                    }
                    let dir = data_dir(&c.data_dir);
                    // Find the instance first, so a wrong --data-dir fails before the prompt.
                    let mut target = offline::open(&dir, Need::Any, true)?;
                    let password_hash = read_password(c.password_stdin, &c.name)?;
                    let reply = target.run(
                        Request::UsersAdd {
                            name: c.name,
                            password_hash,
                        },
                        &mut |_| Ok(()),
                    )?;
                    print(&reply, c.json)
                }
                UsersCommand::Passwd(c) => {
                    if let Some(url) = cluster_url(&c.cluster) {
                        let password_hash = read_password(c.password_stdin, &c.name)?;
                        return on_cluster(&url, c.json, |admin| {
                            Box::pin(
                                async move { admin.users_passwd(&c.name, password_hash).await },
                            )
                        });
                    }
                    let dir = data_dir(&c.data_dir);
                    let mut target = offline::open(&dir, Need::Any, false)?;
                    // Check the user exists before asking for a password.
                    target.run(
                        Request::UsersShow {
                            name: c.name.clone(),
                        },
                        &mut |_| Ok(()),
                    )?;
                    let password_hash = read_password(c.password_stdin, &c.name)?;
                    let reply = target.run(
                        Request::UsersPasswd {
                            name: c.name,
                            password_hash,
                        },
                        &mut |_| Ok(()),
                    )?;
                    print(&reply, c.json)
                }
                UsersCommand::Ban(c) => match cluster_url(&c.cluster) {
                    Some(url) => on_cluster(&url, c.json, |admin| {
                        Box::pin(async move { admin.ban(&c.name).await })
                    }),
                    None => query(&c.data_dir, Request::UsersBan { name: c.name }, c.json),
                },
                UsersCommand::Unban(c) => match cluster_url(&c.cluster) {
                    Some(url) => on_cluster(&url, c.json, |admin| {
                        Box::pin(async move { admin.unban(&c.name).await })
                    }),
                    None => query(&c.data_dir, Request::UsersUnban { name: c.name }, c.json),
                },
                UsersCommand::Delete(c) => {
                    let delete_messages = match (c.keep_messages, c.delete_messages) {
                        (true, true) => {
                            return Err(AdminError::usage(
                                "choose one of --keep-messages and --delete-messages",
                            ))
                        }
                        (true, false) => false,
                        (false, true) => true,
                        (false, false) => ask_yes_no(&format!(
                            "Also delete every message {} wrote?",
                            c.name
                        ))
                        .ok_or_else(|| {
                            AdminError::usage(
                                "say what happens to the user's messages: --keep-messages or --delete-messages",
                            )
                        })?,
                    };
                    match cluster_url(&c.cluster) {
                        Some(url) => on_cluster(&url, c.json, |admin| {
                            Box::pin(
                                async move { admin.users_delete(&c.name, delete_messages).await },
                            )
                        }),
                        None => query(
                            &c.data_dir,
                            Request::UsersDelete {
                                name: c.name,
                                delete_messages,
                            },
                            c.json,
                        ),
                    }
                }
                UsersCommand::Reads(c) => reads(c),
            },
            Command::Rooms(r) => match r.command {
                RoomsCommand::List(c) => match cluster_url(&c.cluster) {
                    Some(url) => on_cluster(&url, c.json, |admin| {
                        Box::pin(async move { admin.rooms_list(c.dm).await })
                    }),
                    None => query(&c.data_dir, Request::RoomsList { dm: c.dm }, c.json),
                },
                RoomsCommand::Show(c) => match cluster_url(&c.cluster) {
                    Some(url) => on_cluster(&url, c.json, |admin| {
                        Box::pin(async move { admin.rooms_show(&c.name).await })
                    }),
                    None => query(&c.data_dir, Request::RoomsShow { name: c.name }, c.json),
                },
                RoomsCommand::Delete(c) => match cluster_url(&c.cluster) {
                    Some(url) => on_cluster(&url, c.json, |admin| {
                        Box::pin(async move { admin.rooms_delete(&c.name).await })
                    }),
                    None => query(&c.data_dir, Request::RoomsDelete { name: c.name }, c.json),
                },
                RoomsCommand::Prune(c) => {
                    if !c.empty {
                        return Err(AdminError::usage(
                            "rooms prune removes only rooms without messages: pass --empty",
                        ));
                    }
                    let created_before_ms = parse_time("--older-than", &c.older_than)?;
                    if let Some(url) = cluster_url(&c.cluster) {
                        return on_cluster(&url, c.json, |admin| {
                            Box::pin(async move {
                                admin
                                    .rooms_prune_empty(created_before_ms, c.dry_run, c.dm)
                                    .await
                            })
                        });
                    }
                    let request = Request::RoomsPruneEmpty {
                        created_before_ms,
                        dry_run: c.dry_run,
                        dm: c.dm,
                    };
                    if c.dry_run {
                        // Only a scan of the room records: quick, nothing to follow.
                        return query(&c.data_dir, request, c.json);
                    }
                    let mut target = offline::open(&data_dir(&c.data_dir), Need::Any, false)?;
                    let progress =
                        Progress::new(Mode::detect(c.quiet), "rooms prune", "rooms", None);
                    let reply = target.run_reporting(
                        request,
                        &mut |_| Ok(()),
                        Some(&|tick: &Tick| progress.apply(tick)),
                    )?;
                    if let Reply::Done(done) = &reply {
                        if let Some(n) = done.details["rooms_deleted"].as_u64() {
                            progress.set(n);
                        }
                    }
                    progress.finish();
                    print(&reply, c.json)
                }
            },
            Command::Messages(m) => match m.command {
                MessagesCommand::List(c) => {
                    let search = Search {
                        since_ms: c
                            .since
                            .as_deref()
                            .map(|t| parse_time("--since", t))
                            .transpose()?,
                        until_ms: c
                            .until
                            .as_deref()
                            .map(|t| parse_time("--until", t))
                            .transpose()?,
                        room: c.room,
                        user: c.user,
                        grep: c.grep,
                        limit: c.limit,
                        asc: c.asc,
                    };
                    match cluster_url(&c.cluster) {
                        Some(url) => on_cluster(&url, c.json, |admin| {
                            Box::pin(async move { admin.messages_list(&search).await })
                        }),
                        None => query(&c.data_dir, Request::MessagesList(search), c.json),
                    }
                }
                MessagesCommand::Show(c) => match cluster_url(&c.cluster) {
                    Some(url) => on_cluster(&url, c.json, |admin| {
                        Box::pin(async move { admin.messages_show(&c.room, c.id).await })
                    }),
                    None => query(
                        &c.data_dir,
                        Request::MessagesShow {
                            room: c.room,
                            id: c.id,
                        },
                        c.json,
                    ),
                },
                MessagesCommand::Delete(c) => match cluster_url(&c.cluster) {
                    Some(url) => on_cluster(&url, c.json, |admin| {
                        Box::pin(
                            async move { admin.messages_delete(c.room.as_deref(), &c.ids).await },
                        )
                    }),
                    None => query(
                        &c.data_dir,
                        Request::MessagesDelete {
                            ids: c.ids,
                            room: c.room,
                        },
                        c.json,
                    ),
                },
            },
            Command::Prune(c) => {
                let rule = PruneRule {
                    before_ms: c
                        .older_than
                        .as_deref()
                        .map(|t| parse_time("--older-than", t))
                        .transpose()?,
                    keep_last: c.keep_last,
                };
                if rule.before_ms.is_none() && rule.keep_last.is_none() {
                    return Err(AdminError::usage(
                        "say what to prune: --older-than 30d and/or --keep-last N",
                    ));
                }
                if let Some(url) = cluster_url(&c.cluster) {
                    return on_cluster(&url, c.json, |admin| {
                        Box::pin(
                            async move { admin.prune(rule, c.room.as_deref(), c.dry_run).await },
                        )
                    });
                }
                let mut target = offline::open(&data_dir(&c.data_dir), Need::Any, false)?;
                let what = if c.dry_run {
                    "prune (dry run)"
                } else {
                    "prune"
                };
                let progress = Progress::new(Mode::detect(c.quiet), what, "messages", None);
                let reply = target.run_reporting(
                    Request::Prune {
                        rule,
                        room: c.room,
                        dry_run: c.dry_run,
                    },
                    &mut |_| Ok(()),
                    Some(&|tick: &Tick| progress.apply(tick)),
                )?;
                if let Reply::Pruned(report) = &reply {
                    progress.set(report.removed);
                }
                progress.finish();
                print(&reply, c.json)
            }
            Command::Online(c) => match cluster_url(&c.cluster) {
                Some(url) => on_cluster(&url, c.json, |admin| Box::pin(admin.online())),
                None => simple(
                    &data_dir(&c.data_dir),
                    Need::Server("online"),
                    false,
                    Request::Online,
                    c.json,
                ),
            },
            Command::Kick(c) => match cluster_url(&c.cluster) {
                Some(url) => on_cluster(&url, c.json, |admin| {
                    Box::pin(async move { admin.kick(&c.name).await })
                }),
                None => simple(
                    &data_dir(&c.data_dir),
                    Need::Server("kick"),
                    false,
                    Request::Kick { name: c.name },
                    c.json,
                ),
            },
            Command::Announce(c) => {
                let text = c.text.join(" ");
                if text.trim().is_empty() {
                    return Err(AdminError::usage("give the announcement text"));
                }
                match cluster_url(&c.cluster) {
                    Some(url) => on_cluster(&url, c.json, |admin| {
                        Box::pin(async move { admin.announce(c.room.as_deref(), &text).await })
                    }),
                    None => simple(
                        &data_dir(&c.data_dir),
                        Need::Server("announce"),
                        false,
                        Request::Announce { room: c.room, text },
                        c.json,
                    ),
                }
            }
            Command::Export(c) => export(c),
            Command::Import(c) => import(c),
            Command::Generate(c) => generate(c),
            Command::Compact(c) => {
                let dir = data_dir(&c.data_dir);
                drop(offline::open(&dir, Need::Offline("compact"), false)?);
                let progress = Progress::new(Mode::detect(c.quiet), "compact", "entries", None);
                let done = offline::compact(&dir, &|tick: &Tick| progress.apply(tick))?;
                progress.set(done.entries);
                progress.finish();
                if c.json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&done).unwrap_or_default()
                    );
                } else {
                    println!(
                        "compacted {}: {} before, {} after ({} entries copied)",
                        dir.join("db").display(),
                        format::bytes(done.bytes_before),
                        format::bytes(done.bytes_after),
                        done.entries
                    );
                }
                Ok(())
            }
        }
    }
}

/// `users reads USER` and `users reads reset USER`.
fn reads(c: UsersReads) -> Result<(), AdminError> {
    let Some(ReadsCommand::Reset(r)) = c.command else {
        let name = c.name.ok_or_else(|| {
            AdminError::usage("name the user: `chatd admin users reads USER [--room ROOM]`")
        })?;
        if let Some(url) = cluster_url(&c.cluster) {
            return on_cluster(&url, c.json, |admin| {
                Box::pin(async move { admin.users_reads(&name, c.room.as_deref()).await })
            });
        }
        return query(
            &c.data_dir,
            Request::UsersReads { name, room: c.room },
            c.json,
        );
    };
    if c.name.is_some() || c.room.is_some() || c.data_dir.is_some() || c.json || c.cluster.is_some()
    {
        return Err(AdminError::usage(
            "put the user and the options after `reset`: `chatd admin users reads reset USER [--room ROOM] [--to ID]`",
        ));
    }
    let Some(name) = r.name else {
        // `users reads reset` alone: the markers of a user named `reset`, if there is one.
        if r.room.is_none() && r.to == 0 {
            let dir = data_dir(&r.data_dir);
            let mut target = offline::open(&dir, Need::Any, false)?;
            let shown = target.run(
                Request::UsersReads {
                    name: "reset".into(),
                    room: None,
                },
                &mut |_| Ok(()),
            );
            if let Ok(reply) = shown {
                return print(&reply, r.json);
            }
        }
        return Err(AdminError::usage(
            "name the user whose read markers to set back: `chatd admin users reads reset USER [--room ROOM] [--to ID]`",
        ));
    };
    if let Some(url) = cluster_url(&r.cluster) {
        return on_cluster(&url, r.json, |admin| {
            Box::pin(async move {
                admin
                    .users_reads_reset(&name, r.room.as_deref(), r.to)
                    .await
            })
        });
    }
    query(
        &r.data_dir,
        Request::UsersReadsReset {
            name,
            room: r.room,
            to: r.to,
        },
        r.json,
    )
}

fn io_failed(what: &str, path: &Path, e: std::io::Error) -> AdminError {
    AdminError::failed(format!("{what} {}: {e}", path.display()))
}

fn export(c: Export) -> Result<(), AdminError> {
    let dir = data_dir(&c.data_dir);
    let cluster = cluster_url(&c.cluster);
    let mut target = match &cluster {
        Some(url) => ExportSource::Cluster(Box::new(smol::block_on(ClusterAdmin::connect(url))?)),
        None => ExportSource::Store(Box::new(offline::open(&dir, Need::Any, false)?)),
    };
    // Write to a side file and rename at the end: a failed export never looks complete.
    let (mut out, paths): (Box<dyn Write>, Option<(PathBuf, PathBuf)>) = match &c.out {
        Some(file) => {
            let path = PathBuf::from(file);
            let partial = PathBuf::from(format!("{file}.partial"));
            let f = {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&partial)
                    .map_err(|e| io_failed("cannot create", &partial, e))?
            };
            (Box::new(BufWriter::new(f)), Some((partial, path)))
        }
        None => (Box::new(BufWriter::new(std::io::stdout().lock())), None),
    };
    let mode = if paths.is_some() {
        Mode::detect(c.quiet)
    } else {
        Mode::detect_streaming(c.quiet)
    };
    // Room lines come before message lines and carry each room's count: their sum is the
    // total by the time the first message arrives.
    let progress = Progress::new(mode, "export", "messages", None);
    let mut in_rooms = 0u64;
    let mut counting = true;
    let result = target.export(c.with_secrets, &mut |line: Line| {
        match &line {
            Line::Room { count, .. } => in_rooms += count,
            Line::Message { .. } => {
                if counting {
                    counting = false;
                    progress.set_total(Some(in_rooms));
                }
                progress.inc(1);
            }
            _ => {}
        }
        let mut bytes = serde_json::to_vec(&line)
            .map_err(|e| AdminError::failed(format!("cannot encode a line: {e}")))?;
        bytes.push(b'\n');
        out.write_all(&bytes)
            .map_err(|e| AdminError::failed(format!("cannot write the export: {e}")))
    });
    let flushed = out
        .flush()
        .map_err(|e| AdminError::failed(format!("cannot write the export: {e}")));
    drop(out);
    let reply = match result.and_then(|r| flushed.map(|()| r)) {
        Ok(reply) => reply,
        Err(e) => {
            if let Some((partial, _)) = &paths {
                let _ = std::fs::remove_file(partial);
            }
            return Err(e);
        }
    };
    if let Some((partial, path)) = &paths {
        std::fs::File::open(partial)
            .and_then(|f| f.sync_all())
            .and_then(|()| std::fs::rename(partial, path))
            .map_err(|e| io_failed("cannot finish", path, e))?;
    }
    progress.finish();
    let summary = format::human(&reply);
    let consistency = if target.is_live() {
        " (taken from the running server: as of the start of the export)"
    } else {
        ""
    };
    let note = format!("{}{consistency}\n", summary.trim_end());
    if paths.is_some() {
        print!("{note}");
    } else {
        eprint!("{note}");
    }
    Ok(())
}

/// Where an export comes from: the data directory (or the server running on it), or a cluster.
enum ExportSource {
    Store(Box<Target>),
    Cluster(Box<ClusterAdmin>),
}

impl ExportSource {
    fn export(
        &mut self,
        with_secrets: bool,
        sink: &mut dyn FnMut(Line) -> Result<(), AdminError>,
    ) -> Result<Reply, AdminError> {
        match self {
            ExportSource::Store(target) => target.run(Request::Export { with_secrets }, sink),
            ExportSource::Cluster(admin) => smol::block_on(admin.export(with_secrets, sink)),
        }
    }

    /// Whether what is exported changes while the export runs.
    fn is_live(&self) -> bool {
        match self {
            ExportSource::Store(target) => target.is_server(),
            ExportSource::Cluster(_) => true,
        }
    }
}

/// Where an import goes: the data directory (or the server running on it), or a cluster.
enum ImportTarget {
    Store(Box<Target>),
    Cluster(Box<ClusterImport>),
}

impl ImportTarget {
    fn import(&mut self, lines: Vec<Line>) -> Result<Reply, AdminError> {
        match self {
            ImportTarget::Store(target) => target.run(Request::Import { lines }, &mut |_| Ok(())),
            ImportTarget::Cluster(cluster) => smol::block_on(cluster.import(&lines))
                .map(Reply::Imported)
                .map_err(|e| AdminError::failed(format!("the import into Redis failed: {e}"))),
        }
    }
}

/// Lines per import request, and a byte budget per request well under the server's limit.
const IMPORT_BATCH_LINES: usize = 1000;
const IMPORT_BATCH_BYTES: usize = 8 * 1024 * 1024;

fn import(c: Import) -> Result<(), AdminError> {
    let dir = data_dir(&c.data_dir);
    // Parse and check the whole file before changing anything.
    let reader: Box<dyn BufRead> = if c.file == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let path = Path::new(&c.file);
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path).map_err(|e| io_failed("cannot open", path, e))?,
        ))
    };
    let mode = Mode::detect(c.quiet);
    let reading = Progress::new(mode, "import", "lines read", None);
    let mut lines: Vec<(Line, usize)> = Vec::new();
    for (n, text) in reader.lines().enumerate() {
        reading.inc(1);
        let text = text.map_err(|e| AdminError::failed(format!("cannot read {}: {e}", c.file)))?;
        if text.trim().is_empty() {
            continue;
        }
        let line: Line = serde_json::from_str(&text).map_err(|e| {
            AdminError::usage(format!(
                "{} line {}: not a chatd export line ({e}); nothing was imported",
                c.file,
                n + 1
            ))
        })?;
        validate_line(&line).map_err(|e| {
            AdminError::usage(format!(
                "{} line {}: {e}; nothing was imported",
                c.file,
                n + 1
            ))
        })?;
        if lines.is_empty() && !matches!(line, Line::Header { .. }) {
            return Err(AdminError::usage(format!(
                "{} does not start with a chatd-export header; is it a `chatd admin export` file?",
                c.file
            )));
        }
        lines.push((line, text.len()));
    }
    reading.finish_quietly();
    if lines.is_empty() {
        return Err(AdminError::usage(format!("{} is empty", c.file)));
    }
    let cluster = c
        .cluster
        .clone()
        .or_else(|| std::env::var("CHATD_CLUSTER").ok());
    let mut target = match &cluster {
        Some(url) => ImportTarget::Cluster(Box::new(
            smol::block_on(ClusterImport::connect(url))
                .map_err(|e| AdminError::failed(e.to_string()))?,
        )),
        None => ImportTarget::Store(Box::new(offline::open(&dir, Need::Any, true)?)),
    };
    let is_message = |line: &Line| matches!(line, Line::Message { .. });
    let messages = lines.iter().filter(|(line, _)| is_message(line)).count() as u64;
    let progress = Progress::new(mode, "import", "messages", Some(messages));
    let mut total = Imported::default();
    let mut batch = Vec::new();
    let mut bytes = 0;
    let count = lines.len();
    for (i, (line, size)) in lines.into_iter().enumerate() {
        batch.push(line);
        bytes += size;
        if batch.len() == IMPORT_BATCH_LINES || bytes >= IMPORT_BATCH_BYTES || i + 1 == count {
            let in_batch = batch.iter().filter(|line| is_message(line)).count() as u64;
            let reply = target.import(std::mem::take(&mut batch))?;
            bytes = 0;
            if let Reply::Imported(r) = reply {
                total.users += r.users;
                total
                    .users_without_password
                    .extend(r.users_without_password);
                total.users_skipped += r.users_skipped;
                total.sessions += r.sessions;
                total.rooms += r.rooms;
                total.messages += r.messages;
                total.messages_skipped += r.messages_skipped;
            }
            progress.inc(in_batch);
        }
    }
    progress.finish();
    total.touched_rooms.clear();
    let without = total.users_without_password.clone();
    print(&Reply::Imported(total), c.json)?;
    if !without.is_empty() && !c.json {
        eprintln!(
            "note: {} imported user(s) have no password (the export was made without --with-secrets) and cannot log in until you run `chatd admin users passwd NAME`: {}",
            without.len(),
            if without.len() > 10 {
                format!("{}, … ({} more)", without[..10].join(", "), without.len() - 10)
            } else {
                without.join(", ")
            }
        );
    }
    Ok(())
}

fn generate(c: Generate) -> Result<(), AdminError> {
    let dir = data_dir(&c.data_dir);
    let span = humantime::parse_duration(&c.span).map_err(|_| {
        AdminError::usage(format!("--span: `{}` is not a duration like 30d", c.span))
    })?;
    let spec = GenerateSpec {
        rooms: c.rooms,
        messages: c.messages,
        users: c.users,
        span,
        text_bytes: c.text_bytes,
    };
    if spec.rooms == 0 || spec.users == 0 {
        return Err(AdminError::usage("--rooms and --users must be at least 1"));
    }
    let Target::Local(store) = offline::open(&dir, Need::Offline("generate"), true)? else {
        return Err(AdminError::new(
            ErrorKind::NeedsOffline,
            "stop the server before `chatd admin generate`",
        ));
    };
    let started = std::time::Instant::now();
    let progress = Progress::new(
        Mode::detect(c.quiet),
        "generate",
        "messages",
        Some(spec.messages),
    );
    offline::generate(&store, &spec, &mut |n| progress.set(n))?;
    progress.finish();
    println!(
        "generated {} user(s), {} room(s), {} message(s) in {:.1} s",
        spec.users,
        spec.rooms,
        spec.messages,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
