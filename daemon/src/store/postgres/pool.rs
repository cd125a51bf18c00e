//! The connections of a [`super::PostgresStore`]: a small bounded pool of
//! synchronous clients, each bounded in time and failing closed.
//!
//! Every connection has a connect timeout, TCP keepalives and a TCP user
//! timeout (a dead peer is noticed), `statement_timeout`, `lock_timeout` and
//! `idle_in_transaction_session_timeout` (no statement or transaction hangs
//! for ever), and `application_name=herald` (it shows in `pg_stat_activity`).
//! A client whose connection broke is dropped when it comes back to the pool
//! and the next caller gets a fresh one.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use postgres::config::{Host, SslMode};
use postgres::{Client, NoTls, Statement};

use super::tls::{Connector, HandshakeError, Settings};
use crate::store::{Result, StoreError};

/// How long a new connection may take (TCP, authentication).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest one statement may run.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest a statement waits for a row or table lock.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// A transaction left open (its client gone) is ended by the server after this.
pub const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a caller waits for a free connection when all are busy.
pub const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a store's database is, for messages: `user@host:port/database`,
/// written from the parsed URL's parts, so it never carries the password.
pub fn describe(config: &postgres::Config) -> String {
    let user = config.get_user().unwrap_or("?");
    let host = host_of(config);
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or(user);
    format!("{user}@{host}:{port}/{db}")
}

/// Parse a PostgreSQL URL (`postgres://user:password@host:port/db?...`, or
/// `key=value` pairs) into a client config with herald's bounds, and the
/// TLS connector its `sslmode` asks for (`None`: plain TCP or a unix
/// socket, as for a database on the same host). See [`super::tls`].
pub fn parse(url: &str) -> Result<(postgres::Config, Option<Connector>)> {
    let (tls, rest) = Settings::take(url).map_err(StoreError::BadUrl)?;
    // The parser's errors name the option, never its value.
    let mut config: postgres::Config = rest.parse().map_err(|e: postgres::Error| StoreError::BadUrl(chain(&e)))?;
    if config.get_user().is_none() {
        return Err(StoreError::BadUrl("it names no user (postgres://USER:PASSWORD@HOST:PORT/DATABASE)".into()));
    }
    let connector = tls.connector().map_err(StoreError::BadUrl)?;
    config.ssl_mode(if connector.is_some() { SslMode::Require } else { SslMode::Disable });
    let bounds = format!(
        "-c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout={}",
        STATEMENT_TIMEOUT.as_millis(),
        LOCK_TIMEOUT.as_millis(),
        IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
    );
    let options = match config.get_options() {
        Some(given) if !given.trim().is_empty() => format!("{given} {bounds}"),
        _ => bounds,
    };
    config
        .options(&options)
        .application_name("herald")
        .connect_timeout(CONNECT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(30));
    Ok((config, connector))
}

/// An error with its causes, `: `-separated (the client's own Display says
/// only its kind, "db error"; the cause says what the server said).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Did `e` end the connection? No answer from the server (closed, I/O,
/// timeout), or the server's last word before it closed it: a FATAL
/// error, such as `terminating connection due to administrator command`
/// on a shutdown or `pg_terminate_backend`.
pub fn connection_lost(e: &postgres::Error) -> bool {
    match e.as_db_error() {
        None => true,
        Some(db) => {
            matches!(db.parsed_severity(), Some(postgres::error::Severity::Fatal | postgres::error::Severity::Panic))
                || db.code().code().starts_with("08")
        }
    }
}

/// The store error for a failed statement on `target`: a lost or
/// unreachable server is [`StoreError::Unreachable`], anything else (the
/// server answered with an error) [`StoreError::Backend`].
pub fn error(target: &str, e: &postgres::Error) -> StoreError {
    if connection_lost(e) {
        StoreError::Unreachable { target: target.to_string(), error: chain(e) }
    } else {
        StoreError::Backend(format!("PostgreSQL database {target}: {}", chain(e)))
    }
}

/// The store error for a connection that could not be opened: the server
/// refused the login ([`StoreError::LoginRefused`]) or has no such database
/// ([`StoreError::NoDatabase`]), TLS failed ([`StoreError::Tls`]), or the
/// server could not be reached ([`StoreError::Unreachable`]).
pub fn connect_error(config: &postgres::Config, tls: Option<&Connector>, e: &postgres::Error) -> StoreError {
    let target = describe(config);
    let user = config.get_user().unwrap_or("?").to_string();
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        // Class 28: invalid authorization (28P01 a wrong password, 28000 no
        // pg_hba.conf entry or a refused method); 3D000: no such database.
        if code.starts_with("28") {
            let reason = db.message().to_string();
            return StoreError::LoginRefused { target, user, reason };
        }
        if code == "3D000" {
            let database = config.get_dbname().unwrap_or(&user).to_string();
            return StoreError::NoDatabase { target, database };
        }
    }
    let text = chain(e);
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(handshake) = cause.downcast_ref::<HandshakeError>() {
            let problem = match (handshake, tls) {
                (HandshakeError::Tls(rustls), Some(tls)) => tls.settings.explain(rustls, &host_of(config)),
                (other, _) => format!("the TLS handshake failed: {other}"),
            };
            return StoreError::Tls { target, problem };
        }
        source = cause.source();
    }
    if tls.is_some() && text.contains("server does not support TLS") {
        let problem = "the server does not offer TLS (it answered herald's request for TLS with no): turn ssl on \
                       in its postgresql.conf (ssl = on, ssl_cert_file, ssl_key_file), or, for a unix socket or a \
                       private network only, use sslmode=disable"
            .to_string();
        return StoreError::Tls { target, problem };
    }
    // The client's own word before any server error: no password to answer
    // the server's request for one, or a SCRAM exchange that failed.
    if text.contains("password missing") {
        let reason = "the server asks for a password and the URL gives none".to_string();
        return StoreError::LoginRefused { target, user, reason };
    }
    if text.starts_with("authentication error") {
        return StoreError::LoginRefused { target, user, reason: text };
    }
    StoreError::Unreachable { target, error: text }
}

