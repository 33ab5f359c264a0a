//! The route table: every `google.api.http` rule (and its
//! `additional_bindings`) of the contracts, read from the descriptor set
//! the services serve over reflection. No route is written by hand.

use amaos_proto::google::api::{HttpRule, http_rule::Pattern};
use prost_reflect::{DescriptorPool, MethodDescriptor, Value};

use crate::template::{Template, TemplateError};

/// One REST binding of one RPC.
#[derive(Clone, Debug)]
pub struct Route {
    /// The HTTP method.
    pub method: http::Method,
    /// The path template.
    pub template: Template,
    /// The RPC.
    pub rpc: MethodDescriptor,
    /// `*` (the whole request), a field name, or empty (no body).
    pub body: String,
    /// The response field sent as the body; empty for the whole response.
    pub response_body: String,
    /// Which service (short name, `orchestrator`) serves the RPC.
    pub service: &'static str,
}

impl Route {
    /// The operation id, `Service_Method`, with a suffix for additional
    /// bindings.
    pub fn operation_id(&self, binding: usize) -> String {
        let base = format!("{}_{}", self.rpc.parent_service().name(), self.rpc.name());
        if binding == 0 {
            base
        } else {
            format!("{base}{binding}")
        }
    }
}

/// Why the contracts' rules cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// A template is malformed.
    #[error("{rpc}: {source}")]
    Template {
        /// The RPC.
        rpc: String,
        /// Why.
        source: TemplateError,
    },
    /// A rule names a field the request does not have.
    #[error("{rpc}: {what}")]
    Field {
        /// The RPC.
        rpc: String,
        /// What is wrong.
        what: String,
    },
}

/// The service (short name) behind a fully qualified gRPC service name.
pub fn service_of(full_name: &str) -> Option<&'static str> {
    match full_name {
        "amaos.orchestrator.v1.OrchestratorService" => Some("orchestrator"),
        "amaos.router.v1.RouterService" => Some("router"),
        "amaos.agents.v1.AgentsService" => Some("agents"),
        "amaos.tools.v1.ToolsService" => Some("tools"),
        "amaos.memory.v1.MemoryService" => Some("memory"),
        "amaos.auth.v1.AuthService" => Some("auth"),
        _ => None,
    }
}

/// Every binding of every RPC with an HTTP rule, most specific first.
pub fn routes(pool: &DescriptorPool) -> Result<Vec<Route>, RouteError> {
    let Some(extension) = pool.get_extension_by_name("google.api.http") else {
        return Ok(Vec::new());
    };
    let mut routes = Vec::new();
    for service in pool.services() {
        let Some(short) = service_of(service.full_name()) else {
            continue;
        };
        for rpc in service.methods() {
            let options = rpc.options();
            if !options.has_extension(&extension) {
                continue;
            }
            let Value::Message(rule) = options.get_extension(&extension).into_owned() else {
                continue;
            };
            let rule: HttpRule = rule.transcode_to().map_err(|e| RouteError::Field {
                rpc: rpc.full_name().to_owned(),
                what: format!("unreadable google.api.http rule: {e}"),
            })?;
            let mut bindings = vec![rule.clone()];
            bindings.extend(rule.additional_bindings.iter().cloned());
            for binding in bindings {
                if let Some(route) = route(&rpc, short, &binding)? {
                    routes.push(route);
                }
            }
        }
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.template.specificity()));
    Ok(routes)
}

fn route(
    rpc: &MethodDescriptor,
    service: &'static str,
    rule: &HttpRule,
) -> Result<Option<Route>, RouteError> {
    let (method, path) = match &rule.pattern {
        Some(Pattern::Get(p)) => (http::Method::GET, p),
        Some(Pattern::Put(p)) => (http::Method::PUT, p),
        Some(Pattern::Post(p)) => (http::Method::POST, p),
        Some(Pattern::Delete(p)) => (http::Method::DELETE, p),
        Some(Pattern::Patch(p)) => (http::Method::PATCH, p),
        Some(Pattern::Custom(c)) => match http::Method::from_bytes(c.kind.as_bytes()) {
            Ok(m) => (m, &c.path),
            Err(_) => return Ok(None),
        },
        None => return Ok(None),
    };
    let template = Template::parse(path).map_err(|source| RouteError::Template {
        rpc: rpc.full_name().to_owned(),
        source,
    })?;
    let input = rpc.input();
    let field_error = |what: String| RouteError::Field {
        rpc: rpc.full_name().to_owned(),
        what,
    };
    for variable in template.variables() {
        crate::transcode::field_path(&input, &variable.field)
            .map_err(|e| field_error(format!("path variable: {e}")))?;
    }
    if !rule.body.is_empty() && rule.body != "*" && input.get_field_by_name(&rule.body).is_none() {
        return Err(field_error(format!(
            "body field `{}` does not exist",
            rule.body
        )));
    }
    if !rule.response_body.is_empty()
        && rpc
            .output()
            .get_field_by_name(&rule.response_body)
            .is_none()
    {
        return Err(field_error(format!(
            "response_body field `{}` does not exist",
            rule.response_body
        )));
    }
    Ok(Some(Route {
        method,
        template,
        rpc: rpc.clone(),
        body: rule.body.clone(),
        response_body: rule.response_body.clone(),
        service,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RPC names with a `google.api.http` option in the proto sources.
    fn rules_in_sources() -> Vec<String> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto/amaos");
        let mut names = Vec::new();
        for service in [
            "orchestrator",
            "router",
            "agents",
            "tools",
            "memory",
            "auth",
        ] {
            let text = std::fs::read_to_string(root.join(format!("{service}/v1/{service}.proto")))
                .unwrap();
            for block in text.split("rpc ").skip(1) {
                let end = block.find("\n  rpc ").unwrap_or(block.len());
                if block[..end].contains("google.api.http") {
                    names.push(block.split('(').next().unwrap().trim().to_owned());
                }
            }
        }
        names.sort();
        names
    }

    #[test]
    fn every_rule_in_the_contracts_is_routed() {
        let pool = crate::descriptors().unwrap();
        let routes = routes(&pool).unwrap();
        let mut routed: Vec<String> = routes.iter().map(|r| r.rpc.name().to_owned()).collect();
        routed.sort();
        routed.dedup();
        assert_eq!(routed, rules_in_sources());
        assert!(routed.len() >= 22);
    }

    #[test]
    fn verbs_win_over_a_variable_that_would_swallow_them() {
        let pool = crate::descriptors().unwrap();
        let routes = routes(&pool).unwrap();
        let first = |method: http::Method, path: &str| {
            routes
                .iter()
                .find(|r| r.method == method && r.template.matches(path).is_some())
                .map(|r| r.rpc.name().to_owned())
        };
        assert_eq!(
            first(http::Method::GET, "/v1/tasks/t1:watch").as_deref(),
            Some("WatchTask")
        );
        assert_eq!(
            first(http::Method::GET, "/v1/tasks/t1").as_deref(),
            Some("GetTask")
        );
        assert_eq!(
            first(http::Method::POST, "/v1/tasks/t1:cancel").as_deref(),
            Some("CancelTask")
        );
        assert_eq!(
            first(http::Method::POST, "/v1/teams:validate").as_deref(),
            Some("ValidateTeam")
        );
        assert_eq!(
            first(http::Method::GET, "/v1/teams").as_deref(),
            Some("ListTeams")
        );
    }
}
