//! The runbook RPCs: SubmitRunbook, GetRunbook, WatchRunbook. Who may
//! submit and read is checked by the service (`service.rs`).

use std::pin::Pin;
use std::time::Duration;

use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use super::proto;
use super::status::status;
use crate::ErrorKind;
use crate::coord::{
    Change, CoordError, Coordinator, RunbookError, RunbookState, RunbookView, StepEvent,
    StepOutcome, StepRecord, StepState, StepView,
};

/// The WatchRunbook response stream.
pub(super) type RunbookEventStream =
    Pin<Box<dyn Stream<Item = Result<proto::RunbookEvent, Status>> + Send>>;

/// A claim-store error as a status.
pub(super) fn coord_status(e: &CoordError) -> Status {
    match e {
        CoordError::NotFound(id) => super::status::not_found("runbook", id),
        _ => status(e.kind(), e.to_string()),
    }
}

/// SubmitRunbook.
pub(super) async fn submit(
    coordinator: &Coordinator,
    request: proto::SubmitRunbookRequest,
    caller: &str,
) -> Result<proto::SubmitRunbookResponse, Status> {
    if request.runbook.trim().is_empty() {
        return Err(status(ErrorKind::InvalidRequest, "runbook is empty"));
    }
    let file = if request.file_name.is_empty() {
        "<request>"
    } else {
        &request.file_name
    };
    let modules = request.modules.into_iter().collect();
    let id = (!request.id.is_empty()).then_some(request.id.as_str());
    match coordinator
        .submit(&request.runbook, file, &modules, caller, id)
        .await
    {
        Ok((runbook_id, revision)) => Ok(proto::SubmitRunbookResponse {
            runbook_id,
            revision,
        }),
        Err(crate::coord::SubmitError::Store(e)) => Err(coord_status(&e)),
        Err(e @ crate::coord::SubmitError::Runbook(RunbookError::InputTooLarge { .. })) => {
            Err(super::refusal::refuse(
                coordinator.host(),
                "SubmitRunbook",
                caller,
                crate::telemetry::Refusal::InputTooLarge,
                e.kind(),
                e.to_string(),
            ))
        }
        Err(e @ crate::coord::SubmitError::Module(_)) => {
            crate::telemetry::record_overloaded();
            Err(super::refusal::refuse(
                coordinator.host(),
                "SubmitRunbook",
                caller,
                crate::telemetry::Refusal::CompileBusy,
                e.kind(),
                e.to_string(),
            ))
        }
        Err(e) => Err(status(e.kind(), e.to_string())),
    }
}

/// The runbook GetRunbook and WatchRunbook read; the caller checks who
/// may see it.
pub(super) async fn read(coordinator: &Coordinator, id: &str) -> Result<RunbookView, Status> {
    if id.is_empty() {
        return Err(status(ErrorKind::InvalidRequest, "runbook_id is required"));
    }
    coordinator
        .store()
        .runbook(id)
        .await
        .map_err(|e| coord_status(&e))?
        .ok_or_else(|| super::status::not_found("runbook", id))
}

fn step_state(s: StepState) -> proto::StepState {
    match s {
        StepState::Pending => proto::StepState::Pending,
        StepState::Running => proto::StepState::Running,
        StepState::Completed => proto::StepState::Completed,
        StepState::Failed => proto::StepState::Failed,
        StepState::Skipped => proto::StepState::Skipped,
    }
}

fn runbook_state(s: RunbookState) -> proto::RunbookState {
    match s {
        RunbookState::Running => proto::RunbookState::Running,
        RunbookState::Completed => proto::RunbookState::Completed,
        RunbookState::Failed => proto::RunbookState::Failed,
    }
}

/// (output, error kind, error) of a record.
fn record_parts(record: &StepRecord) -> (Vec<u8>, String, String) {
    match &record.outcome {
        StepOutcome::Completed { output } => (output.clone(), String::new(), String::new()),
        StepOutcome::Failed { kind, error } => {
            (Vec::new(), kind.as_str().to_string(), error.clone())
        }
        StepOutcome::Skipped { because } => (
            Vec::new(),
            "skipped".into(),
            format!("dependency `{because}` did not complete"),
        ),
    }
}

fn step_status(name: &str, view: &StepView, depends_on: &[String]) -> proto::StepStatus {
    let mut s = proto::StepStatus {
        name: name.to_string(),
        state: step_state(view.state()) as i32,
        attempts: view.failures,
        depends_on: depends_on.to_vec(),
        ..Default::default()
    };
    if let Some(c) = &view.claim {
        s.host = c.holder.clone();
        s.fence = c.fence;
        s.attempts = c.attempt;
    }
    if let Some(r) = &view.result {
        let (output, kind, error) = record_parts(r);
        s.host = r.host.clone();
        s.fence = r.fence;
        s.attempts = r.attempts;
        s.output = output;
        s.error_kind = kind;
        s.error = error;
        s.run_id = r.run_id.clone();
    }
    s
}

/// A view as a status message.
pub(super) fn to_status(view: &RunbookView) -> proto::RunbookStatus {
    proto::RunbookStatus {
        runbook_id: view.id.clone(),
        name: view.spec.name.clone(),
        state: runbook_state(view.state()) as i32,
        steps: view
            .spec
            .topological_order()
            .into_iter()
            .map(|name| step_status(name, &view.steps[name], &view.spec.steps[name].depends_on))
            .collect(),
        revision: view.revision,
        closed: view.closed,
    }
}

