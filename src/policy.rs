//! Routes (PRODUCT.md §3): which app a request targets, and the rules a route sets on who may
//! pass. Matching is first-match-wins; no match is `no_route` (deny by default). Pure functions
//! of the request's parts: no I/O, no Pingora.

use http::{HeaderMap, HeaderName, Method};

use crate::error::AuthError;
use crate::model::{CredentialKind, Identity};

/// Whether a path is safe to match as it is: no `.` or `..` segment, and no encoded slash,
/// dot or backslash, which an upstream could resolve to a path no route was chosen for.
pub fn is_plain_path(path: &str) -> bool {
    // One pass over the bytes (it runs on every request; six substring searches cost more
    // than the rest of the routing).
    let encoded = |hex: &[u8]| {
        matches!(
            hex,
            [b'2', b'e' | b'E' | b'f' | b'F', ..] | [b'5', b'c' | b'C', ..]
        )
    };
    let bytes = path.as_bytes();
    bytes
        .iter()
        .enumerate()
        .all(|(i, &b)| b != b'\\' && (b != b'%' || !encoded(&bytes[i + 1..])))
        && path.split('/').all(|seg| seg != "." && seg != "..")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    Required,
    Optional,
    None,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    App,
}

/// A path prefix, matched at segment boundaries, where one segment may be `{app}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern {
    segments: Vec<Segment>,
}

impl PathPattern {
    pub fn parse(path: &str) -> Result<Self, String> {
        if !path.starts_with('/') {
            return Err(format!("path {path:?} must start with '/'"));
        }
        let mut segments = Vec::new();
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            if seg == "{app}" {
                if segments.contains(&Segment::App) {
                    return Err(format!("path {path:?} has {{app}} more than once"));
                }
                segments.push(Segment::App);
            } else if seg.contains(['{', '}']) {
                return Err(format!(
                    "path {path:?}: the only placeholder is a whole segment {{app}}"
                ));
            } else {
                segments.push(Segment::Literal(seg.to_owned()));
            }
        }
        Ok(Self { segments })
    }

    pub fn has_app(&self) -> bool {
        self.segments.contains(&Segment::App)
    }

    /// Whether `path` falls under this pattern; `Some(app)` holds the `{app}` segment if any.
    pub fn matches<'p>(&self, path: &'p str) -> Option<Option<&'p str>> {
        let mut parts = path.split('/').filter(|s| !s.is_empty());
        let mut app = None;
        for seg in &self.segments {
            let part = parts.next()?;
            match seg {
                Segment::Literal(lit) if lit == part => {}
                Segment::Literal(_) => return None,
                Segment::App => app = Some(part),
            }
        }
        Some(app)
    }

    /// Whether every path this pattern `other` matches is matched by `self` too.
    fn covers(&self, other: &PathPattern) -> bool {
        self.segments.len() <= other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(a, b)| *a == Segment::App || a == b)
    }
}

/// The credential kinds a route accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindSet {
    pub user_token: bool,
    pub ticket: bool,
    pub session: bool,
}

impl KindSet {
    pub const ALL: Self = Self {
        user_token: true,
        ticket: true,
        session: true,
    };

    pub fn contains(self, kind: CredentialKind) -> bool {
        match kind {
            CredentialKind::UserToken => self.user_token,
            CredentialKind::Ticket => self.ticket,
            CredentialKind::Session => self.session,
        }
    }

    fn is_empty(self) -> bool {
        !(self.user_token || self.ticket || self.session)
    }
}

/// One validated `[[routes]]` entry.
#[derive(Clone, Debug)]
pub struct Route {
    /// The path as written, for logs and problems.
    pub path: String,
    pub pattern: PathPattern,
    pub methods: Option<Vec<Method>>,
    /// Quickbase actions (`?a=` or `QUICKBASE-ACTION`) this route is for, any case.
    pub actions: Option<Vec<String>>,
    /// A fixed app: a sidecar in front of one app.
    pub app: Option<String>,
    /// A header naming the app, e.g. `X-Knack-Application-Id`.
    pub app_header: Option<HeaderName>,
    pub auth: AuthMode,
    pub allow: KindSet,
    /// A user-interface route: user tokens are refused.
    pub ui: bool,
    pub user_types: Option<Vec<String>>,
    pub departments: Option<Vec<String>>,
    pub forward_credentials: bool,
}

