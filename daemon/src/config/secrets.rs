//! Credentials in the config: `{ env = "VAR" }`, `{ file = "path" }`,
//! `{ credential = "name" }` (systemd's `$CREDENTIALS_DIRECTORY`) or, with a
//! warning, an inline string. Values are read here and never printed.

use std::path::Path;

use toml_edit::{Item, Value};

/// A secret setting after resolution.
pub enum Resolved {
    Value(String),
    /// Read from a file that other users can read: accepted, but `check` warns.
    Exposed {
        value: String,
        path: std::path::PathBuf,
        mode: u32,
    },
    /// An inline secret: accepted, but `check` warns.
    Inline(String),
}

/// The permission bits of `path` when users other than its owner and group
/// may read it.
pub fn world_readable(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o004 != 0).then_some(mode)
}

/// Secrets are short: a token, a key, a password. A file longer than this
/// is not a secret (and `/dev/zero` behind a symlink is refused before).
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// A systemd credential name: one path component, nothing that leaves
/// `$CREDENTIALS_DIRECTORY`.
fn plain_credential_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// Read a secret file: a regular file of at most [`MAX_SECRET_BYTES`], UTF-8.
fn read_secret(path: &Path) -> Result<String, String> {
    let bytes = herald_adapters::files::read_bounded(path, MAX_SECRET_BYTES).map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|_| "it is not valid UTF-8".to_string())
}

/// Read the secret an account setting points at. Errors say what is missing,
/// never the value.
pub fn resolve(key: &str, item: &Item, config_dir: &Path, credentials_dir: Option<&Path>) -> Result<Resolved, String> {
    let form = "expected { env = \"VAR\" }, { file = \"path\" }, { credential = \"name\" } or a string";
    if let Some(s) = item.as_str() {
        return Ok(Resolved::Inline(s.to_string()));
    }
    let table = item.as_table_like().ok_or_else(|| format!("`{key}` must name where the secret is; {form}"))?;
    let entries: Vec<(&str, &Item)> = table.iter().collect();
    let [(kind, value)] = entries.as_slice() else {
        return Err(format!("`{key}` must have exactly one of env, file or credential; {form}"));
    };
    let name = value.as_str().ok_or_else(|| format!("`{key}.{kind}` must be a string"))?;
    let mut exposed = None;
    let text = match *kind {
        "env" => std::env::var(name)
            .map_err(|_| format!("`{key}` comes from environment variable {name}, which is not set"))?,
        "file" => {
            let path = config_dir.join(name);
            let text = read_secret(&path)
                .map_err(|e| format!("`{key}` comes from file {}, which cannot be read: {e}", path.display()))?;
            exposed = world_readable(&path).map(|mode| (path, mode));
            text
        }
        "credential" => {
            if !plain_credential_name(name) {
                return Err(format!(
                    "`{key}` names systemd credential `{name}`; a credential name is a plain name \
                     (not empty, no `/`, not `.` or `..`), as given to LoadCredential="
                ));
            }
            let dir = credentials_dir.ok_or_else(|| {
                format!(
                    "`{key}` comes from systemd credential `{name}`, but $CREDENTIALS_DIRECTORY is not set \
                     (set LoadCredential={name}:... in the unit; outside systemd, `herald check \
                     --credentials-dir /etc/herald/secrets` reads them from that folder)"
                )
            })?;
            read_secret(&dir.join(name))
                .map_err(|e| format!("`{key}` comes from systemd credential `{name}`, which cannot be read: {e}"))?
        }
        other => return Err(format!("`{key}` has an unknown source `{other}`; {form}")),
    };
    let text = text.trim_end_matches(['\n', '\r']).to_string();
    if text.is_empty() {
        return Err(format!("`{key}` is empty ({kind} `{name}`)"));
    }
    Ok(match exposed {
        Some((path, mode)) => Resolved::Exposed { value: text, path, mode },
        None => Resolved::Value(text),
    })
}

/// Replace a secret setting's item by its resolved value, so the platform's
/// settings type reads a plain string.
pub fn replace(item: &mut Item, value: String) {
    *item = Item::Value(Value::from(value));
}