/// A store event as a watch event; `None` for events a client need not see.
fn to_event(event: &StepEvent) -> Option<proto::RunbookEvent> {
    let mut e = proto::RunbookEvent {
        revision: event.revision,
        ..Default::default()
    };
    match &event.change {
        Change::Submitted | Change::Closed => return None,
        Change::Claimed {
            step,
            holder,
            attempt,
            fence,
        } => {
            e.step = step.clone();
            e.state = proto::StepState::Running as i32;
            e.host = holder.clone();
            e.attempt = *attempt;
            e.fence = *fence;
        }
        Change::Unclaimed { step } => {
            e.step = step.clone();
            e.state = proto::StepState::Pending as i32;
            e.error =
                "the claim ended without a result (its host stopped or lost its lease)".into();
        }
        Change::Retrying { step, failures } => {
            e.step = step.clone();
            e.state = proto::StepState::Pending as i32;
            e.attempt = *failures;
            e.error = format!("attempt {failures} failed; the step will be retried");
        }
        Change::Finished { step, record } => {
            let (output, kind, error) = record_parts(record);
            e.step = step.clone();
            e.state = step_state(record.outcome.state()) as i32;
            e.host = record.host.clone();
            e.attempt = record.attempts;
            e.fence = record.fence;
            e.output = output;
            e.error = if kind.is_empty() {
                error
            } else {
                format!("{kind}: {error}")
            };
        }
    }
    Some(e)
}

/// WatchRunbook.
pub(super) async fn watch(
    coordinator: &Coordinator,
    id: &str,
    from_revision: i64,
    interrupt: tokio::sync::watch::Receiver<bool>,
    authorize: impl FnOnce(&RunbookView) -> Result<(), Status>,
) -> Result<RunbookEventStream, Status> {
    if id.is_empty() {
        return Err(status(ErrorKind::InvalidRequest, "runbook_id is required"));
    }
    if from_revision < 0 {
        return Err(status(
            ErrorKind::InvalidRequest,
            "from_revision must not be negative",
        ));
    }
    let view = read(coordinator, id).await?;
    authorize(&view)?;
    let mut snapshot = Vec::new();
    let start = if from_revision == 0 {
        for step in to_status(&view).steps {
            snapshot.push(proto::RunbookEvent {
                revision: view.revision,
                step: step.name,
                state: step.state,
                host: step.host,
                attempt: step.attempts,
                fence: step.fence,
                output: step.output,
                error: step.error,
                runbook_state: 0,
            });
        }
        view.revision + 1
    } else {
        from_revision
    };
    let already_closed = view.closed && from_revision == 0;
    let mut events = if already_closed {
        None
    } else {
        Some(
            coordinator
                .store()
                .watch(id, start)
                .await
                .map_err(|e| coord_status(&e))?,
        )
    };
    let store = coordinator.store().clone();
    let id = id.to_string();
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        for e in snapshot {
            if tx.send(Ok(e)).await.is_err() {
                return;
            }
        }
        // An `Unclaimed` is held briefly: when the same revision also
        // records a result or a retry, the client sees only that.
        let mut held: Option<StepEvent> = None;
        let mut closed = already_closed;
        while let Some(stream) = events.as_mut() {
            let next = if held.is_some() {
                match tokio::time::timeout(Duration::from_millis(50), stream.next()).await {
                    Ok(n) => n,
                    Err(_) => {
                        if let Some(e) = held.take().and_then(|h| to_event(&h))
                            && tx.send(Ok(e)).await.is_err()
                        {
                            return;
                        }
                        continue;
                    }
                }
            } else {
                tokio::select! {
                    n = stream.next() => n,
                    () = stopped(interrupt.clone()) => {
                        let _ = tx.send(Err(status(
                            ErrorKind::Unavailable,
                            "the host is shutting down; watch again from the last revision seen",
                        ))).await;
                        return;
                    }
                }
            };
            let event = match next {
                Some(Ok(e)) => e,
                Some(Err(e)) => {
                    let _ = tx.send(Err(coord_status(&e))).await;
                    return;
                }
                None => return,
            };
            if let Some(h) = held.take() {
                let superseded = h.revision == event.revision
                    && matches!((&h.change, &event.change),
                        (Change::Unclaimed { step: a }, Change::Finished { step: b, .. } | Change::Retrying { step: b, .. }) if a == b);
                if !superseded
                    && let Some(e) = to_event(&h)
                    && tx.send(Ok(e)).await.is_err()
                {
                    return;
                }
            }
            match &event.change {
                Change::Unclaimed { .. } => held = Some(event),
                Change::Closed => {
                    closed = true;
                    break;
                }
                _ => {
                    if let Some(e) = to_event(&event)
                        && tx.send(Ok(e)).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
        if closed {
            let (final_state, revision) = match store.runbook(&id).await {
                Ok(Some(v)) => (runbook_state(v.state()), v.revision),
                _ => (proto::RunbookState::Unspecified, 0),
            };
            let _ = tx
                .send(Ok(proto::RunbookEvent {
                    revision,
                    runbook_state: final_state as i32,
                    ..Default::default()
                }))
                .await;
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// Resolves once the shutdown grace period is over.
async fn stopped(mut interrupt: tokio::sync::watch::Receiver<bool>) {
    if interrupt.wait_for(|stop| *stop).await.is_err() {
        // The server is gone without interrupting: nothing will.
        std::future::pending::<()>().await;
    }
}
