//! PostgreSQL rows as [`Columns`]: every column read by name.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::db_err;
use crate::CaError;
pub(super) use crate::store::rows::*;

/// Column `c`, of any type sqlx decodes.
pub(super) fn get<'r, T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>>(
    r: &'r AnyRow,
    c: &str,
) -> Result<T, CaError> {
    r.try_get(c).map_err(db_err)
}

impl Columns for AnyRow {
    fn text(&self, col: &str) -> Result<String, CaError> {
        get(self, col)
    }

    fn opt_text(&self, col: &str) -> Result<Option<String>, CaError> {
        get(self, col)
    }

    /// BIGINT columns decode as `i64`, INTEGER ones (`wildcard`, `is_prefix`) as `i32`.
    fn opt_int(&self, col: &str) -> Result<Option<i64>, CaError> {
        match self.try_get::<Option<i64>, _>(col) {
            Ok(v) => Ok(v),
            Err(sqlx::Error::ColumnDecode { .. }) => Ok(get::<Option<i32>>(self, col)?.map(i64::from)),
            Err(e) => Err(db_err(e)),
        }
    }
}
