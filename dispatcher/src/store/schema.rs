//! diesel's description of the tables in `migrations/`. Written to match the SQL exactly; the
//! round-trip tests in `tests/it/store.rs` fail if the two drift apart.

diesel::table! {
    organizations (id) {
        id -> Text,
        address -> Nullable<Text>,
        creation_date -> Timestamptz,
    }
}

diesel::table! {
    users (identifier) {
        identifier -> Text,
        display_name -> Text,
        organization -> Text,
        roles -> Array<Text>,
        is_enabled -> Bool,
        creation_date -> Timestamptz,
        update_date -> Timestamptz,
    }
}

diesel::table! {
    credentials (identifier) {
        identifier -> Uuid,
        user_identifier -> Text,
        #[sql_name = "type"]
        kind -> Text,
        hash_function -> Text,
        hash_function_parameters -> Jsonb,
        hash_function_salt -> Nullable<Text>,
        secret -> Text,
        description -> Nullable<Text>,
        expiration_date -> Nullable<Timestamptz>,
        revocation_date -> Nullable<Timestamptz>,
        creation_date -> Timestamptz,
        update_date -> Timestamptz,
    }
}

diesel::table! {
    projects (identifier) {
        identifier -> Text,
        display_name -> Text,
        services -> Jsonb,
        creation_date -> Timestamptz,
        update_date -> Timestamptz,
    }
}

