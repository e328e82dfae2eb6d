//! Users, as Redis's ACL names them: a name, passwords (kept as SHA-256
//! hashes, written `#<hex>` as Redis's `ACL SETUSER … #<hash>`), a class of
//! commands ([`Class`]) and an optional session-id prefix that confines the
//! user to one tenant's sessions.
//!
//! Which commands each class may run is decided in [`crate::acl`]; this
//! module only holds the users and checks passwords, so the settings can
//! hold them without depending on the commands.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The user `--requirepass` (or no password at all) stands for.
pub const DEFAULT_USER: &str = "default";

/// What a user may do. Each class includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// Read-only: session reads, lock inspection, INFO, PING (dashboards,
    /// the lock inspector).
    Read,
    /// Sessions and locks read and written (application servers).
    Readwrite,
    /// Everything, including LOCK.BREAK, CLIENT KILL, SLOWLOG RESET,
    /// BACKUP.SNAPSHOT and ACL LIST.
    Admin,
}

impl Class {
    /// The class's name, as in the config file and `ACL LIST`.
    pub fn name(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Readwrite => "readwrite",
            Class::Admin => "admin",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a user may not run a command (rendered as Redis's NOPERM errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    /// The user's class does not include the command.
    #[error("User {user} has no permissions to run the '{command}' command")]
    Command {
        /// The user.
        user: String,
        /// The command, as Redis names it (`lock.break`, `client|kill`).
        command: String,
    },
    /// The command names a session outside the user's prefix.
    #[error("User {user} has no permissions to access the '{session}' session")]
    Session {
        /// The user.
        user: String,
        /// The session.
        session: String,
    },
    /// The command shows every session, and the user has a prefix.
    #[error(
        "User {user} has no permissions to run the '{command}' command on every session (it is confined to a session prefix)"
    )]
    AllSessions {
        /// The user.
        user: String,
        /// The command.
        command: String,
    },
}

/// One `[[user]]` table of the config file (or of `--users-file`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// The user name (`AUTH name pass`).
    pub name: String,
    /// `#<sha256 hex>` of the password (as `echo -n pass | sha256sum`), or
    /// the password itself (accepted, with a warning at start).
    pub password: Option<String>,
    /// Several passwords, in the same forms (for rotation).
    #[serde(default)]
    pub passwords: Vec<String>,
    /// `read`, `readwrite` or `admin`.
    pub class: Class,
    /// Only sessions whose id starts with this.
    pub prefix: Option<String>,
}

/// A user as the server checks it.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// Name.
    pub name: String,
    // SHA-256 of each password; empty: no password is needed (`nopass`).
    hashes: Vec<[u8; 32]>,
    /// Class.
    pub class: Class,
    /// Session-id prefix, if the user is confined to one.
    pub prefix: Option<String>,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the hashes.
        f.debug_struct("User")
            .field("name", &self.name)
            .field("class", &self.class)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl User {
    /// Whether `pass` is one of the user's passwords (any password when it
    /// has none). Compares hashes in constant time.
    pub fn accepts(&self, pass: &[u8]) -> bool {
        if self.hashes.is_empty() {
            return true;
        }
        let given: [u8; 32] = Sha256::digest(pass).into();
        // Every hash is compared, so the time says nothing about which.
        self.hashes
            .iter()
            .fold(subtle::Choice::from(0), |ok, h| ok | h.ct_eq(&given))
            .into()
    }

    /// Whether the user needs no password.
    pub fn nopass(&self) -> bool {
        self.hashes.is_empty()
    }

    /// The user as a Redis-like `ACL LIST` rule string, without secrets:
    /// `user NAME on nopass|haspass ~PREFIX* +@CLASS`.
    pub fn rule(&self) -> String {
        format!(
            "user {} on {} ~{}* +@{}",
            self.name,
            if self.nopass() { "nopass" } else { "haspass" },
            self.prefix.as_deref().unwrap_or(""),
            self.class
        )
    }

    /// Whether session id `id` is one the user may touch.
    pub fn may_touch(&self, id: &str) -> bool {
        self.prefix.as_deref().is_none_or(|p| id.starts_with(p))
    }
}

/// Every user the server knows, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Users {
    by_name: BTreeMap<String, Arc<User>>,
    // Passwords given in clear in the settings (warned about at start).
    plaintext: Vec<String>,
}

