//! The PostgreSQL backend of [`Store`](crate::store::Store): the same
//! interface and semantics as the sled store, on a database that several
//! hosts can reach.
//!
//! - [`PostgresStore::connect`] parses the URL (with its TLS options, [`tls`]),
//!   opens a bounded pool ([`pool`]), checks that commits are durable
//!   (`synchronous_commit` not `off`) and runs the migrations ([`schema`]).
//! - Every write is one transaction; a committed transaction is durable, so
//!   `flush` has nothing left to do and `audit` shows every committed record.
//! - [`PostgresStore::claim_exclusive`] (a session advisory lock) keeps the
//!   CLI on a stopped daemon and `herald store copy` alone on a database;
//!   daemons share it through the scheduler lease instead (`lease.rs`).

pub mod commands;
mod import;
pub mod lease;
pub mod pool;
pub mod schema;
mod store;
pub mod testing;
pub mod tls;

use std::sync::Mutex;

use postgres::Client;

use crate::store::{Result, StoreError};
pub use import::Import;
use pool::Pool;

/// The key of the session advisory lock held by [`PostgresStore::claim_exclusive`] ("herald" + 2).
const EXCLUSIVE_LOCK: i64 = 0x6865_7261_6c64_0002;

pub struct PostgresStore {
    pool: Pool,
    /// The dedicated connection that holds the exclusive claim, once taken.
    claim: Mutex<Option<Client>>,
    /// The daemon writing through this store (`identify`): stamped on each
    /// audit record it writes, so the one log says which daemon wrote what.
    writer: Option<String>,
}

/// The sync client closes its connection when dropped by blocking on a
/// runtime of its own, which panics on a thread that drives a tokio runtime,
/// and the daemon drops its last handle to the store on one (at stop). The
/// connections are closed on a plain thread instead.
impl Drop for PostgresStore {
    fn drop(&mut self) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let claim = self.claim.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        let idle = self.pool.drain_idle();
        let _ = std::thread::spawn(move || drop((claim, idle))).join();
    }
}

