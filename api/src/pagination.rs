//! Pagination like Substra's: `?page=1&page_size=50`, answered with
//! `{"count", "page", "page_size", "results"}`. A page past the last one is empty, not an error.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::extract::Query;
use crate::routes::Param;

/// The page size when none is asked for.
pub const DEFAULT_PAGE_SIZE: u32 = 50;

/// The largest page size: a page is read and encoded in memory at once.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// The highest page number accepted, so that the offset stays far inside PostgreSQL's bigint.
pub const MAX_PAGE: u32 = 1_000_000_000;

/// The query parameter `page`.
pub const PAGE: Param = Param::query::<u32>("page", "Page number, from 1 (default 1).");

/// The query parameter `page_size`.
pub const PAGE_SIZE: Param = Param::query::<u32>(
    "page_size",
    "Results per page, from 1 to 1000 (default 50).",
);

/// Which page a listing returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pagination {
    /// The page number, from 1.
    pub page: u32,
    /// Results per page, from 1 to [`MAX_PAGE_SIZE`].
    pub page_size: u32,
}

impl Default for Pagination {
    fn default() -> Self {
        Pagination {
            page: 1,
            page_size: DEFAULT_PAGE_SIZE,
        }
    }
}

fn bounded(query: &Query, name: &str, default: u32, max: u32) -> Result<u32, ApiError> {
    let Some(text) = query.get(name) else {
        return Ok(default);
    };
    match text.parse::<u32>() {
        Ok(value) if (1..=max).contains(&value) => Ok(value),
        _ => Err(ApiError::invalid(
            name,
            format!("{text:?} is not an integer from 1 to {max}"),
        )),
    }
}

impl Pagination {
    /// The `page` and `page_size` parameters of `query`, with their defaults; a value that is
    /// not an integer in bounds is an error naming the parameter.
    pub fn from_query(query: &Query) -> Result<Pagination, ApiError> {
        let page = bounded(query, PAGE.name, 1, MAX_PAGE);
        let page_size = bounded(query, PAGE_SIZE.name, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE);
        match (page, page_size) {
            (Ok(page), Ok(page_size)) => Ok(Pagination { page, page_size }),
            (Err(error), Ok(_)) | (Ok(_), Err(error)) => Err(error),
            (Err(page), Err(page_size)) => Err(ApiError::with_details(
                page.kind(),
                [page.details(), page_size.details()].concat(),
            )),
        }
    }

    /// The SQL `LIMIT`.
    pub fn limit(&self) -> i64 {
        i64::from(self.page_size)
    }

    /// The SQL `OFFSET`: the rows of the pages before.
    pub fn offset(&self) -> i64 {
        i64::from(self.page - 1) * i64::from(self.page_size)
    }

    /// The response holding `results`, one page of `count` matching items.
    pub fn page_of<T>(&self, count: i64, results: Vec<T>) -> Paginated<T> {
        Paginated {
            count: u64::try_from(count).unwrap_or_default(),
            page: self.page,
            page_size: self.page_size,
            results,
        }
    }
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "{T}Page")]
pub struct Paginated<T> {
    /// How many items match, on every page.
    pub count: u64,
    /// This page's number, from 1.
    pub page: u32,
    /// The page size asked for; the last page may hold fewer results.
    pub page_size: u32,
    /// The items of this page.
    pub results: Vec<T>,
}

#[cfg(test)]
mod tests;
