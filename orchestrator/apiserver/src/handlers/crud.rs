//! get, list, create, update, patch, delete, deletecollection — for every resource.

use serde_json::{Value, json};
use trellis_api::ResourceInfo;
use trellis_api::resources::Subresource;

use super::{Api, Call, Reply, list_of, parse_body};
use crate::kinds;
use crate::meta;
use crate::status::{ApiError, Cause};
use crate::storage::{ListAt, Stored};
use crate::table;

/// How many times a write retries after losing a compare-and-swap race (only when the client
/// gave no resourceVersion: with one, losing is the client's 409).
const WRITE_ATTEMPTS: usize = 16;

/// Options of a DELETE (body `DeleteOptions`, or query parameters).
#[derive(Debug, Default, Clone)]
pub struct DeleteOptions {
    pub grace: Option<i64>,
    pub propagation: Option<String>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

/// A second version of a resource served over the stored one: how a stored object looks in
/// it, and how an object of it is stored.
#[derive(Clone, Copy)]
pub(super) struct View {
    pub to_client: fn(&Value) -> Value,
    pub to_storage: fn(&Value) -> Result<Value, ApiError>,
}

impl Api {
    pub(super) async fn get(
        &self,
        info: &ResourceInfo,
        call: &Call<'_>,
    ) -> Result<Reply, ApiError> {
        let r = &call.req;
        let name = r.name.as_deref().unwrap_or_default();
        let stored = self
            .storage
            .require(info, r.namespace.as_deref(), name)
            .await?;
        if call.wants_table() {
            return Ok(Reply::ok(table::table(
                &self.registry.printer(info),
                &[stored.obj],
                stored.revision,
                None,
                call.q("includeObject"),
            )));
        }
        Ok(Reply::ok(stored.obj))
    }

    pub(super) async fn list(
        &self,
        info: &ResourceInfo,
        call: &Call<'_>,
    ) -> Result<Reply, ApiError> {
        let filter = selectors(info, call)?;
        let at = match (call.q("resourceVersion"), call.q("resourceVersionMatch")) {
            (Some(rv), Some("Exact")) => ListAt::Exact(parse_rv(rv)?),
            (Some(rv), _) if rv != "0" => {
                // NotOlderThan: the current state is never older than what the client saw.
                parse_rv(rv)?;
                ListAt::Latest
            }
            _ => ListAt::Latest,
        };
        let limit = match call.q("limit") {
            Some(l) => l
                .parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
            None => 0,
        };
        let page = self
            .storage
            .list(
                info,
                call.req.namespace.as_deref(),
                at,
                limit,
                call.q("continue"),
                &filter,
            )
            .await?;
        if call.wants_table() {
            return Ok(Reply::ok(table::table(
                &self.registry.printer(info),
                &page.items,
                page.revision,
                page.continue_token,
                call.q("includeObject"),
            )));
        }
        Ok(Reply::ok(list_of(
            info,
            page.items,
            page.revision,
            page.continue_token,
        )))
    }

