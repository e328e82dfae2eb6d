//! Who may run what: the one table that gives every command the class of
//! user it needs ([`required`]), and the check of a user's session-id
//! prefix against the sessions a command names ([`authorize`]).
//!
//! [`required`] matches every command exhaustively: a new command does not
//! compile until it has a class. docs/protocol.md lists the same table; a
//! test checks the two agree.

use sessiond_core::engine::Command as EngineCommand;

use super::Command;
use super::conn::{AclSub, ClientSub, ConnCommand, SlowLogSub};
use crate::users::{AclError, Class, User};

/// The class a user needs to run `cmd`. AUTH, HELLO and QUIT need none
/// (they run before authentication); they are `Read` here, the lowest.
pub fn required(cmd: &Command) -> Class {
    match cmd {
        Command::Conn(c) => match c {
            ConnCommand::Ping(_)
            | ConnCommand::Echo(_)
            | ConnCommand::Hello { .. }
            | ConnCommand::Auth(..)
            | ConnCommand::Info(_)
            | ConnCommand::Select(_)
            | ConnCommand::Command(_)
            | ConnCommand::Quit
            // RESET releases only what the connection itself holds.
            | ConnCommand::Reset
            | ConnCommand::ClusterInfo
            | ConnCommand::Acl(AclSub::WhoAmI)
            | ConnCommand::SlowLog(SlowLogSub::Get(_) | SlowLogSub::Len) => Class::Read,
            ConnCommand::Client(sub) => match sub {
                ClientSub::Id
                | ClientSub::SetName(_)
                | ClientSub::GetName
                | ClientSub::SetInfo(..)
                | ClientSub::Info => Class::Read,
                ClientSub::List | ClientSub::KillAddr(_) | ClientSub::Kill { .. } => Class::Admin,
            },
            ConnCommand::SlowLog(SlowLogSub::Reset)
            | ConnCommand::BackupSnapshot
            | ConnCommand::Acl(AclSub::List) => Class::Admin,
        },
        Command::Engine(c) => engine_class(c),
        // Membership changes.
        Command::Cluster(_) => Class::Admin,
    }
}

fn engine_class(c: &EngineCommand) -> Class {
    match c {
        EngineCommand::Read { opts, .. } if !opts.create => Class::Read,
        EngineCommand::Exists { .. }
        | EngineCommand::Ttl { .. }
        | EngineCommand::LockInfo { .. } => Class::Read,
        EngineCommand::New { .. }
        | EngineCommand::Read { .. }
        | EngineCommand::Commit { .. }
        | EngineCommand::Destroy { .. }
        | EngineCommand::Touch { .. }
        | EngineCommand::Incr { .. }
        | EngineCommand::Cas { .. }
        | EngineCommand::Regenerate { .. }
        | EngineCommand::Acquire(_)
        | EngineCommand::Once { .. }
        | EngineCommand::Release { .. }
        | EngineCommand::Renew { .. } => Class::Readwrite,
        EngineCommand::Break { .. } => Class::Admin,
        EngineCommand::Idempotent { cmd, .. } => engine_class(cmd),
    }
}

/// The command's name as NOPERM errors give it (Redis's form: lower case,
/// `container|sub` for subcommands).
pub fn label(cmd: &Command) -> String {
    let sub = match cmd {
        Command::Conn(ConnCommand::Client(s)) => Some(match s {
            ClientSub::Id => "id",
            ClientSub::SetName(_) => "setname",
            ClientSub::GetName => "getname",
            ClientSub::SetInfo(..) => "setinfo",
            ClientSub::Info => "info",
            ClientSub::List => "list",
            ClientSub::KillAddr(_) | ClientSub::Kill { .. } => "kill",
        }),
        Command::Conn(ConnCommand::SlowLog(s)) => Some(match s {
            SlowLogSub::Get(_) => "get",
            SlowLogSub::Len => "len",
            SlowLogSub::Reset => "reset",
        }),
        Command::Conn(ConnCommand::Acl(s)) => Some(match s {
            AclSub::WhoAmI => "whoami",
            AclSub::List => "list",
        }),
        _ => None,
    };
    let name = cmd.name().to_lowercase();
    match sub {
        Some(s) => format!("{name}|{s}"),
        None => name,
    }
}

/// Whether `cmd` shows data of every session (so of every tenant): refused
/// to a user confined to a prefix.
fn spans_all_sessions(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Engine(EngineCommand::LockInfo { id: None })
            | Command::Conn(
                ConnCommand::Client(ClientSub::List)
                    | ConnCommand::SlowLog(SlowLogSub::Get(_))
                    | ConnCommand::BackupSnapshot
            )
    )
}

/// Whether `user` may run `cmd`: its class, and its prefix against the
/// sessions `cmd` names.
///
/// # Errors
/// [`AclError`], rendered as NOPERM.
pub fn authorize(user: &User, cmd: &Command) -> Result<(), AclError> {
    if required(cmd) > user.class {
        return Err(AclError::Command {
            user: user.name.clone(),
            command: label(cmd),
        });
    }
    if user.prefix.is_none() {
        return Ok(());
    }
    if spans_all_sessions(cmd) {
        return Err(AclError::AllSessions {
            user: user.name.clone(),
            command: label(cmd),
        });
    }
    if let Command::Engine(c) = cmd {
        for id in c.session_ids().into_iter().flatten() {
            if !user.may_touch(id.as_str()) {
                return Err(AclError::Session {
                    user: user.name.clone(),
                    session: id.to_string(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn parse(line: &str) -> Command {
        let argv = line
            .split_whitespace()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect();
        Command::parse(argv).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    /// The table of docs/protocol.md's "Permissions" section: one row per
    /// command form, `| \`FORM\` | class |`.
    fn documented() -> Vec<(String, String)> {
        let doc = include_str!("../../../../docs/protocol.md");
        let start = doc
            .find("<!-- acl-table -->")
            .expect("docs/protocol.md has the permissions table");
        doc[start..]
            .lines()
            .skip(1)
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| {
                let mut cols = l.split('|').map(str::trim).skip(1);
                let form = cols.next()?.trim_matches('`').to_owned();
                let class = cols.next()?.to_owned();
                (!form.is_empty() && !form.starts_with('-') && form != "command")
                    .then_some((form, class))
            })
            .collect()
    }

    #[test]
    fn the_documented_table_is_the_one_enforced() {
        let rows = documented();
        assert!(rows.len() > 30, "{rows:?}");
        for (form, class) in rows {
            let cmd = parse(&form);
            assert_eq!(required(&cmd).name(), class, "{form}");
        }
    }

    #[test]
    fn a_prefix_confines_a_user_to_its_sessions() {
        let users = crate::users::Users::new(
            None,
            &[crate::users::UserEntry {
                name: "t".into(),
                password: Some("p".into()),
                passwords: vec![],
                class: Class::Readwrite,
                prefix: Some("a:".into()),
            }],
        )
        .unwrap();
        let t = users.get("t").unwrap();
        assert!(authorize(t, &parse("SESSION.READ a:1")).is_ok());
        assert!(authorize(t, &parse("SESSION.READ b:1")).is_err());
        assert!(authorize(t, &parse("SESSION.REGENERATE a:1 TO b:1")).is_err());
        assert!(authorize(t, &parse("LOCK.INFO")).is_err());
        assert!(authorize(t, &parse("LOCK.INFO a:1")).is_ok());
        assert!(authorize(t, &parse("LOCK.BREAK a:1")).is_err());
        assert_eq!(label(&parse("CLIENT KILL ID 1")), "client|kill");
    }
}
