//! Queries on what producers register: organizations, users and credentials, projects,
//! functions, datasets and data samples, schedules.

use diesel::pg::Pg;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use models::{
    Credential, DataSample, DataSampleKey, Dataset, DatasetKey, Function, FunctionKey,
    FunctionStatus, Organization, OrganizationId, Project, ProjectId, Schedule, ScheduleId, User,
    UserId,
};

use super::rows::{
    CredentialRow, DataSampleRow, DatasetRow, DatasetSampleRow, FunctionRow, OrganizationRow,
    ProjectRow, ScheduleRow, UserRow,
};
use super::schema::{
    credentials, data_samples, dataset_samples, datasets, functions, organizations, projects,
    schedules, users,
};
use super::{Page, StoreResult, rows_per_insert};

/// Registers `organization`.
pub async fn insert_organization(
    conn: &mut AsyncPgConnection,
    organization: &Organization,
) -> StoreResult<()> {
    diesel::insert_into(organizations::table)
        .values(OrganizationRow::from_model(organization))
        .execute(conn)
        .await?;
    Ok(())
}

/// The organization `id`, with `is_current` set when it is `current`.
pub async fn find_organization(
    conn: &mut AsyncPgConnection,
    id: &OrganizationId,
    current: Option<&OrganizationId>,
) -> StoreResult<Option<Organization>> {
    let row = organizations::table
        .find(id.as_str())
        .select(OrganizationRow::as_select())
        .first(conn)
        .await
        .optional()?;
    Ok(row.map(|row| row.into_model(current)))
}

/// Every organization, by identifier.
pub async fn list_organizations(
    mut conn: &AsyncPgConnection,
    current: Option<&OrganizationId>,
) -> StoreResult<Vec<Organization>> {
    let rows = organizations::table
        .order(organizations::id)
        .select(OrganizationRow::as_select())
        .load(&mut conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| row.into_model(current))
        .collect())
}

/// Organizations by identifier: `limit` rows after skipping `offset`, with how many there are
/// in all; `is_current` is set on `current`.
pub async fn list_organizations_page(
    conn: &mut AsyncPgConnection,
    current: Option<&OrganizationId>,
    limit: i64,
    offset: i64,
) -> StoreResult<Page<Organization>> {
    let total = organizations::table.count().get_result(conn).await?;
    let rows = organizations::table
        .order(organizations::id)
        .limit(limit)
        .offset(offset)
        .select(OrganizationRow::as_select())
        .load(conn)
        .await?
        .into_iter()
        .map(|row| row.into_model(current))
        .collect();
    Ok(Page { rows, total })
}

/// Registers `user`.
pub async fn insert_user(conn: &mut AsyncPgConnection, user: &User) -> StoreResult<()> {
    diesel::insert_into(users::table)
        .values(UserRow::from_model(user))
        .execute(conn)
        .await?;
    Ok(())
}

/// The user `identifier`.
pub async fn find_user(
    mut conn: &AsyncPgConnection,
    identifier: &UserId,
) -> StoreResult<Option<User>> {
    users::table
        .find(identifier.as_str())
        .select(UserRow::as_select())
        .first(&mut conn)
        .await
        .optional()?
        .map(UserRow::into_model)
        .transpose()
}

/// Stores `credential`. A second password for the same user is refused as a duplicate.
pub async fn insert_credential(
    conn: &mut AsyncPgConnection,
    credential: &Credential,
) -> StoreResult<()> {
    diesel::insert_into(credentials::table)
        .values(CredentialRow::from_model(credential))
        .execute(conn)
        .await?;
    Ok(())
}

/// The credentials of `user`, oldest first.
pub async fn list_credentials(
    conn: &mut AsyncPgConnection,
    user: &UserId,
) -> StoreResult<Vec<Credential>> {
    credentials::table
        .filter(credentials::user_identifier.eq(user.as_str()))
        .order((credentials::creation_date, credentials::identifier))
        .select(CredentialRow::as_select())
        .load(conn)
        .await?
        .into_iter()
        .map(CredentialRow::into_model)
        .collect()
}