/// What a request resolves to on a route.
#[derive(Debug, PartialEq, Eq)]
pub enum AppTarget<'r> {
    /// The route names no app: any valid credential passes, no app scope applies.
    Unscoped,
    App(&'r str),
    /// The route takes the app from a header the request doesn't carry.
    Unnamed,
    /// The header names more than one app.
    Ambiguous,
}

impl Route {
    fn matches_method(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|ms| ms.contains(method))
    }

    fn matches_action(&self, action: Option<&str>) -> bool {
        self.actions.as_ref().is_none_or(|actions| {
            action.is_some_and(|a| actions.iter().any(|x| x.eq_ignore_ascii_case(a)))
        })
    }

    /// The app this request targets on this route.
    pub fn app_target<'r>(
        &'r self,
        path_app: Option<&'r str>,
        headers: &'r HeaderMap,
    ) -> AppTarget<'r> {
        if let Some(app) = path_app {
            return AppTarget::App(app);
        }
        if let Some(app) = &self.app {
            return AppTarget::App(app);
        }
        if let Some(name) = &self.app_header {
            let mut values = headers.get_all(name).iter();
            let first = values.next();
            if values.next().is_some() {
                return AppTarget::Ambiguous;
            }
            return match first.and_then(|v| v.to_str().ok()) {
                Some(app) if !app.trim().is_empty() => AppTarget::App(app.trim()),
                _ => AppTarget::Unnamed,
            };
        }
        AppTarget::Unscoped
    }

    /// Whether this route accepts the kind of credential before it is verified.
    pub fn admits_kind(&self, kind: CredentialKind) -> Result<(), AuthError> {
        if !self.allow.contains(kind) || (self.ui && kind == CredentialKind::UserToken) {
            return Err(AuthError::CredentialNotAllowed);
        }
        Ok(())
    }

    /// The route's rules on who may pass, once the identity is known.
    pub fn admits(&self, identity: &Identity) -> Result<(), AuthError> {
        if let Some(types) = &self.user_types {
            let t = identity.user_type();
            if !types.iter().any(|allowed| Some(allowed.as_str()) == t) {
                return Err(AuthError::Forbidden);
            }
        }
        if let Some(depts) = &self.departments {
            let d = identity.department();
            if !depts.iter().any(|allowed| Some(allowed.as_str()) == d) {
                return Err(AuthError::Forbidden);
            }
        }
        Ok(())
    }
}

