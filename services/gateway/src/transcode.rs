//! REST request → gRPC request message, gRPC response → JSON, following
//! the `google.api.http` rules and the proto3 JSON mapping.
//!
//! A request message is filled in this order, later winning: the body
//! (`body: "*"` the whole message, `body: "field"` that field), then query
//! parameters (every field not bound by the path or the body; repeated
//! fields by repeating the parameter), then path variables. Field names are
//! accepted in lowerCamelCase and as written in the proto.

use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage,
    SerializeOptions, Value,
};

use crate::error::ApiError;
use crate::routes::Route;

/// Resolves a dotted field path (`a.b`), every part but the last a
/// singular message field. Parts may be proto or JSON names.
pub fn field_path(message: &MessageDescriptor, path: &str) -> Result<Vec<FieldDescriptor>, String> {
    let mut fields = Vec::new();
    let mut current = message.clone();
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let field = current
            .get_field_by_name(part)
            .or_else(|| current.get_field_by_json_name(part))
            .ok_or_else(|| format!("`{}` has no field `{part}`", current.name()))?;
        if i + 1 < parts.len() {
            match field.kind() {
                Kind::Message(next) if !field.is_list() && !field.is_map() => current = next,
                _ => return Err(format!("`{part}` is not a message field")),
            }
        }
        fields.push(field);
    }
    Ok(fields)
}

/// Sets the field at `path` from its text form (a path variable or query
/// parameter); a repeated field gets the value appended.
fn set_text(
    message: &mut DynamicMessage,
    path: &[FieldDescriptor],
    text: &str,
    name: &str,
) -> Result<(), ApiError> {
    let Some((leaf, parents)) = path.split_last() else {
        return Ok(());
    };
    let mut target = message;
    for parent in parents {
        let value = target.get_field_mut(parent);
        target = match value {
            Value::Message(m) => m,
            _ => return Err(ApiError::field(name, "is not a message field")),
        };
    }
    if leaf.is_map() {
        return Err(ApiError::field(
            name,
            "a map field cannot be set from the URL; send it in the body",
        ));
    }
    let value = parse_text(leaf, text).map_err(|why| ApiError::field(name, why))?;
    if leaf.is_list() {
        match target.get_field_mut(leaf) {
            Value::List(items) => items.push(value),
            other => *other = Value::List(vec![value]),
        }
    } else {
        target.set_field(leaf, value);
    }
    Ok(())
}