    pub(super) async fn create(
        &self,
        info: &ResourceInfo,
        call: &Call<'_>,
    ) -> Result<Reply, ApiError> {
        let mut obj = parse_body(call.content_type, call.body)?;
        check_type_meta(info, &obj)?;
        let ns = call.req.namespace.clone();
        if info.namespaced {
            let Some(ns) = ns.as_deref() else {
                return Err(ApiError::bad_request(format!(
                    "{} must be created in a namespace",
                    info.plural
                )));
            };
            match meta::namespace(&obj) {
                Some(body_ns) if body_ns != ns => {
                    return Err(ApiError::bad_request(format!(
                        "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({ns})"
                    )));
                }
                _ => {}
            }
            self.require_namespace_open(ns).await?;
        }
        let name = match (meta::name(&obj), meta::meta_str(&obj, "generateName")) {
            (Some(n), _) => n.to_string(),
            (None, Some(prefix)) if !prefix.is_empty() => trellis_api::names::generate_name(prefix),
            _ => {
                return Err(ApiError::invalid(
                    &info.group,
                    &info.kind,
                    "",
                    vec![Cause::required("metadata.name")],
                ));
            }
        };
        if let Err(why) = trellis_api::names::validate_name(&info.group, &info.kind, &name)
            .map_err(|e| e.to_string())
        {
            return Err(ApiError::invalid(
                &info.group,
                &info.kind,
                &name,
                vec![Cause::invalid("metadata.name", &name, why)],
            ));
        }
        set_type_meta(info, &mut obj);
        {
            let m = meta::meta_mut(&mut obj);
            m.insert("name".into(), json!(name));
            match &ns {
                Some(ns) if info.namespaced => {
                    m.insert("namespace".into(), json!(ns));
                }
                _ => {
                    m.remove("namespace");
                }
            }
            for k in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "managedFields",
                "selfLink",
            ] {
                m.remove(k);
            }
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(meta::now()));
            m.insert("generation".into(), json!(1));
        }
        if info.has(Subresource::Status)
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        kinds::create_defaults(info, &mut obj);
        if !info.custom && info.group.is_empty() && info.kind == "Pod" {
            kinds::default_tolerations(&mut obj, self.default_toleration_seconds);
        }
        let warnings = self.admit(info, &mut obj, None, call)?;
        if call.dry_run() {
            return Ok(Reply::Json {
                code: 201,
                body: obj,
                warnings,
            });
        }
        let mut last = None;
        for _ in 0..WRITE_ATTEMPTS {
            let mut attempt = obj.clone();
            let claims = self.alloc.claims(info, &self.storage, &mut attempt).await?;
            match self
                .storage
                .create(info, ns.as_deref(), &name, &attempt, claims)
                .await
            {
                Ok(stored) => {
                    self.after_write(info).await;
                    return Ok(Reply::Json {
                        code: 201,
                        body: stored.obj,
                        warnings,
                    });
                }
                // An allocation raced with another create: pick again.
                Err(e) if e.code == 409 && e.reason == "Conflict" => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ApiError::internal("create did not converge")))
    }

    pub(super) async fn update(
        &self,
        info: &ResourceInfo,
        call: &Call<'_>,
    ) -> Result<Reply, ApiError> {
        let body = parse_body(call.content_type, call.body)?;
        check_type_meta(info, &body)?;
        let name = call.req.name.clone().unwrap_or_default();
        if let Some(body_name) = meta::name(&body)
            && body_name != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let precondition = meta::resource_version(&body).map(parse_rv).transpose()?;
        let sub = call.req.subresource.clone();
        let (obj, warnings) = self
            .write(info, call, precondition, sub.as_deref(), |_| {
                Ok(body.clone())
            })
            .await?;
        Ok(Reply::Json {
            code: 200,
            body: obj,
            warnings,
        })
    }

    pub(super) async fn patch(
        &self,
        info: &ResourceInfo,
        call: &Call<'_>,
    ) -> Result<Reply, ApiError> {
        self.patch_in(info, call, None).await
    }

    /// A PATCH, applied to the stored object as `view` shows it when given (the patch is
    /// written against the version the client speaks), the result converted back.
    pub(super) async fn patch_in(
        &self,
        info: &ResourceInfo,
        call: &Call<'_>,
        view: Option<View>,
    ) -> Result<Reply, ApiError> {
        let ct = call
            .content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let patch: Value = serde_json::from_slice(call.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
        if ct == "application/apply-patch+yaml" {
            return Err(ApiError::unsupported_media_type(&ct));
        }
        let kind = trellis_api::patch::TypeRef::for_kind(&info.group, &info.kind);
        let precondition = patch
            .get("metadata")
            .and_then(|m| m.get("resourceVersion"))
            .and_then(Value::as_str)
            .map(parse_rv)
            .transpose()?;
        let sub = call.req.subresource.clone();
        let apply = |cur: &Stored| -> Result<Value, ApiError> {
            let base = match view {
                Some(v) => (v.to_client)(&cur.obj),
                None => cur.obj.clone(),
            };
            let patched = match ct.as_str() {
                "application/json-patch+json" => trellis_api::patch::json_patch(&base, &patch),
                "application/merge-patch+json" => trellis_api::patch::merge_patch(&base, &patch),
                "application/strategic-merge-patch+json" if info.custom => {
                    return Err(ApiError::unsupported_media_type(
                        "strategic merge patch is not supported for custom resources: use a merge patch",
                    ));
                }
                "application/strategic-merge-patch+json" => {
                    trellis_api::patch::strategic_merge(&base, &patch, &kind)
                }
                other => return Err(ApiError::unsupported_media_type(other)),
            };
            let patched = patched.map_err(|e| {
                ApiError::invalid(
                    &info.group,
                    &info.kind,
                    meta::name(&cur.obj).unwrap_or(""),
                    vec![Cause::invalid("patch", "", e.to_string())],
                )
            })?;
            match view {
                Some(v) => (v.to_storage)(&patched),
                None => Ok(patched),
            }
        };
        let (obj, warnings) = self
            .write(info, call, precondition, sub.as_deref(), apply)
            .await?;
        Ok(Reply::Json {
            code: 200,
            body: obj,
            warnings,
        })
    }

    /// The update pipeline shared by PUT, PATCH and the subresources: read, change, keep what
    /// clients may not change, default, check, validate, compare-and-swap; retried on a lost
    /// race unless the client named a resourceVersion.
    pub(super) async fn write<F>(
        &self,
        info: &ResourceInfo,
        call: &Call<'_>,
        precondition: Option<i64>,
        sub: Option<&str>,
        change: F,
    ) -> Result<(Value, Vec<String>), ApiError>
    where
        F: Fn(&Stored) -> Result<Value, ApiError>,
    {
        let ns = call.req.namespace.as_deref();
        let name = call.req.name.as_deref().unwrap_or_default();
        for _ in 0..WRITE_ATTEMPTS {
            let cur = self.storage.require(info, ns, name).await?;
            if precondition.is_some_and(|rv| rv != cur.revision) {
                return Err(ApiError::conflict(&info.group, &info.plural, name));
            }
            let changed = change(&cur)?;
            let mut new = carry_over(info, &cur.obj, changed, sub)?;
            // A Service's node ports follow its type (a status write leaves the spec alone).
            let (claims, releases) = if sub.is_none() {
                self.alloc
                    .update_claims(info, &self.storage, &cur.obj, &mut new)
                    .await?
            } else {
                (Vec::new(), Vec::new())
            };
            let warnings = self.admit(info, &mut new, Some(&cur.obj), call)?;
            bump_generation(info, &cur.obj, &mut new);
            if strip_rv(&new) == strip_rv(&cur.obj) {
                return Ok((cur.obj, warnings));
            }
            if call.dry_run() {
                return Ok((new, warnings));
            }
            // The last finalizer is gone: the deletion completes — unless a grace period runs
            // (a pod being stopped by its kubelet), which only the delete with grace 0 ends, as
            // upstream's shouldDeleteDuringUpdate. (A pod's status written during its grace
            // period used to delete it at once: its kubelet then killed it without grace.)
            let in_grace = cur
                .obj
                .get("metadata")
                .and_then(|m| m.get("deletionGracePeriodSeconds"))
                .and_then(Value::as_i64)
                .is_some_and(|g| g > 0);
            if meta::is_deleting(&new) && meta::finalizers(&new).is_empty() && !in_grace {
                return match self
                    .storage
                    .delete(
                        info,
                        ns,
                        name,
                        cur.revision,
                        self.alloc.releases(info, &cur.obj),
                    )
                    .await?
                {
                    Some(_) => {
                        self.after_write(info).await;
                        Ok((new, warnings))
                    }
                    None if precondition.is_some() => {
                        Err(ApiError::conflict(&info.group, &info.plural, name))
                    }
                    None => continue,
                };
            }
            match self
                .storage
                .update_with(info, ns, name, cur.revision, &new, claims, releases)
                .await?
            {
                Some(stored) => {
                    self.after_write(info).await;
                    return Ok((stored.obj, warnings));
                }
                None if precondition.is_some() => {
                    return Err(ApiError::conflict(&info.group, &info.plural, name));
                }
                None => continue,
            }
        }
        Err(ApiError::conflict(&info.group, &info.plural, name))
    }

    /// Defaults, type check and validation of an object about to be written.
    fn admit(
        &self,
        info: &ResourceInfo,
        obj: &mut Value,
        old: Option<&Value>,
        call: &Call<'_>,
    ) -> Result<Vec<String>, ApiError> {
        kinds::defaults(info, obj);
        let name = meta::name(obj).unwrap_or("").to_string();
        // As Kubernetes decodes into its types: unknown fields are dropped (with a warning), or
        // refused under fieldValidation=Strict.
        let strict = call.q("fieldValidation") == Some("Strict");
        let schema = self.registry.schema(info);
        let unknown = match &schema {
            // A custom resource: its CRD's schema prunes and defaults, as apiextensions does.
            Some(schema) => crate::schema::prune_and_default(schema, obj, !strict),
            None => kinds::typecheck(info, obj, !strict).map_err(|e| {
                ApiError::bad_request(format!(
                    "{} in version \"{}\" cannot be handled as a {}: {e}",
                    info.kind, info.version, info.kind
                ))
            })?,
        };
        let mut warnings = Vec::new();
        if !unknown.is_empty() {
            let listed = unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect::<Vec<_>>();
            match call.q("fieldValidation") {
                Some("Strict") => {
                    return Err(ApiError::bad_request(format!(
                        "strict decoding error: {}",
                        listed.join(", ")
                    )));
                }
                Some("Ignore") => {}
                _ => warnings.extend(listed),
            }
        }
        let mut causes = kinds::validate(info, obj, old);
        if let Some(schema) = &schema {
            causes.extend(crate::schema::validate(schema, obj));
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(&info.group, &info.kind, &name, causes));
        }
        if info.group == crate::rbac::GROUP && !info.custom {
            crate::rbac::escalation::check(&self.rbac.current(), call.user, &info.kind, obj, old)?;
        }
        Ok(warnings)
    }

    /// After a write that changes what is served (a CRD), the registry follows at once.
    async fn after_write(&self, info: &ResourceInfo) {
        if info.group == "apiextensions.k8s.io"
            && info.kind == "CustomResourceDefinition"
            && let Err(e) = crate::server::refresh_crds(self).await
        {
            tracing::warn!(error = %e, "refreshing custom resources");
        }
    }

    pub(super) async fn delete(
        &self,
        info: &ResourceInfo,
        call: &Call<'_>,
    ) -> Result<Reply, ApiError> {
        let opts = delete_options(call)?;
        let name = call.req.name.clone().unwrap_or_default();
        let obj = self
            .delete_one(
                info,
                call.req.namespace.as_deref(),
                &name,
                &opts,
                call.dry_run(),
            )
            .await?;
        Ok(Reply::ok(obj))
    }

    /// Deletes one object: at once, or by marking it (deletionTimestamp) when finalizers, a
    /// propagation policy or a pod's grace period say it must wait.
    pub async fn delete_one(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        for _ in 0..WRITE_ATTEMPTS {
            let cur = self.storage.require(info, ns, name).await?;
            if let Some(uid) = &opts.uid
                && meta::uid(&cur.obj) != Some(uid.as_str())
            {
                return Err(ApiError::conflict_state(
                    &info.group,
                    &info.plural,
                    name,
                    format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta::uid(&cur.obj).unwrap_or("")
                    ),
                ));
            }
            if let Some(rv) = &opts.resource_version
                && parse_rv(rv)? != cur.revision
            {
                return Err(ApiError::conflict(&info.group, &info.plural, name));
            }
            let mut obj = cur.obj.clone();
            let is_namespace = !info.custom && info.group.is_empty() && info.kind == "Namespace";
            let mut finalizers = meta::finalizers(&obj);
            match opts.propagation.as_deref() {
                Some("Foreground") if !finalizers.iter().any(|f| f == "foregroundDeletion") => {
                    finalizers.push("foregroundDeletion".into())
                }
                Some("Orphan") if !finalizers.iter().any(|f| f == "orphan") => {
                    finalizers.push("orphan".into())
                }
                _ => {}
            }
            let grace = if !info.custom && info.group.is_empty() && info.kind == "Pod" {
                let scheduled = meta::at(&obj, &["spec", "nodeName"])
                    .and_then(Value::as_str)
                    .is_some_and(|n| !n.is_empty());
                let finished = matches!(
                    meta::at(&obj, &["status", "phase"]).and_then(Value::as_str),
                    Some("Succeeded" | "Failed")
                );
                let default = meta::at(&obj, &["spec", "terminationGracePeriodSeconds"])
                    .and_then(Value::as_i64)
                    .unwrap_or(30);
                if scheduled && !finished {
                    opts.grace.unwrap_or(default).max(0)
                } else {
                    0
                }
            } else {
                0
            };
            if is_namespace {
                obj["status"]["phase"] = json!("Terminating");
            }
            let must_wait = is_namespace || !finalizers.is_empty() || grace > 0;
            if dry_run {
                return Ok(obj);
            }
            if !must_wait {
                return match self
                    .storage
                    .delete(
                        info,
                        ns,
                        name,
                        cur.revision,
                        self.alloc.releases(info, &cur.obj),
                    )
                    .await?
                {
                    Some(_) => {
                        self.after_delete(info, &cur.obj).await;
                        Ok(cur.obj)
                    }
                    None => continue,
                };
            }
            if meta::is_deleting(&obj)
                && grace == 0
                && meta::finalizers(&obj) == finalizers
                && !is_namespace
            {
                return Ok(obj);
            }
            {
                let m = meta::meta_mut(&mut obj);
                if m.get("deletionTimestamp").is_none_or(|t| t.is_null()) || grace == 0 {
                    m.insert("deletionTimestamp".into(), json!(meta::now_plus(grace)));
                }
                m.insert("deletionGracePeriodSeconds".into(), json!(grace));
                m.insert("finalizers".into(), json!(finalizers));
                if finalizers.is_empty() {
                    m.remove("finalizers");
                }
            }
            if let Some(stored) = self
                .storage
                .update(info, ns, name, cur.revision, &obj)
                .await?
            {
                if is_namespace {
                    self.namespace_deleted.notify_one();
                }
                return Ok(stored.obj);
            }
        }
        Err(ApiError::conflict(&info.group, &info.plural, name))
    }

    async fn after_delete(&self, info: &ResourceInfo, obj: &Value) {
        if info.group == "apiextensions.k8s.io" && info.kind == "CustomResourceDefinition" {
            // The custom objects go with their definition.
            let group = obj["spec"]["group"].as_str().unwrap_or_default();
            let plural = obj["spec"]["names"]["plural"].as_str().unwrap_or_default();
            if !group.is_empty() && !plural.is_empty() {
                let prefix = format!("/registry/{group}/{plural}/");
                if let Err(e) = self
                    .storage
                    .store()
                    .delete(trellis_store::KeyRange::prefix(prefix))
                    .await
                {
                    tracing::warn!(error = %e, "deleting the custom objects of {plural}.{group}");
                }
            }
            self.after_write(info).await;
        }
    }

    pub(super) async fn delete_collection(
        &self,
        info: &ResourceInfo,
        call: &Call<'_>,
    ) -> Result<Reply, ApiError> {
        let opts = delete_options(call)?;
        let filter = selectors(info, call)?;
        let ns = call.req.namespace.as_deref();
        let page = self
            .storage
            .list(info, ns, ListAt::Latest, 0, None, &filter)
            .await?;
        let mut deleted = Vec::new();
        for obj in page.items {
            let name = meta::name(&obj).unwrap_or_default().to_string();
            let item_ns = meta::namespace(&obj).map(String::from);
            match self
                .delete_one(
                    info,
                    item_ns.as_deref().or(ns),
                    &name,
                    &opts,
                    call.dry_run(),
                )
                .await
            {
                Ok(o) => deleted.push(o),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let rev = self.storage.store().current_revision().await?;
        Ok(Reply::ok(list_of(info, deleted, rev, None)))
    }

    /// Creating in a namespace needs the namespace, and one not being deleted.
    async fn require_namespace_open(&self, ns: &str) -> Result<(), ApiError> {
        let info = self
            .registry
            .find("", "v1", "namespaces")
            .ok_or_else(|| ApiError::internal("namespaces are not served"))?;
        let stored = self
            .storage
            .get(&info, None, ns)
            .await?
            .ok_or_else(|| ApiError::not_found("", "namespaces", ns))?;
        if meta::is_deleting(&stored.obj) {
            let mut e = ApiError::forbidden("", "create", ns);
            e.message = format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            );
            e.reason = "Forbidden";
            return Err(e);
        }
        Ok(())
    }
}