diesel::table! {
    functions (key) {
        key -> Uuid,
        name -> Text,
        display_name -> Nullable<Text>,
        summary -> Nullable<Text>,
        owner -> Text,
        creator -> Nullable<Text>,
        project -> Nullable<Text>,
        permissions -> Jsonb,
        metadata -> Jsonb,
        description -> Nullable<Jsonb>,
        archive -> Nullable<Jsonb>,
        image -> Nullable<Jsonb>,
        inputs -> Jsonb,
        outputs -> Jsonb,
        steps -> Jsonb,
        build_steps -> Jsonb,
        parameters -> Jsonb,
        parameter_schema -> Nullable<Jsonb>,
        workspace -> Nullable<Text>,
        kind -> Nullable<Text>,
        requirements -> Jsonb,
        retry -> Jsonb,
        timeout_secs -> Nullable<Int8>,
        is_enabled -> Bool,
        status -> Text,
        data -> Jsonb,
        creation_date -> Timestamptz,
        update_date -> Timestamptz,
        build_attempt -> Int4,
        build_token -> Nullable<Uuid>,
        build_worker -> Nullable<Text>,
        build_lease_expires_at -> Nullable<Timestamptz>,
        build_published_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    datasets (key) {
        key -> Uuid,
        name -> Text,
        owner -> Text,
        permissions -> Jsonb,
        data_type -> Text,
        opener -> Jsonb,
        description -> Jsonb,
        metadata -> Jsonb,
        logs_permission -> Jsonb,
        creation_date -> Timestamptz,
    }
}

diesel::table! {
    data_samples (key) {
        key -> Uuid,
        owner -> Text,
        path -> Nullable<Text>,
        creation_date -> Timestamptz,
    }
}

diesel::table! {
    dataset_samples (dataset_key, data_sample_key) {
        dataset_key -> Uuid,
        data_sample_key -> Uuid,
        position -> Int8,
    }
}

diesel::table! {
    compute_plans (key) {
        key -> Uuid,
        project -> Nullable<Text>,
        name -> Text,
        tag -> Text,
        owner -> Text,
        creator -> Nullable<Text>,
        metadata -> Jsonb,
        task_count -> Int4,
        waiting_count -> Int4,
        todo_count -> Int4,
        doing_count -> Int4,
        done_count -> Int4,
        failed_count -> Int4,
        canceled_count -> Int4,
        status -> Text,
        failed_task_key -> Nullable<Uuid>,
        creation_date -> Timestamptz,
        start_date -> Nullable<Timestamptz>,
        end_date -> Nullable<Timestamptz>,
        failure_date -> Nullable<Timestamptz>,
        cancelation_date -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    workers (identifier) {
        identifier -> Text,
        owner -> Text,
        organization -> Text,
        version -> Text,
        display_name -> Text,
        properties -> Jsonb,
        executor_limit -> Int4,
        is_enabled -> Bool,
        is_active -> Bool,
        should_disconnect -> Bool,
        last_heartbeat -> Nullable<Timestamptz>,
        creation_date -> Timestamptz,
        update_date -> Timestamptz,
    }
}

diesel::table! {
    devices (worker, id) {
        worker -> Text,
        id -> Text,
        device_type -> Text,
        input_type -> Nullable<Text>,
        parameter_schema -> Nullable<Jsonb>,
        is_active -> Bool,
        last_seen -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    tasks (key) {
        key -> Uuid,
        compute_plan_key -> Uuid,
        function_key -> Uuid,
        name -> Nullable<Text>,
        owner -> Text,
        worker -> Text,
        creator -> Nullable<Text>,
        source -> Jsonb,
        rank -> Int4,
        tag -> Text,
        metadata -> Jsonb,
        inputs -> Jsonb,
        outputs -> Jsonb,
        parameters -> Jsonb,
        requirements -> Jsonb,
        status -> Text,
        waiting_reason -> Nullable<Text>,
        error_type -> Nullable<Text>,
        error_message -> Nullable<Text>,
        logs_address -> Nullable<Text>,
        logs_permission -> Jsonb,
        cancel_requested -> Bool,
        abort_requested -> Bool,
        attempt_count -> Int4,
        lease_attempt -> Nullable<Int4>,
        lease_token -> Nullable<Uuid>,
        lease_expires_at -> Nullable<Timestamptz>,
        not_before -> Nullable<Timestamptz>,
        worker_id -> Nullable<Text>,
        device_id -> Nullable<Text>,
        input_type -> Nullable<Text>,
        input -> Jsonb,
        output -> Jsonb,
        data -> Jsonb,
        steps -> Jsonb,
        creation_date -> Timestamptz,
        update_date -> Timestamptz,
        start_date -> Nullable<Timestamptz>,
        end_date -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    task_edges (parent_key, child_key) {
        parent_key -> Uuid,
        child_key -> Uuid,
    }
}

diesel::table! {
    task_state_changes (id) {
        id -> Int8,
        task_key -> Uuid,
        timestamp -> Timestamptz,
        status -> Text,
        reason -> Text,
        attempt -> Nullable<Int4>,
    }
}

diesel::table! {
    dispatcher_leadership (id) {
        id -> Int2,
        epoch -> Int8,
        holder -> Text,
        since -> Timestamptz,
    }
}

diesel::table! {
    outbox (id) {
        id -> Int8,
        task_key -> Uuid,
        routing_key -> Text,
        payload -> Jsonb,
        created_at -> Timestamptz,
        available_at -> Nullable<Timestamptz>,
        held -> Bool,
    }
}

diesel::table! {
    submissions (message_id) {
        message_id -> Text,
        compute_plan_key -> Nullable<Uuid>,
        digest -> Text,
        reply -> Jsonb,
        creation_date -> Timestamptz,
    }
}

diesel::table! {
    models (key) {
        key -> Uuid,
        compute_task_key -> Uuid,
        output_identifier -> Text,
        checksum -> Nullable<Text>,
        storage_address -> Nullable<Text>,
        permissions -> Jsonb,
        owner -> Text,
        creation_date -> Timestamptz,
    }
}

diesel::table! {
    performances (compute_task_key, output_identifier) {
        compute_task_key -> Uuid,
        output_identifier -> Text,
        value -> Float8,
        creation_date -> Timestamptz,
    }
}

diesel::table! {
    log_lines (task_key, attempt, seq) {
        task_key -> Uuid,
        attempt -> Int4,
        seq -> Int8,
        step -> Nullable<Int4>,
        stream -> Text,
        timestamp -> Timestamptz,
        text -> Text,
        truncated -> Bool,
    }
}

diesel::table! {
    measurements (id) {
        id -> Int8,
        task_key -> Uuid,
        attempt -> Int4,
        channel -> Text,
        t -> Float8,
        value -> Float8,
        timestamp -> Timestamptz,
    }
}

diesel::table! {
    schedules (project, identifier) {
        project -> Text,
        identifier -> Text,
        display_name -> Text,
        function_key -> Uuid,
        parameters -> Jsonb,
        expression -> Text,
        timezone -> Text,
        is_enabled -> Bool,
        last_run -> Nullable<Uuid>,
        last_fire_date -> Nullable<Timestamptz>,
        creation_date -> Timestamptz,
        update_date -> Timestamptz,
    }
}

diesel::joinable!(users -> organizations (organization));
diesel::joinable!(credentials -> users (user_identifier));
diesel::joinable!(functions -> organizations (owner));
diesel::joinable!(datasets -> organizations (owner));
diesel::joinable!(data_samples -> organizations (owner));
diesel::joinable!(dataset_samples -> datasets (dataset_key));
diesel::joinable!(dataset_samples -> data_samples (data_sample_key));
diesel::joinable!(tasks -> compute_plans (compute_plan_key));
diesel::joinable!(tasks -> functions (function_key));
diesel::joinable!(task_state_changes -> tasks (task_key));
diesel::joinable!(outbox -> tasks (task_key));
diesel::joinable!(models -> tasks (compute_task_key));
diesel::joinable!(performances -> tasks (compute_task_key));
diesel::joinable!(log_lines -> tasks (task_key));
diesel::joinable!(measurements -> tasks (task_key));
diesel::joinable!(devices -> workers (worker));
diesel::joinable!(schedules -> functions (function_key));

diesel::allow_tables_to_appear_in_same_query!(
    organizations,
    users,
    credentials,
    projects,
    functions,
    datasets,
    data_samples,
    dataset_samples,
    compute_plans,
    workers,
    devices,
    tasks,
    task_edges,
    task_state_changes,
    outbox,
    dispatcher_leadership,
    models,
    performances,
    log_lines,
    measurements,
    schedules,
    submissions,
);
