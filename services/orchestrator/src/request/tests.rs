use super::*;
use tonic_types::StatusExt;

fn field_of(error: OrchestratorError) -> String {
    let status = tonic::Status::from(error);
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    status
        .get_error_details()
        .bad_request()
        .unwrap()
        .field_violations[0]
        .field
        .clone()
}

fn named(name: &str) -> Option<pb::TeamRef> {
    Some(pb::TeamRef {
        team: Some(pb::team_ref::Team::Name(name.into())),
    })
}

fn submit(adjust: impl FnOnce(&mut pb::SubmitTaskRequest)) -> Result<TaskSubmission, String> {
    let mut request = pb::SubmitTaskRequest {
        team: named("research-crew"),
        input: "queues".into(),
        ..Default::default()
    };
    adjust(&mut request);
    TaskSubmission::try_from(request).map_err(field_of)
}

#[test]
fn a_sound_submission_converts_with_every_field() {
    let got = submit(|r| {
        r.session_id = "s-1".into();
        r.idempotency_key = "k".into();
        r.timeout = Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        });
        r.retry = Some(pb::RetryPolicy {
            max_attempts: 5,
            backoff_multiplier: 3.0,
            ..Default::default()
        });
        r.fallbacks = vec![pb::Fallback {
            target: Some(pb::fallback::Target::ModelAlias("replay".into())),
        }];
        r.labels = [("env".to_owned(), "test".to_owned())].into();
    })
    .unwrap();
    assert_eq!(got.task.team, TeamChoice::Named("research-crew".into()));
    assert_eq!(got.task.input, "queues");
    assert_eq!(got.task.timeout, Some(Duration::from_secs(60)));
    assert_eq!(got.task.fallbacks, [Fallback::Model("replay".into())]);
    assert_eq!(got.session_id, "s-1");
    assert_eq!(got.idempotency_key, "k");
    assert_eq!(got.labels["env"], "test");
    let policy = got.task.retry.apply(RetryPolicy::default());
    assert_eq!(policy.max_attempts, 5);
    assert_eq!(policy.multiplier, 3.0);
    assert_eq!(policy.retry_on, RetryPolicy::default().retry_on);
}

/// A change to a sound request.
type Adjust = Box<dyn FnOnce(&mut pb::SubmitTaskRequest)>;

#[test]
fn each_bad_field_is_named() {
    let cases: Vec<(&str, Adjust)> = vec![
        ("team", Box::new(|r| r.team = None)),
        ("team.name", Box::new(|r| r.team = named("Bad Name"))),
        ("session_id", Box::new(|r| r.session_id = "s".repeat(129))),
        (
            "idempotency_key",
            Box::new(|r| r.idempotency_key = "k".repeat(257)),
        ),
        (
            "labels",
            Box::new(|r| r.labels = [(String::new(), "v".to_owned())].into()),
        ),
        (
            "timeout",
            Box::new(|r| {
                r.timeout = Some(prost_types::Duration {
                    seconds: 25 * 3600,
                    nanos: 0,
                })
            }),
        ),
        (
            "retry.max_attempts",
            Box::new(|r| {
                r.retry = Some(pb::RetryPolicy {
                    max_attempts: 101,
                    ..Default::default()
                })
            }),
        ),
        (
            "retry.backoff_multiplier",
            Box::new(|r| {
                r.retry = Some(pb::RetryPolicy {
                    backoff_multiplier: 0.5,
                    ..Default::default()
                })
            }),
        ),
        (
            "retry.initial_backoff",
            Box::new(|r| {
                r.retry = Some(pb::RetryPolicy {
                    initial_backoff: Some(prost_types::Duration {
                        seconds: 7200,
                        nanos: 0,
                    }),
                    ..Default::default()
                })
            }),
        ),
        (
            "retry.retry_on",
            Box::new(|r| {
                r.retry = Some(pb::RetryPolicy {
                    retry_on: vec![999],
                    ..Default::default()
                })
            }),
        ),
        (
            "fallbacks",
            Box::new(|r| r.fallbacks = vec![pb::Fallback { target: None }]),
        ),
        (
            "fallbacks",
            Box::new(|r| {
                r.fallbacks = vec![
                    pb::Fallback {
                        target: Some(pb::fallback::Target::TeamName("t".into())),
                    };
                    MAX_FALLBACKS + 1
                ]
            }),
        ),
    ];
    for (field, adjust) in cases {
        assert_eq!(submit(adjust).unwrap_err(), field);
    }
}

