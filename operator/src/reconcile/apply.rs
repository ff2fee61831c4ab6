//! Server-side apply of the children, pruning of the ones no longer wanted, and the removal of
//! what owner references cannot remove.

use std::collections::BTreeSet;

use k8s_openapi::api::networking::v1::IngressClass;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::{Client, Resource as _, ResourceExt as _};
use sekisho_api::Proxy;
use serde_json::json;

use crate::desired::{
    Child, Kind, MANAGER, NAMESPACE_LABEL, Names, Scope, World, children_selector,
};

fn resource(kind: Kind) -> ApiResource {
    let (group, version, kind_name, plural) = kind.gvkp();
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind_name), plural)
}

fn api(client: &Client, kind: Kind, namespace: Option<&str>) -> Api<DynamicObject> {
    let resource = resource(kind);
    match namespace {
        Some(namespace) => Api::namespaced_with(client.clone(), namespace, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

/// Who holds the IngressClass the Proxy asks for, when it is not this Proxy.
pub(super) async fn class_taken(
    client: &Client,
    proxy: &Proxy,
    names: &Names,
) -> Result<Option<String>, kube::Error> {
    let classes = Api::<IngressClass>::all(client.clone());
    let Some(class) = classes.get_opt(&proxy.spec.ingress_class.name).await? else {
        return Ok(None);
    };
    let labels = class.labels();
    let ours = labels
        .get("app.kubernetes.io/managed-by")
        .map(String::as_str)
        == Some(MANAGER);
    let instance = labels.get("app.kubernetes.io/instance");
    let namespace = labels.get(NAMESPACE_LABEL);
    if ours && instance == Some(&names.name) && namespace == Some(&names.namespace) {
        return Ok(None);
    }
    Ok(Some(match (ours, namespace, instance) {
        (true, Some(namespace), Some(instance)) => format!("the Proxy {namespace}/{instance}"),
        _ => format!(
            "another controller ({})",
            class.spec.and_then(|s| s.controller).unwrap_or_default()
        ),
    }))
}

/// Applies every child (but the class's, when the class is taken), owned children with an
/// owner reference to the Proxy.
pub(super) async fn all(
    client: &Client,
    proxy: &Proxy,
    children: &[Child],
    class_taken: bool,
) -> Result<(), kube::Error> {
    let owner = proxy.controller_owner_ref(&()).map(|mut owner| {
        owner.block_owner_deletion = Some(true);
        owner
    });
    let params = PatchParams::apply(MANAGER).force();
    for child in children {
        if class_taken
            && matches!(
                child.kind,
                Kind::IngressClass | Kind::IngressClassParameters
            )
        {
            continue;
        }
        let mut object = child.object.clone();
        if let (Scope::Owned, Some(owner)) = (child.kind.scope(), &owner) {
            object["metadata"]["ownerReferences"] = json!([owner]);
        }
        api(client, child.kind, child.namespace.as_deref())
            .patch(&child.name, &params, &Patch::Apply(&object))
            .await?;
    }
    Ok(())
}

/// Deletes the children this operator applied that are no longer wanted.
pub(super) async fn prune(
    client: &Client,
    names: &Names,
    children: &[Child],
    world: &World,
) -> Result<(), kube::Error> {
    let wanted: BTreeSet<(Kind, Option<&str>, &str)> = children
        .iter()
        .map(|c| (c.kind, c.namespace.as_deref(), c.name.as_str()))
        .collect();
    for kind in Kind::ALL {
        // cert-manager's and the Prometheus operator's kinds may not be served.
        let served = match kind {
            Kind::Certificate => world.cert_manager,
            Kind::ServiceMonitor => world.service_monitors,
            _ => true,
        };
        if !served {
            continue;
        }
        for object in applied_by_us(client, names, kind).await? {
            let namespace = object.namespace();
            let name = object.name_any();
            if !wanted.contains(&(kind, namespace.as_deref(), name.as_str())) {
                delete(client, kind, namespace.as_deref(), &name).await?;
                tracing::info!(
                    kind = kind.gvkp().2,
                    namespace,
                    name,
                    "removed a child no longer wanted"
                );
            }
        }
    }
    Ok(())
}

/// Removes the cluster-scoped children and those in other namespaces.
pub(super) async fn remove_unowned(client: &Client, names: &Names) -> Result<(), kube::Error> {
    for kind in Kind::ALL {
        if kind.scope() == Scope::Owned {
            continue;
        }
        for object in applied_by_us(client, names, kind).await? {
            delete(
                client,
                kind,
                object.namespace().as_deref(),
                &object.name_any(),
            )
            .await?;
        }
    }
    Ok(())
}

/// The objects of `kind` with the gate's labels that this operator applied (not, say, the TLS
/// Secret cert-manager writes with the same labels). A kind the API does not serve has none.
async fn applied_by_us(
    client: &Client,
    names: &Names,
    kind: Kind,
) -> Result<Vec<DynamicObject>, kube::Error> {
    let namespace = (kind.scope() == Scope::Owned).then_some(names.namespace.as_str());
    let list = match api(client, kind, namespace)
        .list(&ListParams::default().labels(&children_selector(names)))
        .await
    {
        Ok(list) => list,
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    Ok(list
        .items
        .into_iter()
        .filter(|object| {
            object.managed_fields().iter().any(|m| {
                m.manager.as_deref() == Some(MANAGER) && m.operation.as_deref() == Some("Apply")
            })
        })
        .collect())
}

async fn delete(
    client: &Client,
    kind: Kind,
    namespace: Option<&str>,
    name: &str,
) -> Result<(), kube::Error> {
    match api(client, kind, namespace)
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error),
    }
}