/// `apiVersion` and `kind`, when present, must be the resource's own.
fn check_type_meta(info: &ResourceInfo, obj: &Value) -> Result<(), ApiError> {
    if let Some(v) = obj.get("apiVersion").and_then(Value::as_str)
        && v != info.api_version()
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({v}) does not match the expected API version ({})",
            info.api_version()
        )));
    }
    if let Some(k) = obj.get("kind").and_then(Value::as_str)
        && k != info.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({})",
            info.kind
        )));
    }
    Ok(())
}

fn set_type_meta(info: &ResourceInfo, obj: &mut Value) {
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(info.api_version()));
        m.insert("kind".into(), json!(info.kind));
    }
}

/// The new object keeps what clients cannot change: identity, creation, deletion marks, and
/// the half of the object the endpoint does not write (status on the object, spec on /status).
fn carry_over(
    info: &ResourceInfo,
    cur: &Value,
    mut new: Value,
    sub: Option<&str>,
) -> Result<Value, ApiError> {
    if !new.is_object() {
        return Err(ApiError::bad_request("the object must be a JSON object"));
    }
    if let (Some(a), Some(b)) = (meta::uid(&new), meta::uid(cur))
        && a != b
    {
        return Err(ApiError::conflict_state(
            &info.group,
            &info.plural,
            meta::name(cur).unwrap_or(""),
            format!("Precondition failed: UID in precondition: {a}, UID in object meta: {b}"),
        ));
    }
    if sub == Some("status") {
        let status = new.get("status").cloned();
        new = cur.clone();
        match status {
            Some(s) => new["status"] = s,
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    } else if info.has(Subresource::Status) {
        match cur.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    set_type_meta(info, &mut new);
    let cur_meta = cur.get("metadata").cloned().unwrap_or(json!({}));
    let m = meta::meta_mut(&mut new);
    for k in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        match cur_meta.get(k) {
            Some(v) => {
                m.insert(k.into(), v.clone());
            }
            None => {
                m.remove(k);
            }
        }
    }
    m.remove("managedFields");
    m.remove("selfLink");
    Ok(new)
}

/// `metadata.generation` moves when the spec changes, never for metadata or status.
fn bump_generation(info: &ResourceInfo, old: &Value, new: &mut Value) {
    let has_status = info.has(Subresource::Status);
    if meta::spec_part(old, has_status) != meta::spec_part(new, has_status) {
        let g = old
            .get("metadata")
            .and_then(|m| m.get("generation"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        meta::meta_mut(new).insert("generation".into(), json!(g + 1));
    }
}

fn strip_rv(v: &Value) -> Value {
    let mut v = v.clone();
    meta::meta_mut(&mut v).remove("resourceVersion");
    v
}

pub(super) fn parse_rv(rv: &str) -> Result<i64, ApiError> {
    rv.parse::<i64>()
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| ApiError::bad_request(format!("invalid resource version: {rv:?}")))
}

fn delete_options(call: &Call<'_>) -> Result<DeleteOptions, ApiError> {
    let mut opts = DeleteOptions::default();
    if !call.body.iter().all(u8::is_ascii_whitespace) {
        // JSON, YAML or protobuf (what typed clients such as `kubectl drain` send).
        let body = super::parse_body(call.content_type, call.body).map_err(|e| ApiError {
            message: format!("error decoding DeleteOptions: {}", e.message),
            ..e
        })?;
        opts.grace = body.get("gracePeriodSeconds").and_then(Value::as_i64);
        opts.propagation = body
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .map(String::from);
        if body.get("orphanDependents") == Some(&json!(true)) && opts.propagation.is_none() {
            opts.propagation = Some("Orphan".into());
        }
        opts.uid = meta::at(&body, &["preconditions", "uid"])
            .and_then(Value::as_str)
            .map(String::from);
        opts.resource_version = meta::at(&body, &["preconditions", "resourceVersion"])
            .and_then(Value::as_str)
            .map(String::from);
    }
    if let Some(g) = call.q("gracePeriodSeconds") {
        opts.grace = Some(
            g.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}")))?,
        );
    }
    if let Some(p) = call.q("propagationPolicy") {
        opts.propagation = Some(p.to_string());
    }
    if let Some(p) = &opts.propagation
        && !matches!(p.as_str(), "Foreground" | "Background" | "Orphan")
    {
        return Err(ApiError::bad_request(format!(
            "propagationPolicy must be Foreground, Background or Orphan, not {p:?}"
        )));
    }
    Ok(opts)
}

/// The label and field selectors of a list, watch or deletecollection as one filter.
pub(super) fn selectors(
    info: &ResourceInfo,
    call: &Call<'_>,
) -> Result<impl Fn(&Value) -> bool + Sync + Send + 'static, ApiError> {
    let labels = match call.q("labelSelector") {
        Some(s) => Some(
            trellis_api::selector::LabelSelector::parse(s)
                .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?,
        ),
        None => None,
    };
    let fields = match call.q("fieldSelector") {
        Some(s) => {
            let sel = trellis_api::fields::FieldSelector::parse(s)
                .map_err(|e| ApiError::bad_request(format!("invalid field selector: {e}")))?;
            sel.check_supported(&info.group, &info.kind)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            Some(sel)
        }
        None => None,
    };
    let (group, kind) = (info.group.clone(), info.kind.clone());
    Ok(move |obj: &Value| {
        labels
            .as_ref()
            .is_none_or(|l| l.matches(&meta::labels(obj)))
            && fields
                .as_ref()
                .is_none_or(|f| f.matches_object(&group, &kind, obj))
    })
}
