//! SQLite rows as [`Columns`]: every column read by name.

use rusqlite::Row;

use super::sqlite_err;
use crate::CaError;
pub(super) use crate::store::rows::*;

/// Column `col`, of any type rusqlite converts.
pub(super) fn get<T: rusqlite::types::FromSql>(r: &Row<'_>, col: &str) -> Result<T, CaError> {
    r.get(col).map_err(sqlite_err)
}

impl Columns for Row<'_> {
    fn text(&self, col: &str) -> Result<String, CaError> {
        get(self, col)
    }

    fn opt_text(&self, col: &str) -> Result<Option<String>, CaError> {
        get(self, col)
    }

    fn opt_int(&self, col: &str) -> Result<Option<i64>, CaError> {
        get(self, col)
    }
}