/// The first host of a config, as written (for messages).
fn host_of(config: &postgres::Config) -> String {
    match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    }
}

/// Statements prepared on one connection, by their SQL.
pub type Statements = HashMap<&'static str, Statement>;

/// One client, and the statements prepared on it.
pub struct Connection {
    pub client: Client,
    pub statements: Statements,
}

/// A transaction whose statements are prepared once per connection.
pub struct CachedTx<'a, 'c> {
    pub tx: postgres::Transaction<'c>,
    pub statements: &'a mut Statements,
}

impl CachedTx<'_, '_> {
    fn statement(&mut self, sql: &'static str) -> std::result::Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.prepare(sql)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    pub fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> std::result::Result<u64, postgres::Error> {
        let s = self.statement(sql)?;
        self.tx.execute(&s, params)
    }

    pub fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> std::result::Result<Vec<postgres::Row>, postgres::Error> {
        let s = self.statement(sql)?;
        self.tx.query(&s, params)
    }

    pub fn query_one(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> std::result::Result<postgres::Row, postgres::Error> {
        let s = self.statement(sql)?;
        self.tx.query_one(&s, params)
    }

    pub fn query_opt(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> std::result::Result<Option<postgres::Row>, postgres::Error> {
        let s = self.statement(sql)?;
        self.tx.query_opt(&s, params)
    }
}

impl Connection {
    /// The prepared statement for `sql`, prepared once per connection.
    pub fn statement(&mut self, sql: &'static str) -> std::result::Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }
}

struct Slots {
    idle: Vec<Connection>,
    /// Connections that exist: idle, lent out, or being opened.
    open: usize,
}

pub struct Pool {
    config: postgres::Config,
    /// `None`: plain text (`sslmode=disable`).
    tls: Option<Connector>,
    target: String,
    size: usize,
    slots: Mutex<Slots>,
    freed: Condvar,
}

/// A connection lent out by the pool; it goes back when dropped, unless broken.
pub struct Lease<'a> {
    pool: &'a Pool,
    conn: Option<Connection>,
    /// Not to be lent again (its connection failed).
    broken: bool,
}

impl Lease<'_> {
    /// Close this connection instead of giving it back (it failed in a way
    /// that may have ended it; the client may not know yet).
    pub fn discard(&mut self) {
        self.broken = true;
    }
}

impl std::ops::Deref for Lease<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("a lease holds its connection until dropped")
    }
}

impl std::ops::DerefMut for Lease<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("a lease holds its connection until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let mut slots = self.pool.slots.lock().unwrap_or_else(|p| p.into_inner());
        if self.broken || conn.client.is_closed() {
            slots.open -= 1;
        } else {
            slots.idle.push(conn);
        }
        drop(slots);
        self.pool.freed.notify_one();
    }
}

impl Pool {
    /// A pool of at most `size` connections (at least 1) to `config`;
    /// none is opened until one is needed.
    pub fn new(config: postgres::Config, tls: Option<Connector>, size: usize) -> Pool {
        let target = describe(&config);
        Pool {
            config,
            tls,
            target,
            size: size.max(1),
            slots: Mutex::new(Slots { idle: Vec::new(), open: 0 }),
            freed: Condvar::new(),
        }
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    /// Take the idle connections out of the pool (to close them elsewhere).
    pub fn drain_idle(&self) -> Vec<Connection> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let idle = std::mem::take(&mut slots.idle);
        slots.open -= idle.len();
        idle
    }

    /// A new client with herald's bounds, outside the pool (a dedicated
    /// connection, as for the exclusive claim).
    pub fn connect(&self) -> Result<Client> {
        let connected = match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(NoTls),
        };
        let mut client = connected.map_err(|e| connect_error(&self.config, self.tls.as_ref(), &e))?;
        // herald's durable point is a commit: a server that acknowledges
        // commits before they are on disk would make it a lie.
        let row = client.query_one("SHOW synchronous_commit", &[]).map_err(|e| error(&self.target, &e))?;
        let mode: String = row.get(0);
        if mode == "off" {
            return Err(StoreError::SynchronousCommitOff { database: self.target.clone() });
        }
        Ok(client)
    }

    /// A connection: an idle one, a new one while fewer than `size` exist,
    /// or the first one given back (waiting at most [`CHECKOUT_TIMEOUT`]).
    pub fn get(&self) -> Result<Lease<'_>> {
        let deadline = Instant::now() + CHECKOUT_TIMEOUT;
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(conn) = slots.idle.pop() {
                if conn.client.is_closed() {
                    slots.open -= 1;
                    continue;
                }
                return Ok(Lease { pool: self, conn: Some(conn), broken: false });
            }
            if slots.open < self.size {
                slots.open += 1;
                drop(slots);
                return match self.connect() {
                    Ok(client) => Ok(Lease {
                        pool: self,
                        conn: Some(Connection { client, statements: HashMap::new() }),
                        broken: false,
                    }),
                    Err(e) => {
                        self.slots.lock().unwrap_or_else(|p| p.into_inner()).open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(StoreError::Backend(format!(
                    "PostgreSQL database {}: no free connection within {} s (all {} in use)",
                    self.target,
                    CHECKOUT_TIMEOUT.as_secs(),
                    self.size
                )));
            }
            slots = self.freed.wait_timeout(slots, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}
