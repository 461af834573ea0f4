//! The audit fault both test suites inject: a trigger that makes every insert into the audit
//! table fail, so a test can check that a state change does not survive the loss of its audit
//! event. Compiled into the `tests` crate and, by path, into `ca/tests/common`. Also [`tamper`],
//! an outside write to the database, for the audit chain's tests.

/// Makes every later insert into the audit table of the database at `url` fail (a trigger that
/// raises), so a test can check that a state change does not survive the loss of its audit event.
pub async fn break_audit(url: &str) {
    let sql = if url.starts_with("sqlite:") {
        "CREATE TRIGGER audit_broken BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'audit broken'); END;"
    } else {
        "CREATE OR REPLACE FUNCTION audit_broken() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'audit broken'; END $$; \
         CREATE TRIGGER audit_broken BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION audit_broken();"
    };
    admin_sql(url, sql).await;
}

/// Undoes [`break_audit`].
pub async fn restore_audit(url: &str) {
    let sql = if url.starts_with("sqlite:") {
        "DROP TRIGGER audit_broken;"
    } else {
        "DROP TRIGGER audit_broken ON audit_events; DROP FUNCTION audit_broken();"
    };
    admin_sql(url, sql).await;
}

/// Runs `sql` (statements separated by `;`) on the database at `url` from outside the store, as
/// someone with write access to the database would: to tamper with the audit log in tests.
pub async fn tamper(url: &str, sql: &str) {
    use sqlx::Connection;
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    if url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(url).await.expect("connect to the SQLite file");
        sqlx::raw_sql(sql).execute(&mut c).await.expect("tamper SQL");
        c.close().await.expect("close");
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.expect("connect to PostgreSQL");
        sqlx::raw_sql(sql).execute(&mut c).await.expect("tamper SQL");
        c.close().await.expect("close");
    }
}

/// Runs `sql` on its own connection, outside the store under test.
async fn admin_sql(url: &str, sql: &'static str) {
    use sqlx::Connection;
    if url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(url).await.expect("connect to the SQLite file");
        sqlx::raw_sql(sql).execute(&mut c).await.expect("admin SQL");
        c.close().await.expect("close");
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.expect("connect to PostgreSQL");
        sqlx::raw_sql(sql).execute(&mut c).await.expect("admin SQL");
        c.close().await.expect("close");
    }
}
