//! Registration of what plans reference: organizations, projects, functions, datasets and data
//! samples, validated and stored in one transaction each.

use std::collections::HashSet;

use diesel_async::{AsyncConnection, AsyncPgConnection};

use models::submission::{NewDataSamples, NewDataset, NewFunction, NewOrganization, NewProject};
use models::validation::{ValidationError, validate_dataset, validate_function};
use models::wire::ErrorDetail;
use models::{
    DataSample, Dataset, Function, Organization, OrganizationId, Permission, Permissions, Project,
    Timestamp, UserId,
};

use crate::store::{StoreError, catalog};

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The input breaks the rules; nothing was stored.
    #[error("invalid: {0:?}")]
    Invalid(Vec<ErrorDetail>),
    /// Something with the same key exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The database failed; nothing was stored.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for RegistrationError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Duplicate { message, .. } => RegistrationError::AlreadyExists(message),
            StoreError::DanglingReference { message, .. }
            | StoreError::CheckFailed { message, .. }
            | StoreError::MissingValue { message } => {
                RegistrationError::Invalid(vec![ErrorDetail {
                    path: String::new(),
                    message,
                }])
            }
            other => RegistrationError::Store(other),
        }
    }
}

fn invalid(errors: Vec<ValidationError>) -> RegistrationError {
    RegistrationError::Invalid(errors.iter().map(ErrorDetail::from).collect())
}

fn detail(path: &str, message: String) -> ErrorDetail {
    ErrorDetail {
        path: path.to_owned(),
        message,
    }
}

fn normalized(owner: &OrganizationId, permission: &Permission) -> Permission {
    Permission::new(owner, permission.public, permission.authorized_ids.clone())
}

/// Registers an organization.
pub async fn register_organization(
    conn: &mut AsyncPgConnection,
    new: &NewOrganization,
    now: Timestamp,
) -> Result<Organization, RegistrationError> {
    if new.id.as_str().is_empty() || new.id.as_str().chars().count() > 100 {
        return Err(RegistrationError::Invalid(vec![detail(
            "id",
            "must be 1 to 100 characters".to_owned(),
        )]));
    }
    let organization = Organization {
        id: new.id.clone(),
        address: new.address.clone(),
        is_current: false,
        creation_date: now,
    };
    catalog::insert_organization(conn, &organization).await?;
    Ok(organization)
}

/// Registers a project.
pub async fn register_project(
    conn: &mut AsyncPgConnection,
    new: &NewProject,
    now: Timestamp,
) -> Result<Project, RegistrationError> {
    let mut problems = Vec::new();
    if new.identifier.as_str().is_empty() || new.identifier.as_str().chars().count() > 100 {
        problems.push(detail(
            "identifier",
            "must be 1 to 100 characters".to_owned(),
        ));
    }
    if new.display_name.is_empty() {
        problems.push(detail("display_name", "must not be empty".to_owned()));
    }
    if !problems.is_empty() {
        return Err(RegistrationError::Invalid(problems));
    }
    let project = Project {
        identifier: new.identifier.clone(),
        display_name: new.display_name.clone(),
        services: new.services.clone(),
        creation_date: now,
        update_date: now,
    };
    catalog::insert_project(conn, &project).await?;
    Ok(project)
}

/// Registers a function owned by `owner`. Functions with build steps are refused until builds
/// are dispatched to workers (the dispatcher issue's function builds).
pub async fn register_function(
    conn: &mut AsyncPgConnection,
    new: &NewFunction,
    owner: &OrganizationId,
    creator: Option<&UserId>,
    now: Timestamp,
) -> Result<Function, RegistrationError> {
    validate_function(new).map_err(invalid)?;
    let function = Function {
        key: new.key,
        name: new.name.clone(),
        display_name: new.display_name.clone(),
        summary: new.summary.clone(),
        owner: owner.clone(),
        creator: creator.cloned(),
        project: new.project.clone(),
        permissions: Permissions::new(normalized(owner, &new.permissions.process)),
        metadata: new.metadata.clone(),
        description: new.description.clone(),
        archive: new.archive.clone(),
        image: None,
        inputs: new.inputs.clone(),
        outputs: new.outputs.clone(),
        steps: new.steps.clone(),
        build_steps: new.build_steps.clone(),
        parameters: new.parameters.clone(),
        parameter_schema: new.parameter_schema.clone(),
        workspace: new.workspace.clone(),
        kind: new.kind.clone(),
        requirements: new.requirements.clone(),
        retry: new.retry.clone(),
        timeout_secs: new.timeout_secs,
        is_enabled: true,
        status: Function::initial_status(&new.build_steps),
        data: new.data.clone(),
        creation_date: now,
        update_date: now,
    };
    catalog::insert_function(conn, &function).await?;
    Ok(function)
}

/// Registers a dataset owned by `owner`.
pub async fn register_dataset(
    conn: &mut AsyncPgConnection,
    new: &NewDataset,
    owner: &OrganizationId,
    now: Timestamp,
) -> Result<Dataset, RegistrationError> {
    validate_dataset(new).map_err(invalid)?;
    let dataset = Dataset {
        key: new.key,
        name: new.name.clone(),
        owner: owner.clone(),
        permissions: Permissions::new(normalized(owner, &new.permissions.process)),
        data_type: new.data_type.clone(),
        data_sample_keys: Vec::new(),
        opener: new.opener.clone(),
        description: new.description.clone(),
        metadata: new.metadata.clone(),
        logs_permission: normalized(owner, &new.logs_permission),
        creation_date: now,
    };
    catalog::insert_dataset(conn, &dataset).await?;
    Ok(dataset)
}

/// Registers data samples owned by `owner`, in one transaction. Only the owner of a data manager
/// may attach samples to it (Substra).
pub async fn register_data_samples(
    conn: &mut AsyncPgConnection,
    new: &NewDataSamples,
    owner: &OrganizationId,
    now: Timestamp,
) -> Result<Vec<DataSample>, RegistrationError> {
    let mut problems = Vec::new();
    if new.samples.is_empty() {
        problems.push(detail("samples", "no sample to register".to_owned()));
    }
    let mut seen = HashSet::new();
    for (index, sample) in new.samples.iter().enumerate() {
        if !seen.insert(sample.key) {
            problems.push(detail(
                &format!("samples[{index}].key"),
                format!("sample {} is given twice", sample.key),
            ));
        }
        if sample.data_manager_keys.is_empty() {
            problems.push(detail(
                &format!("samples[{index}].data_manager_keys"),
                "a sample belongs to at least one data manager".to_owned(),
            ));
        }
        for (position, manager) in sample.data_manager_keys.iter().enumerate() {
            let path = format!("samples[{index}].data_manager_keys[{position}]");
            match catalog::find_dataset(conn, *manager).await? {
                None => problems.push(detail(&path, format!("data manager {manager} not found"))),
                Some(dataset) if &dataset.owner != owner => problems.push(detail(
                    &path,
                    format!(
                        "only {} may attach samples to data manager {manager}",
                        dataset.owner
                    ),
                )),
                Some(_) => {}
            }
        }
    }
    if !problems.is_empty() {
        return Err(RegistrationError::Invalid(problems));
    }
    let samples: Vec<DataSample> = new
        .samples
        .iter()
        .map(|sample| DataSample {
            key: sample.key,
            owner: owner.clone(),
            data_manager_keys: sample.data_manager_keys.clone(),
            path: sample.path.clone(),
            creation_date: now,
        })
        .collect();
    let stored = samples.clone();
    conn.transaction(async |conn| catalog::insert_data_samples(conn, &stored).await)
        .await?;
    Ok(samples)
}