/// A scalar, an enum (by name or number) or a well-known type written as
/// its JSON string (`Timestamp`, `Duration`, wrappers) from text.
fn parse_text(field: &FieldDescriptor, text: &str) -> Result<Value, String> {
    fn number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, String> {
        text.trim()
            .parse::<T>()
            .map_err(|_| format!("`{text}` is not {what}"))
    }
    Ok(match field.kind() {
        Kind::Double => Value::F64(number(text, "a number")?),
        Kind::Float => Value::F32(number(text, "a number")?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(number(text, "a 32-bit integer")?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(number(text, "a 64-bit integer")?)
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32(number(text, "an unsigned 32-bit integer")?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(number(text, "an unsigned 64-bit integer")?),
        Kind::Bool => match text {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => return Err(format!("`{text}` is not true or false")),
        },
        Kind::String => Value::String(text.to_owned()),
        Kind::Bytes => {
            use base64::Engine as _;
            let engines = [
                base64::engine::general_purpose::STANDARD,
                base64::engine::general_purpose::URL_SAFE,
                base64::engine::general_purpose::STANDARD_NO_PAD,
                base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ];
            let bytes = engines
                .iter()
                .find_map(|e| e.decode(text).ok())
                .ok_or_else(|| format!("`{text}` is not base64"))?;
            Value::Bytes(bytes.into())
        }
        Kind::Enum(e) => {
            if let Some(v) = e.get_value_by_name(text) {
                Value::EnumNumber(v.number())
            } else if let Ok(n) = text.parse::<i32>() {
                Value::EnumNumber(n)
            } else {
                let names: Vec<_> = e.values().map(|v| v.name().to_owned()).collect();
                return Err(format!("`{text}` is not one of {}", names.join(", ")));
            }
        }
        Kind::Message(m) => {
            let json = serde_json::Value::String(text.to_owned());
            let message = DynamicMessage::deserialize(m.clone(), json)
                .map_err(|e| format!("`{text}` is not a {}: {e}", m.full_name()))?;
            Value::Message(message)
        }
    })
}

/// Builds the request message of `route` from the path variables, the
/// query string and the body.
pub fn request(
    route: &Route,
    variables: &[(String, String)],
    query: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, ApiError> {
    let input = route.rpc.input();
    let mut message = DynamicMessage::new(input.clone());
    let body_is_empty = body.iter().all(u8::is_ascii_whitespace);
    match route.body.as_str() {
        "" => {
            if !body_is_empty {
                return Err(ApiError::invalid(format!(
                    "{} {} takes no body; send its fields as query parameters",
                    route.method, route.template
                )));
            }
        }
        "*" => {
            if !body_is_empty {
                message = json_message(input.clone(), body, None)?;
            }
        }
        field => {
            let descriptor = input
                .get_field_by_name(field)
                .ok_or_else(|| ApiError::internal(format!("body field `{field}` is unknown")))?;
            if !body_is_empty {
                let value = json_field(&descriptor, body)?;
                message.set_field(&descriptor, value);
            }
        }
    }
    let bound: Vec<&str> = variables.iter().map(|(f, _)| f.as_str()).collect();
    if let Some(query) = query
        && route.body != "*"
    {
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let path = field_path(&input, &key).map_err(|why| ApiError::field(&key, why))?;
            let top = path
                .first()
                .map(|f| f.name().to_owned())
                .unwrap_or_default();
            if bound
                .iter()
                .any(|b| b.split('.').next() == Some(top.as_str()))
                || top == route.body
            {
                return Err(ApiError::field(&key, "is bound by the path or the body"));
            }
            set_text(&mut message, &path, &value, &key)?;
        }
    } else if query.is_some_and(|q| !q.is_empty()) && route.body == "*" {
        // With `body: "*"` every field comes from the body.
        let first = query
            .unwrap_or_default()
            .split(['&', '='])
            .next()
            .unwrap_or_default();
        return Err(ApiError::field(first, "send it in the JSON body"));
    }
    for (field, value) in variables {
        let path = field_path(&input, field).map_err(ApiError::internal)?;
        if let Some(leaf) = path.last()
            && leaf.is_list()
        {
            return Err(ApiError::internal(format!(
                "path variable `{field}` is repeated"
            )));
        }
        set_text(&mut message, &path, value, field)?;
    }
    Ok(message)
}

/// A whole message from JSON; errors name the JSON path at fault.
fn json_message(
    descriptor: MessageDescriptor,
    body: &[u8],
    prefix: Option<&str>,
) -> Result<DynamicMessage, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut track = serde_path_to_error::Track::new();
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let result = DynamicMessage::deserialize_with_options(
        descriptor,
        serde_path_to_error::Deserializer::new(&mut de, &mut track),
        &options,
    )
    .and_then(|m| de.end().map(|()| m));
    result.map_err(|e| {
        let path = track.path().to_string();
        let field = match (prefix, path.as_str()) {
            (Some(p), "." | "") => p.to_owned(),
            (Some(p), rest) => format!("{p}.{rest}"),
            (None, "." | "") => "body".to_owned(),
            (None, rest) => rest.to_owned(),
        };
        ApiError::field(&field, json_reason(&e))
    })
}

/// One field's value from JSON (`body: "field"`).
fn json_field(field: &FieldDescriptor, body: &[u8]) -> Result<Value, ApiError> {
    // Parse as `{"<field>": <body>}` through the containing message, so the
    // field's JSON mapping (lists, maps, well-known types) is the library's.
    let raw: &serde_json::value::RawValue =
        serde_json::from_slice(body).map_err(|e| ApiError::field(field.name(), json_reason(&e)))?;
    let wrapped = format!("{{\"{}\":{}}}", field.name(), raw.get());
    let message = json_message(field.parent_message().clone(), wrapped.as_bytes(), None)?;
    Ok(message.get_field(field).into_owned())
}

/// The reason of a JSON error without serde's position suffix when the
/// body is one line (the field path says where).
fn json_reason(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(i) if error.line() <= 1 => text[..i].to_owned(),
        _ => text,
    }
}

/// The JSON of a response (or of its `response_body` field).
pub fn response_json(route: &Route, message: &DynamicMessage) -> Result<Vec<u8>, ApiError> {
    let options = SerializeOptions::new();
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut out);
    let result = if route.response_body.is_empty() {
        message.serialize_with_options(&mut ser, &options)
    } else {
        let Some(field) = route.rpc.output().get_field_by_name(&route.response_body) else {
            return Err(ApiError::internal("response_body names no field"));
        };
        serialize_value(&field, &message.get_field(&field), &mut ser, &options)
    };
    result.map_err(|e| ApiError::internal(format!("cannot encode the response as JSON: {e}")))?;
    Ok(out)
}

/// Serializes one field's value with the proto3 JSON mapping, by wrapping
/// it in a message holding only that field.
fn serialize_value(
    field: &FieldDescriptor,
    value: &Value,
    ser: &mut serde_json::Serializer<&mut Vec<u8>>,
    options: &SerializeOptions,
) -> Result<(), serde_json::Error> {
    let mut holder = DynamicMessage::new(field.parent_message().clone());
    holder.set_field(field, value.clone());
    let json = holder.serialize_with_options(serde_json::value::Serializer, options)?;
    let inner = json
        .get(field.json_name())
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    serde::Serialize::serialize(&inner, ser)
}

/// The uint64 `sequence` of a streamed message, at the top level or one
/// message down (`WatchTaskResponse.event.sequence`), for SSE `id:`.
pub fn sequence_of(message: &DynamicMessage) -> Option<u64> {
    if let Some(v) = message.get_field_by_name("sequence") {
        return v.as_u64();
    }
    message.fields().find_map(|(_, v)| match v {
        Value::Message(inner) => inner.get_field_by_name("sequence").and_then(|s| s.as_u64()),
        _ => None,
    })
}