/// The routes, in order.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    pub fn new(routes: Vec<Route>) -> Self {
        Self { routes }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// The first route that matches (its index and itself), with the `{app}` segment if its
    /// pattern has one.
    /// `action` is the request's Quickbase action, if it names one.
    pub fn find<'r, 'p>(
        &'r self,
        method: &Method,
        path: &'p str,
        action: Option<&str>,
    ) -> Option<(usize, &'r Route, Option<&'p str>)> {
        self.routes.iter().enumerate().find_map(|(i, r)| {
            if !r.matches_method(method) || !r.matches_action(action) {
                return None;
            }
            r.pattern.matches(path).map(|app| (i, r, app))
        })
    }

    pub fn get(&self, index: usize) -> Option<&Route> {
        self.routes.get(index)
    }

    /// Problems with the routes as a whole: routes that can never match or never admit.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (i, later) in self.routes.iter().enumerate() {
            if later.auth != AuthMode::None && later.allow.is_empty() {
                problems.push(format!(
                    "routes[{i}] ({}): allow is empty, so nothing can pass",
                    later.path
                ));
            }
            let shadow = self.routes[..i].iter().position(|earlier| {
                earlier.pattern.covers(&later.pattern)
                    && match (&earlier.methods, &later.methods) {
                        (None, _) => true,
                        (Some(_), None) => false,
                        (Some(e), Some(l)) => l.iter().all(|m| e.contains(m)),
                    }
                    && match (&earlier.actions, &later.actions) {
                        (None, _) => true,
                        (Some(_), None) => false,
                        (Some(e), Some(l)) => l
                            .iter()
                            .all(|a| e.iter().any(|x| x.eq_ignore_ascii_case(a))),
                    }
            });
            if let Some(j) = shadow {
                problems.push(format!(
                    "routes[{i}] ({}) can never match: routes[{j}] ({}) matches everything it would",
                    later.path, self.routes[j].path
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str) -> Route {
        Route {
            path: path.into(),
            pattern: PathPattern::parse(path).unwrap(),
            methods: None,
            actions: None,
            app: None,
            app_header: None,
            auth: AuthMode::Required,
            allow: KindSet::ALL,
            ui: false,
            user_types: None,
            departments: None,
            forward_credentials: false,
        }
    }

    #[test]
    fn dot_segments_and_encoded_separators_are_not_plain() {
        assert!(is_plain_path("/db/bq1/records"));
        assert!(is_plain_path("/db/bq1.v2/x"));
        assert!(
            is_plain_path("/100%"),
            "a bare percent sign encodes nothing"
        );
        assert!(is_plain_path("/a%2"));
        assert!(is_plain_path("/a%20b%41"));
        for bad in [
            "/public/../admin",
            "/db/bq1/..",
            "/./x",
            "/a/%2e%2e/b",
            "/a%2Fb",
            "/a\\b",
            "/a%5cb",
            "/a%5C",
            "/%2E/x",
        ] {
            assert!(!is_plain_path(bad), "{bad}");
        }
    }

    #[test]
    fn patterns_match_at_segment_boundaries() {
        let p = PathPattern::parse("/db/{app}").unwrap();
        assert_eq!(p.matches("/db/bq1"), Some(Some("bq1")));
        assert_eq!(p.matches("/db/bq1/records"), Some(Some("bq1")));
        assert_eq!(p.matches("/db"), None);
        assert_eq!(p.matches("/dbx/bq1"), None);
        let p = PathPattern::parse("/api").unwrap();
        assert_eq!(p.matches("/api/v1"), Some(None));
        assert_eq!(p.matches("/apix"), None);
        assert_eq!(
            PathPattern::parse("/").unwrap().matches("/anything"),
            Some(None)
        );
        assert!(PathPattern::parse("db").is_err());
        assert!(PathPattern::parse("/x{app}").is_err());
    }

    #[test]
    fn first_match_wins_and_methods_filter() {
        let mut post = route("/db/main");
        post.methods = Some(vec![Method::POST]);
        let routes = Routes::new(vec![post, route("/db/{app}")]);
        let (_, r, app) = routes.find(&Method::POST, "/db/main", None).unwrap();
        assert_eq!((r.path.as_str(), app), ("/db/main", None));
        let (_, r, app) = routes.find(&Method::GET, "/db/main", None).unwrap();
        assert_eq!((r.path.as_str(), app), ("/db/{app}", Some("main")));
        assert!(routes.find(&Method::GET, "/elsewhere", None).is_none());
        assert!(routes.problems().is_empty());
    }

    #[test]
    fn shadowed_routes_are_problems() {
        let routes = Routes::new(vec![route("/db"), route("/db/{app}")]);
        assert_eq!(routes.problems().len(), 1);
        let routes = Routes::new(vec![route("/db/{app}"), route("/db/main")]);
        assert_eq!(routes.problems().len(), 1);
        let routes = Routes::new(vec![route("/db/main"), route("/db/{app}")]);
        assert!(routes.problems().is_empty());
    }

    #[test]
    fn app_comes_from_path_then_fixed_then_header() {
        let mut r = route("/views");
        r.app_header = Some(HeaderName::from_static("x-knack-application-id"));
        let mut h = HeaderMap::new();
        assert_eq!(r.app_target(None, &h), AppTarget::Unnamed);
        h.insert("x-knack-application-id", "k1".parse().unwrap());
        assert_eq!(r.app_target(None, &h), AppTarget::App("k1"));
        r.app = Some("fixed".into());
        assert_eq!(r.app_target(None, &h), AppTarget::App("fixed"));
        assert_eq!(r.app_target(Some("p"), &h), AppTarget::App("p"));
        assert_eq!(route("/x").app_target(None, &h), AppTarget::Unscoped);
    }
}