/// Registers `project`.
pub async fn insert_project(conn: &mut AsyncPgConnection, project: &Project) -> StoreResult<()> {
    diesel::insert_into(projects::table)
        .values(ProjectRow::from_model(project))
        .execute(conn)
        .await?;
    Ok(())
}

/// The project `identifier`.
pub async fn find_project(
    conn: &mut AsyncPgConnection,
    identifier: &ProjectId,
) -> StoreResult<Option<Project>> {
    projects::table
        .find(identifier.as_str())
        .select(ProjectRow::as_select())
        .first(conn)
        .await
        .optional()?
        .map(ProjectRow::into_model)
        .transpose()
}

/// Projects by identifier: `limit` rows after skipping `offset`, with how many there are in
/// all.
pub async fn list_projects_page(
    conn: &mut AsyncPgConnection,
    limit: i64,
    offset: i64,
) -> StoreResult<Page<Project>> {
    let total = projects::table.count().get_result(conn).await?;
    let rows = projects::table
        .order(projects::identifier)
        .limit(limit)
        .offset(offset)
        .select(ProjectRow::as_select())
        .load(conn)
        .await?
        .into_iter()
        .map(ProjectRow::into_model)
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Page { rows, total })
}

/// Which functions a listing shows: those matching every filter given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionFilter {
    /// Only functions of this project.
    pub project: Option<ProjectId>,
    /// Only functions in this build status.
    pub status: Option<FunctionStatus>,
    /// Only functions owned by this organization.
    pub owner: Option<OrganizationId>,
}

fn filtered_functions(filter: &FunctionFilter) -> functions::BoxedQuery<'_, Pg> {
    let mut query = functions::table.into_boxed();
    if let Some(project) = &filter.project {
        query = query.filter(functions::project.eq(project.as_str()));
    }
    if let Some(status) = filter.status {
        query = query.filter(functions::status.eq(status.as_str()));
    }
    if let Some(owner) = &filter.owner {
        query = query.filter(functions::owner.eq(owner.as_str()));
    }
    query
}

/// The functions matching `filter`, newest first: `limit` rows after skipping `offset`, with
/// how many match in all.
pub async fn list_functions_page(
    conn: &mut AsyncPgConnection,
    filter: &FunctionFilter,
    limit: i64,
    offset: i64,
) -> StoreResult<Page<Function>> {
    let total = filtered_functions(filter).count().get_result(conn).await?;
    let rows = filtered_functions(filter)
        .order((functions::creation_date.desc(), functions::key))
        .limit(limit)
        .offset(offset)
        .select(FunctionRow::as_select())
        .load(conn)
        .await?
        .into_iter()
        .map(FunctionRow::into_model)
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Page { rows, total })
}

/// Registers `function`.
pub async fn insert_function(conn: &mut AsyncPgConnection, function: &Function) -> StoreResult<()> {
    diesel::insert_into(functions::table)
        .values(FunctionRow::from_model(function)?)
        .execute(conn)
        .await?;
    Ok(())
}

/// The function `key`.
pub async fn find_function(
    conn: &mut AsyncPgConnection,
    key: FunctionKey,
) -> StoreResult<Option<Function>> {
    functions::table
        .find(key.0)
        .select(FunctionRow::as_select())
        .first(conn)
        .await
        .optional()?
        .map(FunctionRow::into_model)
        .transpose()
}

/// The functions among `keys` that exist, in no particular order (a submission's lookup).
pub async fn find_functions(
    mut conn: &AsyncPgConnection,
    keys: &[FunctionKey],
) -> StoreResult<Vec<Function>> {
    let keys: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
    functions::table
        .filter(functions::key.eq_any(keys))
        .select(FunctionRow::as_select())
        .load(&mut conn)
        .await?
        .into_iter()
        .map(FunctionRow::into_model)
        .collect()
}