/// Sets the request's `after_sequence` (the resume point of a watch), if
/// it has one; false when it does not.
pub fn set_after_sequence(message: &mut DynamicMessage, sequence: u64) -> bool {
    let Some(field) = message.descriptor().get_field_by_name("after_sequence") else {
        return false;
    };
    if !matches!(field.kind(), Kind::Uint64) {
        return false;
    }
    message.set_field(&field, Value::U64(sequence));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(rpc: &str) -> Route {
        let pool = crate::descriptors().unwrap();
        crate::routes::routes(&pool)
            .unwrap()
            .into_iter()
            .find(|r| r.rpc.name() == rpc)
            .unwrap()
    }

    fn violation(error: &ApiError) -> String {
        let pool = crate::descriptors().unwrap();
        error.body(&pool)["details"][0]["fieldViolations"][0]["field"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn query_parameters_fill_the_fields_the_path_does_not() {
        let list = route("ListTasks");
        let message = request(
            &list,
            &[],
            Some("pageSize=5&state=TASK_STATE_RUNNING&team=a%20b"),
            b"",
        )
        .unwrap();
        let json = serde_json::to_value(&message).unwrap();
        assert_eq!(json["pageSize"], 5);
        assert_eq!(json["state"], "TASK_STATE_RUNNING");
        assert_eq!(json["team"], "a b");
        // Proto names are accepted too; enums by number as well.
        let message = request(&list, &[], Some("page_size=7&state=4"), b"").unwrap();
        let json = serde_json::to_value(&message).unwrap();
        assert_eq!(json["pageSize"], 7);
        assert_eq!(json["state"], "TASK_STATE_SUCCEEDED");
    }

    #[test]
    fn bad_query_parameters_are_named() {
        let list = route("ListTasks");
        let error = request(&list, &[], Some("pageSize=lots"), b"").unwrap_err();
        assert_eq!(violation(&error), "pageSize");
        let error = request(&list, &[], Some("nope=1"), b"").unwrap_err();
        assert_eq!(violation(&error), "nope");
        let error = request(&list, &[], Some("state=DONE"), b"").unwrap_err();
        assert!(
            error.status().message().contains("TASK_STATE_SUCCEEDED"),
            "{error:?}"
        );
        let error = request(&list, &[], None, b"{}").unwrap_err();
        assert!(error.status().message().contains("takes no body"));
    }

    #[test]
    fn path_variables_win_over_the_body() {
        let cancel = route("CancelTask");
        let vars = [("task_id".to_owned(), "from-path".to_owned())];
        let message = request(
            &cancel,
            &vars,
            None,
            br#"{"taskId": "from-body", "reason": "r"}"#,
        )
        .unwrap();
        let json = serde_json::to_value(&message).unwrap();
        assert_eq!(json["taskId"], "from-path");
        assert_eq!(json["reason"], "r");
    }

    #[test]
    fn body_errors_name_the_json_path() {
        let submit = route("SubmitTask");
        let error = request(&submit, &[], None, br#"{"retry": {"maxAttempts": "x"}}"#).unwrap_err();
        assert_eq!(violation(&error), "retry.maxAttempts");
        let error = request(&submit, &[], None, br#"{"timeout": "soon"}"#).unwrap_err();
        assert_eq!(violation(&error), "timeout");
        let error = request(&submit, &[], None, br#"{"input": "x"} trailing"#).unwrap_err();
        assert_eq!(error.status().code(), tonic::Code::InvalidArgument);
        let error = request(&submit, &[], Some("input=x"), br#"{}"#).unwrap_err();
        assert_eq!(violation(&error), "input");
        // Both spellings of a field name are accepted in the body.
        let message = request(
            &submit,
            &[],
            None,
            br#"{"session_id": "s", "idempotencyKey": "k"}"#,
        )
        .unwrap();
        let json = serde_json::to_value(&message).unwrap();
        assert_eq!(json["sessionId"], "s");
        assert_eq!(json["idempotencyKey"], "k");
    }

    #[test]
    fn responses_use_the_proto3_json_mapping() {
        let watch = route("WatchTask");
        let mut message = DynamicMessage::new(watch.rpc.output());
        let event = watch.rpc.output().get_field_by_name("event").unwrap();
        let Kind::Message(event_type) = event.kind() else {
            panic!()
        };
        let mut inner = DynamicMessage::new(event_type);
        inner.set_field_by_name("sequence", Value::U64(42));
        inner.set_field_by_name("task_id", Value::String("t".into()));
        message.set_field(&event, Value::Message(inner));
        let json: serde_json::Value =
            serde_json::from_slice(&response_json(&watch, &message).unwrap()).unwrap();
        assert_eq!(json["event"]["sequence"], "42");
        assert_eq!(json["event"]["taskId"], "t");
        assert_eq!(sequence_of(&message), Some(42));
        let mut request = DynamicMessage::new(watch.rpc.input());
        assert!(set_after_sequence(&mut request, 7));
        assert_eq!(
            serde_json::to_value(&request).unwrap()["afterSequence"],
            "7"
        );
    }
}