#[test]
fn an_inline_spec_is_left_to_the_domain_to_parse() {
    let got = submit(|r| {
        r.team = Some(pb::TeamRef {
            team: Some(pb::team_ref::Team::SpecYaml("not: [a spec".into())),
        });
        r.input = String::new();
    })
    .unwrap();
    assert_eq!(got.task.team, TeamChoice::Inline("not: [a spec".into()));
    assert_eq!(got.task.input, "");
}

fn step(key: &str, depends_on: &[&str]) -> pb::WorkflowTask {
    pb::WorkflowTask {
        key: key.into(),
        team: named("research-crew"),
        input: key.into(),
        depends_on: depends_on.iter().map(|d| d.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn a_workflow_converts_step_by_step_and_must_be_a_dag() {
    let got = WorkflowSubmission::try_from(pb::SubmitWorkflowRequest {
        name: "wf".into(),
        tasks: vec![step("a", &[]), step("b", &["a"])],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(got.name, "wf");
    assert_eq!(got.steps[1].key, "b");
    assert_eq!(got.steps[1].depends_on, ["a"]);
    assert_eq!(got.steps[1].task.input, "b");
    let cycle = WorkflowSubmission::try_from(pb::SubmitWorkflowRequest {
        tasks: vec![step("a", &["b"]), step("b", &["a"])],
        ..Default::default()
    });
    assert_eq!(field_of(cycle.unwrap_err()), "tasks");
    let long_name = WorkflowSubmission::try_from(pb::SubmitWorkflowRequest {
        name: "n".repeat(129),
        tasks: vec![step("a", &[])],
        ..Default::default()
    });
    assert_eq!(field_of(long_name.unwrap_err()), "name");
    let mut bad = step("a", &[]);
    bad.team = None;
    let bad_step = WorkflowSubmission::try_from(pb::SubmitWorkflowRequest {
        tasks: vec![bad],
        ..Default::default()
    });
    assert_eq!(field_of(bad_step.unwrap_err()), "team");
}

#[test]
fn a_list_query_has_defaults_and_bounds() {
    let got = ListQuery::try_from(pb::ListTasksRequest::default()).unwrap();
    assert_eq!(
        got,
        ListQuery {
            limit: 100,
            before: None,
            state: None,
            team: None
        }
    );
    let id = amaos_mesh::new_id();
    let got = ListQuery::try_from(pb::ListTasksRequest {
        page_size: 7,
        page_token: id.clone(),
        state: pb::TaskState::Running as i32,
        team: "t".into(),
    })
    .unwrap();
    assert_eq!(got.limit, 7);
    assert_eq!(got.before, Some(id));
    assert_eq!(got.state, Some(TaskState::Running));
    assert_eq!(got.team.as_deref(), Some("t"));
    let too_big = ListQuery::try_from(pb::ListTasksRequest {
        page_size: MAX_PAGE_SIZE + 1,
        ..Default::default()
    });
    assert_eq!(field_of(too_big.unwrap_err()), "page_size");
    let no_state = ListQuery::try_from(pb::ListTasksRequest {
        state: 99,
        ..Default::default()
    });
    assert_eq!(field_of(no_state.unwrap_err()), "state");
}

#[test]
fn a_page_token_is_a_task_id_as_listed() {
    assert_eq!(page_cursor("").unwrap(), None);
    let id = amaos_mesh::new_id();
    assert_eq!(page_cursor(&id).unwrap(), Some(id.as_str()));
    for bad in [
        "garbage",
        "zzzz",
        &id[..id.len() - 1],
        &id.to_uppercase(),
        &id.replace('-', ""),
        &format!("{{{id}}}"),
        &format!("{id} "),
    ] {
        assert_eq!(
            field_of(page_cursor(bad).unwrap_err()),
            "page_token",
            "{bad}"
        );
    }
}