/// Shows where the store is (`user@host:port/database`), never the password.
impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").field("target", &self.target()).finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connect to the database at `url` with at most `pool` connections,
    /// and bring its schema to this build's (refusing a newer one). The
    /// URL's password appears in no error.
    pub fn connect(url: &str, pool: usize) -> Result<PostgresStore> {
        let (config, tls) = pool::parse(url)?;
        let pool = Pool::new(config, tls, pool);
        {
            let mut conn = pool.get()?;
            let target = pool.target().to_string();
            let mut tx = conn.client.transaction().map_err(|e| pool::error(&target, &e))?;
            schema::migrate(&mut tx, &target)?;
            tx.commit().map_err(|e| pool::error(&target, &e))?;
        }
        Ok(PostgresStore { pool, claim: Mutex::new(None), writer: None })
    }

    /// Name the daemon writing through this store (its lease holder id,
    /// `lease::holder_id`): every audit record written through it carries
    /// it in `daemon`. Stamped here, in `apply`, because every write of a
    /// daemon (scheduler, control socket, alerts, reloads) goes through it.
    pub fn identify(mut self, holder: &str) -> PostgresStore {
        self.writer = Some(holder.to_string());
        self
    }

    /// `user@host:port/database`, for messages (no password).
    pub fn target(&self) -> &str {
        self.pool.target()
    }

    /// Become the one herald daemon sending from this database: a session
    /// advisory lock on a connection of its own, held as long as this store
    /// lives. A second daemon gets [`StoreError::Claimed`]. CLI commands that
    /// only read do not claim. Claiming twice from one store is a no-op.
    ///
    /// If the claim's connection is lost, the server releases the lock; the
    /// daemon does not notice until its next write fails on the same
    /// outage. Daemons do not claim: they take turns through the scheduler
    /// lease (`lease.rs`).
    pub fn claim_exclusive(&self) -> Result<()> {
        let mut claim = self.claim.lock().unwrap_or_else(|p| p.into_inner());
        if claim.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        let mut client = self.pool.connect()?;
        let row = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&EXCLUSIVE_LOCK])
            .map_err(|e| pool::error(self.target(), &e))?;
        if !row.get::<_, bool>(0) {
            return Err(StoreError::Claimed { database: self.target().to_string() });
        }
        *claim = Some(client);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{Subject, conformance_tests};

    /// The store suite every backend passes (`store::conformance`), on
    /// PostgreSQL: each test on a fresh database, reopened by connecting again.
    mod postgres_conformance {
        use super::*;
        conformance_tests!(
            testing::fresh_database()
                .map(|url| { Subject::new(move || Box::new(PostgresStore::connect(&url, 4).unwrap())) })
        );
    }

    /// A store on a fresh database, or `None` (skipped, said on stderr).
    fn fresh() -> Option<(String, PostgresStore)> {
        let url = testing::fresh_database()?;
        let store = PostgresStore::connect(&url, 4).unwrap();
        Some((url, store))
    }

    fn password_of(url: &str) -> String {
        let config: postgres::Config = url.parse().unwrap();
        String::from_utf8(config.get_password().unwrap().to_vec()).unwrap()
    }

    #[test]
    fn postgres_connect_migrates_once_and_a_second_connect_finds_the_schema() {
        let Some((url, store)) = fresh() else { return };
        let again = PostgresStore::connect(&url, 2).unwrap();
        let mut client = again.pool.connect().unwrap();
        let versions: Vec<i32> =
            client.query("SELECT version FROM herald_schema", &[]).unwrap().iter().map(|r| r.get(0)).collect();
        assert_eq!(versions, [schema::known() as i32]);
        assert!(store.target().starts_with("herald_test@127.0.0.1:"), "{}", store.target());
        assert!(!format!("{store:?}").contains(&password_of(&url)), "{store:?}");
        use crate::store::Store;
        assert_eq!(store.audit_head().unwrap(), crate::audit_chain::ChainHead::empty(), "the migration's first head");
    }

    #[test]
    fn postgres_two_connects_migrating_at_once_both_succeed_with_one_schema() {
        let Some(url) = testing::fresh_database() else { return };
        let stores: Vec<PostgresStore> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4).map(|_| s.spawn(|| PostgresStore::connect(&url, 1))).collect();
            handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
        });
        let mut client = stores[0].pool.connect().unwrap();
        let heads: i64 = client.query_one("SELECT count(*) FROM chain_head", &[]).unwrap().get(0);
        let versions: i64 = client.query_one("SELECT count(*) FROM herald_schema", &[]).unwrap().get(0);
        assert_eq!((heads, versions), (1, 1));
    }

    #[test]
    fn postgres_a_database_from_a_newer_herald_is_refused_and_left_alone() {
        let Some((url, store)) = fresh() else { return };
        let newer = schema::known() as i32 + 1;
        store.pool.connect().unwrap().execute("UPDATE herald_schema SET version = $1", &[&newer]).unwrap();
        let err = PostgresStore::connect(&url, 1).expect_err("a newer schema must be refused");
        assert!(matches!(err, StoreError::NewerSchema { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("the PostgreSQL database herald_test@") && text.contains("newer herald"), "{text}");
        assert!(!text.contains("state directory"), "{text}");
        assert!(err.needs_an_operator());
        let found: i32 =
            store.pool.connect().unwrap().query_one("SELECT version FROM herald_schema", &[]).unwrap().get(0);
        assert_eq!(found, newer, "the newer version is left as it was");
    }

    /// Wrong password, unknown database, closed port, bad option: each its
    /// own error, naming user@host:port/db, and none with the password.
    #[test]
    fn postgres_the_password_is_in_no_error_wrong_password_or_unreachable_port() {
        let Some(url) = testing::fresh_database() else { return };
        let password = password_of(&url);
        let wrong = url.replace(&password, "not-the-password-Zq81");
        let err = PostgresStore::connect(&wrong, 1).expect_err("a wrong password must fail");
        let text = err.to_string();
        assert!(matches!(err, StoreError::LoginRefused { .. }), "{text}");
        assert!(text.contains("PostgreSQL at herald_test@127.0.0.1:"), "{text}");
        assert!(text.contains("refused the login for user herald_test: password authentication failed"), "{text}");
        assert!(text.contains("check the password"), "{text}");
        assert!(!text.contains("cannot reach"), "{text}");
        assert!(!text.contains("not-the-password-Zq81") && !format!("{err:?}").contains("not-the-password-Zq81"));
        assert!(!text.contains(&password) && !format!("{err:?}").contains(&password), "{text}");
        // Over TLS too: the login is refused, not the handshake.
        if let Some(ca) = testing::ca() {
            let tls = format!("{wrong}?sslmode=verify-full&sslrootcert={}", ca.display());
            let err = PostgresStore::connect(&tls, 1).expect_err("a wrong password must fail");
            assert!(matches!(err, StoreError::LoginRefused { .. }), "{err}");
        }
        // No password at all, to a server that asks for one: the client's own refusal.
        let none = url.replace(&format!(":{password}@"), "@");
        let err = PostgresStore::connect(&none, 1).expect_err("no password must fail");
        let text = err.to_string();
        assert!(matches!(err, StoreError::LoginRefused { .. }), "{text}");
        assert!(text.contains("refused the login for user herald_test: the server asks for a password"), "{text}");
        // A database that does not exist on the server.
        let name = url.rsplit('/').next().unwrap();
        let missing = url.replace(&format!("/{name}"), "/no_such_database_q7");
        let err = PostgresStore::connect(&missing, 1).expect_err("an unknown database must fail");
        let text = err.to_string();
        assert!(matches!(err, StoreError::NoDatabase { .. }), "{text}");
        assert!(
            text.contains("PostgreSQL at herald_test@127.0.0.1:")
                && text.contains("has no database no_such_database_q7"),
            "{text}"
        );
        assert!(!text.contains(&password) && !format!("{err:?}").contains(&password), "{text}");
        assert!(
            err.loses_leadership() && !err.needs_an_operator(),
            "exit 1 and systemd tries again, as when unreachable"
        );
        // A port nothing listens on (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config: postgres::Config = url.parse().unwrap();
        let dead = url.replace(&format!(":{}/", config.get_ports()[0]), &format!(":{port}/"));
        let err = PostgresStore::connect(&dead, 1).expect_err("a closed port must fail");
        let text = err.to_string();
        assert!(matches!(err, StoreError::Unreachable { .. }), "{text}");
        assert!(text.contains(&format!("herald_test@127.0.0.1:{port}/")), "{text}");
        assert!(!text.contains(&password) && !format!("{err:?}").contains(&password), "{text}");
        // An invalid URL: the parser's message names the option, not the value.
        let err = PostgresStore::connect(&format!("{url}?bogus_option=1"), 1).err().unwrap();
        assert!(matches!(err, StoreError::BadUrl(_)) && !err.to_string().contains(&password), "{err}");
    }

    /// The test server's URL for a fresh database, with TLS options added.
    fn fresh_tls(options: &str) -> Option<(String, String)> {
        let url = testing::fresh_database()?;
        let ca = testing::ca()?.display().to_string();
        let with = format!("{url}?{}", options.replace("{ca}", &ca));
        Some((url, with))
    }

    /// Is the connection this store's pool lends encrypted, as the server sees it?
    fn encrypted(store: &PostgresStore) -> bool {
        let mut conn = store.pool.get().unwrap();
        conn.client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).unwrap().get(0)
    }

    /// A CA of its own (not the server's), made with the openssl CLI.
    fn another_ca(dir: &std::path::Path) -> std::path::PathBuf {
        let pem = dir.join("other-ca.pem");
        let made = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=another CA"])
            .arg("-keyout")
            .arg(dir.join("other-ca.key"))
            .arg("-out")
            .arg(&pem)
            .output()
            .expect("openssl (installed by .ci/postgres.sh)");
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
        pem
    }

    #[test]
    fn postgres_verify_full_with_the_servers_ca_connects_encrypted_and_the_store_works() {
        use crate::model::{Event, State};
        use crate::store::Store;
        use crate::store::conformance::{delivery, put, verify};
        let Some((url, tls)) = fresh_tls("sslmode=verify-full&sslrootcert={ca}") else { return };
        let store = PostgresStore::connect(&tls, 2).unwrap();
        assert!(encrypted(&store), "verify-full must be encrypted");
        let d = delivery(1, State::Pending, 1_000);
        put(&store, &d, Event::Scheduled);
        let mut sent = d.clone();
        sent.state = State::Delivered;
        put(&store, &sent, Event::Delivered);
        assert_eq!(store.delivery(d.id).unwrap(), Some(sent));
        assert_eq!(store.due(None, i64::MAX, 10).unwrap(), vec![]);
        assert_eq!(verify(&store).unwrap().records, 2);
        // The host name, not only the IP address: the certificate names both.
        let port = url.parse::<postgres::Config>().unwrap().get_ports()[0];
        let by_name = testing::with_host(&tls, "localhost", port);
        assert!(encrypted(&PostgresStore::connect(&by_name, 1).unwrap()));
        // Without TLS options the same server is reached in plain text.
        assert!(!encrypted(&PostgresStore::connect(&url, 1).unwrap()));
        let required = PostgresStore::connect(&format!("{url}?sslmode=require"), 1).unwrap();
        assert!(encrypted(&required));
    }

    #[test]
    fn postgres_a_server_certificate_from_another_ca_is_refused_naming_the_database_and_the_fix() {
        let Some((url, _)) = fresh_tls("") else { return };
        let dir = tempfile::tempdir().unwrap();
        let other = another_ca(dir.path());
        for mode in ["verify-full", "verify-ca"] {
            let tls = format!("{url}?sslmode={mode}&sslrootcert={}", other.display());
            let err = PostgresStore::connect(&tls, 1).expect_err("a certificate from another CA must be refused");
            let text = err.to_string();
            assert!(matches!(err, StoreError::Tls { .. }), "{text}");
            assert!(text.contains("TLS to the PostgreSQL database herald_test@127.0.0.1:"), "{text}");
            assert!(
                text.contains("is not signed by the CA in sslrootcert (") && text.contains("other-ca.pem"),
                "{text}"
            );
            assert!(!text.contains(&password_of(&url)), "{text}");
            assert!(err.loses_leadership() && !err.needs_an_operator(), "{text}");
        }
    }

    /// verify-full checks the name the URL uses: the server reached as
    /// 127.0.0.2 (a forwarder) shows a certificate for localhost and
    /// 127.0.0.1 only, and is refused; verify-ca checks the chain only and
    /// connects. An IP address is checked against the certificate's IP
    /// subjectAltNames (127.0.0.1 passes in the test above).
    #[test]
    fn postgres_verify_full_refuses_a_host_the_certificate_does_not_name_and_verify_ca_does_not() {
        let Some((url, tls)) = fresh_tls("sslmode=verify-full&sslrootcert={ca}") else { return };
        let config: postgres::Config = url.parse().unwrap();
        let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], config.get_ports()[0]));
        let forwarder = testing::Forwarder::start("127.0.0.2", upstream);
        let other = testing::with_host(&tls, "127.0.0.2", forwarder.port);
        let err = PostgresStore::connect(&other, 1).expect_err("a name the certificate does not hold");
        let text = err.to_string();
        assert!(matches!(err, StoreError::Tls { .. }), "{text}");
        assert!(text.contains("is not valid for the host 127.0.0.2"), "{text}");
        assert!(text.contains(&format!("herald_test@127.0.0.2:{}/", forwarder.port)), "{text}");
        let chain_only = other.replace("sslmode=verify-full", "sslmode=verify-ca");
        assert!(encrypted(&PostgresStore::connect(&chain_only, 1).unwrap()));
    }

    /// A server that answers herald's request for TLS with no ('N', as a
    /// server with ssl = off does): refused, not continued in plain text.
    #[test]
    fn tls_asked_of_a_server_without_tls_is_refused_not_sent_in_plain_text() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = [0u8; 8];
            conn.read_exact(&mut request).unwrap();
            conn.write_all(b"N").unwrap();
            let mut rest = Vec::new();
            let _ = conn.read_to_end(&mut rest);
            (request, rest)
        });
        let url = format!("postgres://herald:s3cret-pw@127.0.0.1:{port}/herald?sslmode=require");
        let err = PostgresStore::connect(&url, 1).expect_err("no TLS, no connection");
        let text = err.to_string();
        assert!(matches!(err, StoreError::Tls { .. }), "{text}");
        assert!(text.contains(&format!("herald@127.0.0.1:{port}/herald")), "{text}");
        assert!(text.contains("the server does not offer TLS") && text.contains("ssl = on"), "{text}");
        assert!(!text.contains("s3cret-pw"), "{text}");
        let (request, rest) = server.join().unwrap();
        assert_eq!(request, [0, 0, 0, 8, 4, 210, 22, 47], "the SSLRequest");
        assert!(rest.is_empty(), "nothing sent after the server said no: {rest:?}");
    }

    /// What crosses the wire: through a recording forwarder, a query's
    /// parameter shows in the bytes in plain text, and not with verify-full.
    #[test]
    fn postgres_with_tls_a_query_is_not_in_the_bytes_on_the_wire() {
        let Some((url, tls)) = fresh_tls("sslmode=verify-full&sslrootcert={ca}") else { return };
        let config: postgres::Config = url.parse().unwrap();
        let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], config.get_ports()[0]));
        let marker = format!("post-id-on-the-wire-{:016x}", fastrand::u64(..));
        let through = |url: &str| -> Vec<u8> {
            let forwarder = testing::Forwarder::start("127.0.0.1", upstream);
            let store = PostgresStore::connect(&testing::with_host(url, "127.0.0.1", forwarder.port), 1).unwrap();
            let echoed: String =
                store.pool.get().unwrap().client.query_one("SELECT $1::text", &[&marker]).unwrap().get(0);
            assert_eq!(echoed, marker);
            drop(store);
            forwarder.seen()
        };
        let contains = |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
        assert!(contains(&through(&url), &marker), "plain text: the forwarder sees the query");
        let seen = through(&tls);
        assert!(!seen.is_empty());
        assert!(!contains(&seen, &marker), "the marker crossed the wire in clear with verify-full");
        assert!(!contains(&seen, "herald_schema"), "the migration's SQL crossed the wire in clear");
    }

    /// A client certificate (`sslcert`, `sslkey`) is a login: the role
    /// `herald_cert` has no password, and `.ci/postgres.sh`'s pg_hba lets it
    /// in over TLS with the certificate for its name only.
    #[test]
    fn postgres_a_client_certificate_logs_in_where_the_server_asks_for_one() {
        use crate::model::{Event, State};
        use crate::store::Store;
        use crate::store::conformance::{delivery, put};
        let Some((url, _)) = fresh_tls("") else { return };
        let ca = testing::ca().unwrap();
        let tls_dir = ca.parent().unwrap();
        let name = url.rsplit('/').next().unwrap().to_string();
        let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        admin
            .batch_execute(&format!(
                "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'herald_cert') THEN \
                 CREATE ROLE herald_cert LOGIN; END IF; END $$; ALTER DATABASE {name} OWNER TO herald_cert"
            ))
            .unwrap();
        let port = url.parse::<postgres::Config>().unwrap().get_ports()[0];
        let base =
            format!("postgres://herald_cert@127.0.0.1:{port}/{name}?sslmode=verify-full&sslrootcert={}", ca.display());
        let with_cert = format!(
            "{base}&sslcert={}&sslkey={}",
            tls_dir.join("client.pem").display(),
            tls_dir.join("client.key").display()
        );
        let store = PostgresStore::connect(&with_cert, 1).unwrap();
        let user: String = store.pool.get().unwrap().client.query_one("SELECT current_user::text", &[]).unwrap().get(0);
        assert_eq!(user, "herald_cert");
        let d = delivery(1, State::Pending, 1_000);
        put(&store, &d, Event::Scheduled);
        assert_eq!(store.delivery(d.id).unwrap(), Some(d));
        // Without the certificate the server refuses the login, and says why.
        let err = PostgresStore::connect(&base, 1).expect_err("no certificate, no login");
        let text = err.to_string();
        assert!(matches!(err, StoreError::LoginRefused { .. }), "{text}");
        assert!(text.contains("refused the login for user herald_cert") && text.contains("certificate"), "{text}");
    }

    #[test]
    fn tls_options_that_cannot_be_honoured_are_refused_before_connecting() {
        for (options, says) in [
            ("sslmode=prefer", "falls back to plain text"),
            ("sslmode=verify-full", "names no CA"),
            ("sslmode=verify-full&sslrootcert=/nonexistent/ca.pem", "sslrootcert /nonexistent/ca.pem cannot be read"),
        ] {
            let url = format!("postgres://herald:s3cret-pw@127.0.0.1:9/herald?{options}");
            let err = PostgresStore::connect(&url, 1).expect_err(options);
            let text = err.to_string();
            assert!(matches!(err, StoreError::BadUrl(_)) && text.contains(says), "{options}: {text}");
            assert!(!text.contains("s3cret-pw"), "{text}");
            assert!(err.needs_an_operator());
        }
        // `sslmode=` inside a password is not the option.
        let url = "postgres://herald:x%3Fsslmode=require@127.0.0.1:9/herald";
        let err = PostgresStore::connect(url, 1).expect_err("nothing listens on port 9");
        assert!(matches!(err, StoreError::Unreachable { .. }), "{err}");
    }

    #[test]
    fn postgres_a_second_claimer_is_refused_until_the_first_store_is_gone() {
        let Some((url, first)) = fresh() else { return };
        first.claim_exclusive().unwrap();
        first.claim_exclusive().unwrap();
        let second = PostgresStore::connect(&url, 1).unwrap();
        let err = second.claim_exclusive().expect_err("a second daemon must not send from the same database");
        assert!(matches!(err, StoreError::Claimed { .. }), "{err}");
        assert!(err.to_string().contains("in use by another herald daemon"), "{err}");
        drop(first);
        second.claim_exclusive().unwrap();
    }

    #[test]
    fn postgres_a_database_with_synchronous_commit_off_is_refused() {
        let Some(url) = testing::fresh_database() else { return };
        let name = url.rsplit('/').next().unwrap().to_string();
        let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        admin.batch_execute(&format!("ALTER DATABASE {name} SET synchronous_commit = off")).unwrap();
        let err = PostgresStore::connect(&url, 1).expect_err("commits that are not durable must be refused");
        assert!(matches!(err, StoreError::SynchronousCommitOff { .. }), "{err}");
        assert!(err.needs_an_operator());
        admin.batch_execute(&format!("ALTER DATABASE {name} SET synchronous_commit = on")).unwrap();
        PostgresStore::connect(&url, 1).unwrap();
    }

    /// The store is synchronous: the daemon calls it on `spawn_blocking`
    /// and `block_in_place` threads, the CLI on a plain thread.
    #[test]
    fn postgres_the_sync_client_works_from_tokio_blocking_threads_and_plain_threads() {
        let Some((_, store)) = fresh() else { return };
        let store = std::sync::Arc::new(store);
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let count = |s: &PostgresStore| -> i64 {
            s.pool.get().unwrap().client.query_one("SELECT count(*) FROM deliveries", &[]).unwrap().get(0)
        };
        runtime.block_on(async {
            let s = store.clone();
            assert_eq!(tokio::task::spawn_blocking(move || count(&s)).await.unwrap(), 0);
            let s = store.clone();
            let in_place = tokio::spawn(async move { tokio::task::block_in_place(|| count(&s)) });
            assert_eq!(in_place.await.unwrap(), 0);
        });
        let s = store.clone();
        assert_eq!(std::thread::spawn(move || count(&s)).join().unwrap(), 0);
    }

    /// A database restart or an administrator's `pg_terminate_backend`
    /// closes pooled connections while they sit idle: the next read and the
    /// next write each run on a new connection instead of failing.
    #[test]
    fn postgres_connections_the_server_closed_while_idle_are_replaced() {
        use crate::model::{Event, State};
        use crate::store::Store;
        use crate::store::conformance::{delivery, put};
        let Some((url, store)) = fresh() else { return };
        let d = delivery(1, State::Pending, 1_000);
        put(&store, &d, Event::Scheduled);
        let name = url.rsplit('/').next().unwrap().to_string();
        let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let herald_backends = |admin: &mut postgres::Client| -> i64 {
            admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'herald'",
                    &[&name],
                )
                .unwrap()
                .get(0)
        };
        assert!(herald_backends(&mut admin) >= 1);
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'herald'",
                &[&name],
            )
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while herald_backends(&mut admin) > 0 {
            assert!(std::time::Instant::now() < deadline, "the backends did not end");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(store.delivery(d.id).unwrap(), Some(d.clone()), "a read after the server closed the connection");
        // Every connection again, this time before a write.
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'herald'",
                &[&name],
            )
            .unwrap();
        while herald_backends(&mut admin) > 0 {
            assert!(std::time::Instant::now() < deadline, "the backends did not end");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let stored = put(&store, &delivery(2, State::Pending, 1_000), Event::Scheduled);
        assert_eq!(stored[0].seq, 2);
    }

    #[test]
    fn a_value_that_cannot_be_serialised_is_an_error_not_empty_bytes() {
        // JSON object keys must be strings: this map does not serialise.
        let map: std::collections::BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into_iter().collect();
        let err = crate::store::encode("delivery", &map).expect_err("must not serialise");
        assert!(
            matches!(err, StoreError::Encode { .. }) && err.to_string().contains("cannot store a delivery"),
            "{err}"
        );
        assert_eq!(crate::store::encode("delivery", &1u8).unwrap(), b"1");
    }

    /// `herald store copy`'s half on this side: a sled store's rows and
    /// audit bytes imported as they are; the head is the sled store's, and
    /// the next write continues its chain.
    #[test]
    fn postgres_a_sled_store_imported_keeps_its_audit_bytes_counts_and_chain() {
        use crate::model::{Event, State};
        use crate::store::conformance::{delivery, put, verify};
        use crate::store::{SledStore, Store};
        let Some((_, store)) = fresh() else { return };
        let dir = tempfile::tempdir().unwrap();
        let sled = SledStore::open(dir.path(), 8).unwrap();
        for n in 1..=4u8 {
            put(&sled, &delivery(n, State::Pending, 1_000 * i64::from(n)), Event::Scheduled);
        }
        let mut failed = delivery(2, State::Failed, 2_000);
        failed.attempt = 3;
        put(&sled, &failed, Event::Failed);
        sled.flush().unwrap();
        assert!(store.is_empty().unwrap());
        let deliveries: Vec<_> =
            ["post-0", "post-1"].iter().flat_map(|p| sled.deliveries_of_post(p).unwrap()).collect();
        let audit = sled.audit_raw(None, usize::MAX).unwrap();
        store.import(&Import { deliveries, audit: audit.clone(), ..Import::default() }).unwrap();
        let head = store.finish_import().unwrap();
        assert!(!store.is_empty().unwrap());
        assert_eq!(head, sled.audit_head().unwrap(), "the sled store's head");
        assert_eq!(store.audit_raw(None, usize::MAX).unwrap(), audit, "byte for byte");
        assert_eq!(store.counts().unwrap(), sled.counts().unwrap());
        assert_eq!(store.due(None, i64::MAX, 10).unwrap(), sled.due(None, i64::MAX, 10).unwrap());
        let next = put(&store, &delivery(9, State::Pending, 1), Event::Scheduled);
        assert_eq!((next[0].seq, next[0].prev_hash.clone()), (6, Some(head.hash)));
        assert_eq!(verify(&store).unwrap().records, 6);
        // Importing the same records again is refused, not an overwrite.
        let again = Import { audit: audit[..1].to_vec(), ..Import::default() };
        assert!(matches!(store.import(&again), Err(StoreError::Backend(_))));
    }

    /// A log from before the chain (records without a hash), copied: its
    /// first write starts the chain with `chain_started`, committing to the
    /// copied records, as on a sled store from before the chain.
    #[test]
    fn postgres_an_imported_log_from_before_the_chain_is_chained_by_the_next_write() {
        use crate::audit_chain::{ChainHead, LegacyDigest};
        use crate::model::{AuditRecord, Event, State, from_millis};
        use crate::store::conformance::{delivery, put, verify};
        let Some((_, store)) = fresh() else { return };
        let legacy: Vec<(u64, Vec<u8>)> = (1..=3u64)
            .map(|seq| {
                let mut r = AuditRecord::of(&delivery(seq as u8, State::Pending, 1), Event::Scheduled, from_millis(0));
                r.seq = seq;
                (seq, serde_json::to_vec(&r).unwrap())
            })
            .collect();
        store.import(&Import { audit: legacy.clone(), ..Import::default() }).unwrap();
        let head = store.finish_import().unwrap();
        let mut digest = LegacyDigest::default();
        legacy.iter().for_each(|(_, b)| digest.add(b));
        let digest = digest.finish();
        assert_eq!(head, ChainHead { seq: 3, hash: digest.clone(), unstarted: true });
        let stored = put(&store, &delivery(9, State::Pending, 1), Event::Scheduled);
        assert_eq!(stored.len(), 2, "chain_started, then the record itself");
        assert_eq!(
            (stored[0].seq, stored[0].event, stored[0].prev_hash.clone()),
            (4, Event::ChainStarted, Some(digest))
        );
        let verified = verify(&store).unwrap();
        assert_eq!((verified.records, verified.legacy), (5, 3));
    }

    /// Two stores on one database (two daemons, or a daemon and a CLI on
    /// another host), each with two writers: the log stays one log,
    /// gapless and chained, and each sees the other's committed records
    /// without any flush.
    #[test]
    fn postgres_two_stores_writing_at_once_keep_one_gapless_chained_log() {
        use crate::model::{AuditRecord, Event, State, from_millis};
        use crate::store::conformance::{delivery, put, verify};
        use crate::store::{AuditQuery, Changes, Store};
        let Some((url, first)) = fresh() else { return };
        let second = PostgresStore::connect(&url, 2).unwrap();
        const EACH: u8 = 60;
        std::thread::scope(|s| {
            for (k, store) in [&first, &second].into_iter().enumerate() {
                s.spawn(move || {
                    for n in 0..EACH {
                        let mut d = delivery(n, State::Pending, i64::from(n));
                        d.id.0[0] = k as u8;
                        put(store, &d, Event::Scheduled);
                    }
                });
                s.spawn(move || {
                    for n in 0..EACH {
                        let note =
                            AuditRecord::about_herald(Event::AuditHead, from_millis(0), Some(format!("{k}/{n}")));
                        store.apply(Changes { notes: vec![note], ..Changes::default() }).unwrap();
                    }
                });
            }
        });
        let total = 4 * u64::from(EACH);
        for store in [&first, &second] {
            let seqs: Vec<u64> = store.audit(&AuditQuery::default()).unwrap().iter().map(|r| r.seq).collect();
            assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
            assert_eq!(store.counts().unwrap()[&State::Pending], 2 * u64::from(EACH));
        }
        assert_eq!(verify(&second).unwrap().records, total);
        assert_eq!(first.audit_head().unwrap(), second.audit_head().unwrap());
    }
}
