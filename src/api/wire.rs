//! The API on the control socket: one JSON request line, one JSON answer line. A request
//! is [`Request`](super::Request)'s JSON; an answer is the [`Outcome`]'s JSON, or
//! `{"result":"error","message":<the error's text>,"kind":...}` with the [`ApiError`]'s
//! fields beside `kind`. Agents and CLIs before `kind` existed read only `result` and
//! `message` (unknown fields are ignored), and their error lines decode here as
//! [`ApiError::Refused`].

use serde::{Deserialize, Serialize};

use super::{ApiError, Outcome};

/// An error line as written.
#[derive(Serialize)]
struct ErrorOut<'a> {
    result: &'static str,
    message: String,
    #[serde(flatten)]
    error: Option<&'a ApiError>,
}

/// An error line as read: only `message` is required.
#[derive(Deserialize)]
struct ErrorIn {
    message: String,
}

/// One answer line, without its newline.
pub fn encode(reply: &Result<Outcome, ApiError>) -> String {
    match reply {
        Ok(outcome) => serde_json::to_string(outcome),
        Err(e) => serde_json::to_string(&ErrorOut {
            result: "error",
            message: e.to_string(),
            // A refusal known only by its message has nothing but the message to say.
            error: (!matches!(e, ApiError::Refused { .. })).then_some(e),
        }),
    }
    .expect("answers serialize")
}

/// Reads one answer line; the outer error is an answer that is not one.
pub fn decode(line: &str) -> Result<Result<Outcome, ApiError>, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_str(line)?;
    if value.get("result").and_then(serde_json::Value::as_str) != Some("error") {
        return Outcome::deserialize(value).map(Ok);
    }
    let typed = value.get("kind").and_then(|_| ApiError::deserialize(&value).ok());
    let ErrorIn { message } = ErrorIn::deserialize(value)?;
    Ok(Err(typed.unwrap_or(ApiError::Refused { message })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Request;
    use crate::decide::core::VolumeError;

    #[test]
    fn requests_are_the_lines_of_the_previous_version() {
        assert_eq!(serde_json::to_string(&Request::Status).unwrap(), r#"{"op":"status"}"#);
        assert_eq!(
            serde_json::to_string(&Request::Plan { node: "n1".parse().unwrap() }).unwrap(),
            r#"{"op":"plan","node":"n1"}"#
        );
        let old = r#"{"op":"node_action","node":"node2","action":"drain"}"#;
        let Request::NodeAction { node, force, .. } = serde_json::from_str(old).unwrap() else { panic!("{old}") };
        assert_eq!((node.as_str(), force), ("node2", false));
    }

    #[test]
    fn errors_keep_their_message_line_and_add_their_kind() {
        let gone = encode(&Err(ApiError::ShuttingDown));
        assert_eq!(gone, r#"{"result":"error","message":"the agent is shutting down","kind":"shutting_down"}"#);
        let unknown = ApiError::UnknownNode {
            node: "nodex".parse().unwrap(),
            known: vec!["a".parse().unwrap(), "b".parse().unwrap()],
        };
        let line = encode(&Err(unknown.clone()));
        assert_eq!(
            line,
            r#"{"result":"error","message":"no node named \"nodex\" in the fleet (known: a, b); pass --force to publish the request anyway","kind":"unknown_node","node":"nodex","known":["a","b"]}"#
        );
        assert_eq!(decode(&line).unwrap(), Err(unknown));
        let exists: ApiError = VolumeError::ExistsElsewhere("db".parse().unwrap(), "n2".parse().unwrap()).into();
        let line = encode(&Err(exists.clone()));
        assert_eq!(
            line,
            r#"{"result":"error","message":"volume db already exists on node n2; volume ids are fleet-wide","kind":"volume","refusal":{"exists_elsewhere":["db","n2"]}}"#
        );
        assert_eq!(decode(&line).unwrap(), Err(exists));
    }

    #[test]
    fn node_lost_requests_and_refusals_on_the_wire() {
        let req =
            Request::NodeLost { node: "n2".parse().unwrap(), force: false, accept_data_loss: true, dry_run: false };
        let line = serde_json::to_string(&req).unwrap();
        assert_eq!(line, r#"{"op":"node_lost","node":"n2","force":false,"accept_data_loss":true,"dry_run":false}"#);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"node_lost","node":"n2"}"#).unwrap(),
            Request::NodeLost { node: "n2".parse().unwrap(), force: false, accept_data_loss: false, dry_run: false }
        );
        let alive: ApiError = crate::decide::core::LostError::Alive("n2".parse().unwrap()).into();
        let line = encode(&Err(alive.clone()));
        assert_eq!(
            line,
            r#"{"result":"error","message":"node n2 is alive in gossip: a live node is not lost. Stop its agent (or wait for the failure detector), or pass --force if it is cut off for good","kind":"lost","refusal":{"alive":"n2"}}"#
        );
        assert_eq!(decode(&line).unwrap(), Err(alive));
        let partial =
            Request::Partial { volume: "db".parse().unwrap(), verdict: crate::decide::core::PartialVerdict::Accept };
        assert_eq!(serde_json::to_string(&partial).unwrap(), r#"{"op":"partial","volume":"db","verdict":"accept"}"#);
    }

    #[test]
    fn an_error_line_without_kind_is_refused_with_its_message() {
        let old = r#"{"result":"error","message":"something new went wrong"}"#;
        let refused = ApiError::Refused { message: "something new went wrong".into() };
        assert_eq!(decode(old).unwrap(), Err(refused.clone()));
        assert_eq!(encode(&Err(refused)), old);
        let unknown_kind = r#"{"result":"error","message":"later","kind":"from_the_future","x":1}"#;
        assert_eq!(decode(unknown_kind).unwrap(), Err(ApiError::Refused { message: "later".into() }));
    }

    #[test]
    fn outcomes_are_the_lines_of_the_previous_version() {
        let done = Ok(Outcome::Done { message: "handed-off copies deleted".into() });
        assert_eq!(encode(&done), r#"{"result":"ok","message":"handed-off copies deleted"}"#);
        assert_eq!(decode(&encode(&done)).unwrap(), done);
        let plan = r#"{"result":"plan","plan":[{"volume":"db","size":4,"target":null,"rejected":[["b","cordoned"]]}]}"#;
        assert_eq!(encode(&decode(plan).unwrap()), plan);
        assert!(decode(r#"{"result":"status"}"#).is_err(), "a status without its fields is not an answer");
    }
}