impl Users {
    /// The users from `--requirepass` and the `[[user]]` tables.
    ///
    /// Without tables, the one user is `default` (admin), with the
    /// password if there is one and `nopass` otherwise, as in Redis. With
    /// tables, `default` exists only when `--requirepass` is set (it is
    /// then that password's admin) or a table names it.
    ///
    /// # Errors
    /// A message: a repeated name, no password, a bad hash or prefix.
    pub fn new(requirepass: Option<&str>, entries: &[UserEntry]) -> Result<Users, String> {
        let mut users = Users::default();
        if let Some(p) = requirepass {
            users.insert(User {
                name: DEFAULT_USER.into(),
                hashes: vec![Sha256::digest(p.as_bytes()).into()],
                class: Class::Admin,
                prefix: None,
            });
        } else if entries.is_empty() {
            users.insert(User {
                name: DEFAULT_USER.into(),
                hashes: vec![],
                class: Class::Admin,
                prefix: None,
            });
        }
        for e in entries {
            if e.name.is_empty() || e.name.bytes().any(|b| b.is_ascii_whitespace()) {
                return Err(format!("user name {:?}: empty or with spaces", e.name));
            }
            if users.by_name.contains_key(&e.name) {
                return Err(format!(
                    "user {:?} is defined twice (or is `default` with --requirepass set)",
                    e.name
                ));
            }
            let mut hashes = Vec::new();
            for p in e.password.iter().chain(&e.passwords) {
                hashes.push(match parse_hash(p) {
                    Some(h) => h,
                    None if p.starts_with('#') => {
                        return Err(format!(
                            "user {:?}: a password starting with # must be # and 64 hex digits (its SHA-256)",
                            e.name
                        ));
                    }
                    None if p.is_empty() => {
                        return Err(format!("user {:?}: empty password", e.name));
                    }
                    None => {
                        users.plaintext.push(e.name.clone());
                        Sha256::digest(p.as_bytes()).into()
                    }
                });
            }
            if hashes.is_empty() {
                return Err(format!(
                    "user {:?} has no password (password = \"#<sha256 hex>\")",
                    e.name
                ));
            }
            if let Some(p) = &e.prefix
                && (p.is_empty()
                    || p.len() + 40 > sessiond_core::id::MAX_ID_LEN
                    || sessiond_core::SessionId::parse(p.as_bytes()).is_err())
            {
                return Err(format!(
                    "user {:?}: prefix {p:?} is not the start of a valid session id",
                    e.name
                ));
            }
            users.insert(User {
                name: e.name.clone(),
                hashes,
                class: e.class,
                prefix: e.prefix.clone(),
            });
        }
        Ok(users)
    }

    fn insert(&mut self, u: User) {
        self.by_name.insert(u.name.clone(), Arc::new(u));
    }

    /// The user named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<User>> {
        self.by_name.get(name)
    }

    /// The user a new connection is logged in as: `default` when it needs
    /// no password.
    pub fn initial(&self) -> Option<Arc<User>> {
        self.get(DEFAULT_USER).filter(|u| u.nopass()).cloned()
    }

    /// Whether some password is needed to do anything.
    pub fn password_required(&self) -> bool {
        self.initial().is_none()
    }

    /// Every user, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<User>> {
        self.by_name.values()
    }

    /// Users whose password was given in clear.
    pub fn plaintext_passwords(&self) -> &[String] {
        &self.plaintext
    }
}

/// The hash of `#<64 hex digits>`.
fn parse_hash(p: &str) -> Option<[u8; 32]> {
    let hex = p.strip_prefix('#')?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// `#<sha256 hex>` of `pass`: what to write in the config file.
pub fn hash_password(pass: &str) -> String {
    let h = Sha256::digest(pass.as_bytes());
    let mut s = String::from("#");
    for b in h {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, password: &str, class: Class) -> UserEntry {
        UserEntry {
            name: name.into(),
            password: Some(password.into()),
            passwords: vec![],
            class,
            prefix: None,
        }
    }

    #[test]
    fn hashed_and_plain_passwords_are_both_accepted() {
        assert_eq!(
            hash_password("abc"),
            // echo -n abc | sha256sum
            "#ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let hashed = hash_password("s3cret");
        let users = Users::new(
            None,
            &[
                entry("app", &hashed, Class::Readwrite),
                entry("dash", "plain", Class::Read),
            ],
        )
        .unwrap();
        assert!(users.get("app").unwrap().accepts(b"s3cret"));
        assert!(!users.get("app").unwrap().accepts(b"s3cre"));
        assert!(users.get("dash").unwrap().accepts(b"plain"));
        assert_eq!(users.plaintext_passwords(), ["dash"]);
        assert!(users.get(DEFAULT_USER).is_none(), "no default with tables");
        assert!(users.password_required());
    }

    #[test]
    fn requirepass_is_the_default_admin() {
        let users = Users::new(Some("pw"), &[]).unwrap();
        let d = users.get(DEFAULT_USER).unwrap();
        assert!(d.accepts(b"pw") && !d.accepts(b"nope"));
        assert_eq!(d.class, Class::Admin);
        assert!(users.password_required());
        let open = Users::new(None, &[]).unwrap();
        assert!(!open.password_required());
        assert_eq!(
            open.initial().unwrap().rule(),
            "user default on nopass ~* +@admin"
        );
    }

    #[test]
    fn bad_entries_are_refused() {
        let bad_hash = entry("a", "#abc", Class::Read);
        assert!(Users::new(None, &[bad_hash]).is_err());
        let twice = [entry("a", "x", Class::Read), entry("a", "y", Class::Read)];
        assert!(Users::new(None, &twice).is_err());
        let mut no_pass = entry("a", "x", Class::Read);
        no_pass.password = None;
        assert!(Users::new(None, &[no_pass]).is_err());
        let mut bad_prefix = entry("a", "x", Class::Read);
        bad_prefix.prefix = Some("has space".into());
        assert!(Users::new(None, &[bad_prefix]).is_err());
        assert!(Users::new(Some("p"), &[entry("default", "x", Class::Read)]).is_err());
    }

    #[test]
    fn the_rule_string_has_no_secret() {
        let mut e = entry("tenant", "pw", Class::Readwrite);
        e.prefix = Some("tenantA:".into());
        let users = Users::new(None, &[e]).unwrap();
        let u = users.get("tenant").unwrap();
        assert_eq!(u.rule(), "user tenant on haspass ~tenantA:* +@readwrite");
        assert!(u.may_touch("tenantA:x") && !u.may_touch("tenantB:x"));
        assert!(!format!("{u:?}").contains("hashes"));
    }
}
