//! `tandem token create|list|revoke`: the API's bearer tokens of this node.

use std::path::Path;
use std::process::ExitCode;

use super::{EXIT_FAILURE, EXIT_USAGE, TokenAction};
use crate::api::tokens::{Role, TokenError, Tokens, path};
use crate::config::DirChecks;

pub(super) fn run(config: &Path, action: TokenAction) -> ExitCode {
    let settings = match crate::config::load(config, DirChecks::Off) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let tokens = Tokens::new(path(&settings.daemon.state_dir));
    match action {
        TokenAction::Create { name, role } => {
            let role: Role = role.parse().expect("clap checked the role");
            match tokens.create(&name, role) {
                Ok(t) => {
                    println!("{t}");
                    eprintln!(
                        "token {name:?} ({role}) created; it is shown once: keep it now \
                         (send it as Authorization: Bearer TOKEN)"
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        TokenAction::List { json } => match tokens.list() {
            Ok(list) if json => {
                let out: Vec<_> = list
                    .iter()
                    .map(|e| serde_json::json!({"name": e.name, "role": e.role, "created": e.created}))
                    .collect();
                println!("{}", serde_json::Value::Array(out));
                ExitCode::SUCCESS
            }
            Ok(list) => {
                println!("{:<24} {:<8} created", "NAME", "ROLE");
                for e in list {
                    println!(
                        "{:<24} {:<8} {}",
                        e.name,
                        e.role.to_string(),
                        crate::clock::utc(e.created * 1000)
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        TokenAction::Revoke { name } => match tokens.revoke(&name) {
            Ok(()) => {
                println!("token {name:?} revoked");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
    }
}

fn fail(e: &TokenError) -> ExitCode {
    eprintln!("tandem token: {e}");
    // What the operator asked is wrong (usage), or the node's file is.
    match e {
        TokenError::NoSuchToken(_) | TokenError::Exists(_) | TokenError::BadName(_) => {
            ExitCode::from(EXIT_USAGE)
        }
        TokenError::NotAList { .. } | TokenError::Io { .. } | TokenError::NoRandomness => {
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