/// Registers `dataset` and attaches the already registered samples it lists.
pub async fn insert_dataset(conn: &mut AsyncPgConnection, dataset: &Dataset) -> StoreResult<()> {
    diesel::insert_into(datasets::table)
        .values(DatasetRow::from_model(dataset)?)
        .execute(conn)
        .await?;
    let links: Vec<DatasetSampleRow> = dataset
        .data_sample_keys
        .iter()
        .map(|sample| DatasetSampleRow {
            dataset_key: dataset.key.0,
            data_sample_key: sample.0,
        })
        .collect();
    insert_dataset_samples(conn, &links).await
}

/// The data manager `key`, with its samples in attachment order.
pub async fn find_dataset(
    conn: &mut AsyncPgConnection,
    key: DatasetKey,
) -> StoreResult<Option<Dataset>> {
    let Some(row) = datasets::table
        .find(key.0)
        .select(DatasetRow::as_select())
        .first(conn)
        .await
        .optional()?
    else {
        return Ok(None);
    };
    let samples: Vec<Uuid> = dataset_samples::table
        .filter(dataset_samples::dataset_key.eq(key.0))
        .order(dataset_samples::position)
        .select(dataset_samples::data_sample_key)
        .load(conn)
        .await?;
    row.into_model(samples).map(Some)
}

/// The data managers among `keys` that exist, each with its samples in attachment order.
pub async fn find_datasets(
    mut conn: &AsyncPgConnection,
    keys: &[DatasetKey],
) -> StoreResult<Vec<Dataset>> {
    let keys: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
    let rows: Vec<DatasetRow> = datasets::table
        .filter(datasets::key.eq_any(&keys))
        .order(datasets::key)
        .select(DatasetRow::as_select())
        .load(&mut conn)
        .await?;
    let links: Vec<(Uuid, Uuid)> = dataset_samples::table
        .filter(dataset_samples::dataset_key.eq_any(&keys))
        .order(dataset_samples::position)
        .select((
            dataset_samples::dataset_key,
            dataset_samples::data_sample_key,
        ))
        .load(&mut conn)
        .await?;
    let mut samples_of: std::collections::HashMap<Uuid, Vec<Uuid>> =
        std::collections::HashMap::new();
    for (dataset, sample) in links {
        samples_of.entry(dataset).or_default().push(sample);
    }
    rows.into_iter()
        .map(|row| {
            let samples = samples_of.remove(&row.key).unwrap_or_default();
            row.into_model(samples)
        })
        .collect()
}

/// Data managers, newest first, each with its samples in attachment order: `limit` rows after
/// skipping `offset`, with how many there are in all.
pub async fn list_datasets_page(
    conn: &mut AsyncPgConnection,
    limit: i64,
    offset: i64,
) -> StoreResult<Page<Dataset>> {
    let total = datasets::table.count().get_result(conn).await?;
    let keys: Vec<Uuid> = datasets::table
        .order((datasets::creation_date.desc(), datasets::key))
        .limit(limit)
        .offset(offset)
        .select(datasets::key)
        .load(conn)
        .await?;
    let keys: Vec<DatasetKey> = keys.into_iter().map(DatasetKey).collect();
    let mut found = find_datasets(conn, &keys).await?;
    found.sort_by_key(|dataset| keys.iter().position(|key| *key == dataset.key));
    Ok(Page { rows: found, total })
}

