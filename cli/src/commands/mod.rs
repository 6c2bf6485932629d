//! The commands that talk to a running baton through its HTTP API (`submit`, `plans`, `tasks`,
//! `logs`, `perf`, `cancel`, `abort`, `workers`, `devices`), and `dev`, which runs one in this
//! process.
//!
//! Each reads what it needs through [`crate::client::ApiClient`] and prints through
//! [`crate::output`]; none reads the database.

pub(crate) mod dev;
pub(crate) mod fleet;
pub(crate) mod logs;
pub(crate) mod perf;
pub(crate) mod plans;
pub(crate) mod tasks;
pub(crate) mod users;

use crate::PageArgs;
use crate::client::Page;

impl From<PageArgs> for Page {
    fn from(args: PageArgs) -> Page {
        Page {
            page: args.page,
            page_size: args.page_size,
        }
    }
}
