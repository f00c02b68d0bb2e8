//! The `chatd` binary: parses arguments and dispatches. The work lives in the library.

mod admin;
mod serve;

use std::process::ExitCode;

use argh::FromArgs;

/// chatd: a real-time chat server in one binary.
#[derive(FromArgs)]
struct Chatd {
    /// print the version and exit
    #[argh(switch)]
    version: bool,
    #[argh(subcommand)]
    command: Option<Command>,
}

#[derive(FromArgs)]
#[argh(subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start
enum Command {
    Serve(serve::Serve),
    Admin(admin::Admin),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let name = args
        .first()
        .map_or("chatd", |a| a.rsplit('/').next().unwrap_or(a));
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let chatd = match Chatd::from_args(&[name], &rest) {
        Ok(chatd) => chatd,
        Err(early) => {
            return if early.status.is_ok() {
                println!("{}", early.output);
                ExitCode::SUCCESS
            } else {
                eprintln!("{}", early.output);
                ExitCode::from(2)
            };
        }
    };
    // Files chatd creates (the database, the admin socket, exports with secrets) are for this
    // account only, whatever umask the shell or the service manager set.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let result = match chatd.command {
        _ if chatd.version => {
            println!("chatd {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some(Command::Serve(serve)) => serve.run(),
        Some(Command::Admin(admin)) => return admin.run(),
        None => {
            eprintln!("chatd: say what to do: `chatd serve` runs the server, `chatd admin` administers it (see `chatd --help`)");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