/// The samples attached to data manager `dataset`, in attachment order, each with its data
/// managers: `limit` rows after skipping `offset`, with how many there are in all.
pub async fn list_dataset_samples_page(
    conn: &mut AsyncPgConnection,
    dataset: DatasetKey,
    limit: i64,
    offset: i64,
) -> StoreResult<Page<DataSample>> {
    let total = dataset_samples::table
        .filter(dataset_samples::dataset_key.eq(dataset.0))
        .count()
        .get_result(conn)
        .await?;
    let keys: Vec<Uuid> = dataset_samples::table
        .filter(dataset_samples::dataset_key.eq(dataset.0))
        .order(dataset_samples::position)
        .limit(limit)
        .offset(offset)
        .select(dataset_samples::data_sample_key)
        .load(conn)
        .await?;
    let keys: Vec<DataSampleKey> = keys.into_iter().map(DataSampleKey).collect();
    let mut found = find_data_samples(conn, &keys).await?;
    found.sort_by_key(|sample| keys.iter().position(|key| *key == sample.key));
    Ok(Page { rows: found, total })
}

/// Registers `samples` and attaches each to the already registered data managers it lists.
/// Inserts in chunks, so any number of samples fits PostgreSQL's bind-parameter limit.
pub async fn insert_data_samples(
    conn: &mut AsyncPgConnection,
    samples: &[DataSample],
) -> StoreResult<()> {
    let rows: Vec<DataSampleRow> = samples.iter().map(DataSampleRow::from_model).collect();
    for chunk in rows.chunks(rows_per_insert(4)) {
        diesel::insert_into(data_samples::table)
            .values(chunk)
            .execute(conn)
            .await?;
    }
    let links: Vec<DatasetSampleRow> = samples
        .iter()
        .flat_map(|sample| {
            sample
                .data_manager_keys
                .iter()
                .map(|dataset| DatasetSampleRow {
                    dataset_key: dataset.0,
                    data_sample_key: sample.key.0,
                })
        })
        .collect();
    insert_dataset_samples(conn, &links).await
}

/// Attaches samples to data managers; a link that exists already is kept as it is.
async fn insert_dataset_samples(
    conn: &mut AsyncPgConnection,
    links: &[DatasetSampleRow],
) -> StoreResult<()> {
    for chunk in links.chunks(rows_per_insert(2)) {
        diesel::insert_into(dataset_samples::table)
            .values(chunk)
            .on_conflict_do_nothing()
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// The samples among `keys` that exist, each with its data managers.
pub async fn find_data_samples(
    mut conn: &AsyncPgConnection,
    keys: &[DataSampleKey],
) -> StoreResult<Vec<DataSample>> {
    let keys: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
    let rows: Vec<DataSampleRow> = data_samples::table
        .filter(data_samples::key.eq_any(&keys))
        .order(data_samples::key)
        .select(DataSampleRow::as_select())
        .load(&mut conn)
        .await?;
    let links: Vec<(Uuid, Uuid)> = dataset_samples::table
        .filter(dataset_samples::data_sample_key.eq_any(&keys))
        .order(dataset_samples::position)
        .select((
            dataset_samples::data_sample_key,
            dataset_samples::dataset_key,
        ))
        .load(&mut conn)
        .await?;
    let mut managers_of: std::collections::HashMap<Uuid, Vec<Uuid>> =
        std::collections::HashMap::new();
    for (sample, dataset) in links {
        managers_of.entry(sample).or_default().push(dataset);
    }
    Ok(rows
        .into_iter()
        .map(|row| {
            let managers = managers_of.remove(&row.key).unwrap_or_default();
            row.into_model(managers)
        })
        .collect())
}

/// Registers `schedule`.
pub async fn insert_schedule(conn: &mut AsyncPgConnection, schedule: &Schedule) -> StoreResult<()> {
    diesel::insert_into(schedules::table)
        .values(ScheduleRow::from_model(schedule))
        .execute(conn)
        .await?;
    Ok(())
}

/// The schedule `identifier` of `project`.
pub async fn find_schedule(
    conn: &mut AsyncPgConnection,
    project: &ProjectId,
    identifier: &ScheduleId,
) -> StoreResult<Option<Schedule>> {
    schedules::table
        .find((project.as_str(), identifier.as_str()))
        .select(ScheduleRow::as_select())
        .first(conn)
        .await
        .optional()?
        .map(ScheduleRow::into_model)
        .transpose()
}
